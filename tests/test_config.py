"""Configuration: the shipped file documents every option at its default; mistakes are one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from support.peers import REPO

SHIPPED = REPO / "config" / "gateway.yaml"


def _section_models(model: type[BaseModel], prefix: str = ""):
    """Yield (dotted path, field name, field) for every scalar option of every nested section."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _section_models(annotation, f"{prefix}{key}.")
        elif key not in ("sources", "reviewers"):
            yield prefix + key, field


def test_shipped_config_is_valid():
    config = load_config(SHIPPED, environ={})
    assert config.node.ae_title == "SPINEGW" and config.node.port == 11112
    assert config.storage.database == "sqlite:///var/gateway.db"


@pytest.mark.parametrize(("path", "field"), list(_section_models(GatewayConfig)),
                         ids=[p for p, _ in _section_models(GatewayConfig)])
def test_shipped_config_lists_every_option_at_its_default(path, field):
    data = yaml.safe_load(SHIPPED.read_text())
    value = data
    for part in path.split("."):
        assert isinstance(value, dict) and part in value, f"{path} is not documented in config/gateway.yaml"
        value = value[part]
    default = field.get_default(call_default_factory=True)
    assert _comparable(value) == _comparable(default), f"{path}: file says {value!r}, default is {default!r}"


def _comparable(value):
    """Paths, enums and numbers compare as text; empty tuples, sets and lists as lists."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted(map(str, value))
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return None if value is None else str(getattr(value, "value", value))


def test_shipped_config_comments_every_option():
    for number, line in enumerate(SHIPPED.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.startswith("- ") and ":" in stripped:
            key, _, rest = stripped.partition(":")
            if rest.strip():  # a key with a value, not a section header
                assert "#" in rest or key in ("ae_title", "host", "port"), f"line {number} has no comment: {line}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


MINIMAL = "sources:\n  - {name: st-marys, ae_title: STMARYS_PACS}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("node: {prot: 11112}\n" + MINIMAL, "node.prot: unknown key"),
    ("node: {port: 70000}\n" + MINIMAL, "node.port: Input should be less than or equal to 65535 (got 70000)"),
    ("node: {port: many}\n" + MINIMAL, "node.port: Input should be a valid integer"),
    ("node: {ae_title: 'WAY_TOO_LONG_AE_TITLE'}\n" + MINIMAL, "node.ae_title"),
    ("storage: {database: 'mysql://x'}\n" + MINIMAL, "storage.database"),
    ("node: {tls: {enabled: true}}\n" + MINIMAL, "node.tls: Value error, cert_file and key_file are required"),
    ("sources: []\n", "at least one source or reviewer"),
    ("sources:\n  - {name: a, ae_title: X}\n  - {name: b, ae_title: X}\n", "AE title 'X' is used by more than one"),
    ("node: [1, 2\n", "not valid YAML at line"),
    ("Node: {port: 11113}\n" + MINIMAL, "Node: unknown key"),  # keys keep their case, at the top level too
    ("- node\n", "the top level must be a mapping"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_missing_file_is_one_line_not_an_empty_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "nope.yaml", environ={"SPINE_GATEWAY__NODE__PORT": "11113"})


def test_environment_overrides_the_file(tmp_path):
    path = _write(tmp_path, MINIMAL)
    config = load_config(path, environ={"SPINE_GATEWAY__NODE__PORT": "11113", "SPINE_GATEWAY__LOGGING__LEVEL": "debug"})
    assert config.node.port == 11113 and config.logging.level == "debug"
    assert load_config(None, environ={"SPINE_GATEWAY_CONFIG": str(path)}).sources[0].name == "st-marys"


def test_flags_over_environment_over_file_over_defaults(tmp_path):
    path = _write(tmp_path, "node: {port: 11120, host: 127.0.0.1}\nlogging: {level: warning}\n" + MINIMAL)
    environ = {"SPINE_GATEWAY__NODE__PORT": "11121", "SPINE_GATEWAY__NODE__AE_TITLE": "FROMENV"}
    config = load_config(path, environ=environ, overrides={"node": {"port": 11122}})
    assert config.node.port == 11122  # the flag passed wins over the environment and the file
    assert config.node.ae_title == "FROMENV"  # the environment wins over the default
    assert config.node.host == "127.0.0.1" and config.logging.level == "warning"  # the file's, merged section-wise
    assert config.node.max_associations == 20  # the default


def test_given_environment_is_read_instead_of_the_process_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINE_GATEWAY__NODE__PORT", "11130")
    path = _write(tmp_path, MINIMAL)
    assert load_config(path, environ={}).node.port == 11112
    assert load_config(path).node.port == 11130
    # Built directly, the model reads only what it is given, never the process environment.
    assert GatewayConfig(sources=[{"name": "a", "ae_title": "A"}]).node.port == 11112


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("SPINE_GATEWAY__NOED__PORT", "11113", "environment SPINE_GATEWAY__NOED__PORT: noed: unknown key"),
    ("SPINE_GATEWAY__NODE__PROT", "11113", "environment SPINE_GATEWAY__NODE__PROT: node.prot: unknown key"),
    ("SPINE_GATEWAY__NODE__PORT", "many",
     "environment SPINE_GATEWAY__NODE__PORT: node.port: Input should be a valid integer"),
    ("SPINE_GATEWAY__ROUTING__BODY_PARTS", "SPINE", "environment: SPINE_GATEWAY__ROUTING__BODY_PARTS: not valid JSON"),
    ("SPINE_GATEWAY__NODE", "11113", "environment SPINE_GATEWAY__NODE: node: Input should be a valid dictionary"),
    ("SPINE_GATEWAY__NODE", "{port", "environment: SPINE_GATEWAY__NODE: not valid JSON"),
])
def test_bad_environment_variable_is_one_line_naming_it(tmp_path, variable, value, expected):
    """The variable is named, and the file (which does not hold the value) is not blamed."""
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={variable: value})
    message = str(info.value)
    assert expected in message and str(path) not in message and "\n" not in message


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = _write(tmp_path, MINIMAL + "node:\n  port: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: node.port: Input should be a valid integer")


def test_the_configuration_is_found_from_any_directory(tmp_path, monkeypatch):
    """--config, then $SPINE_GATEWAY_CONFIG, then /etc/spine-gateway/gateway.yaml, then the repository's."""
    from gateway import config as config_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG_PATH", tmp_path / "etc" / "gateway.yaml")
    assert config_module.find_config(None, {}) == config_module.REPOSITORY_CONFIG_PATH
    assert load_config(None, environ={}).node.ae_title == "SPINEGW", "the repository's, outside the repository"
    (tmp_path / "etc").mkdir()
    system = _write(tmp_path / "etc", MINIMAL)
    assert config_module.find_config(None, {}) == system
    assert config_module.find_config(None, {"SPINE_GATEWAY_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    assert config_module.find_config("/y.yaml", {"SPINE_GATEWAY_CONFIG": "/x.yaml"}) == Path("/y.yaml")


def test_environment_sets_lists_and_maps_as_json_and_nested_keys(tmp_path):
    path = _write(tmp_path, MINIMAL)
    config = load_config(path, environ={
        "SPINE_GATEWAY__ROUTING__BODY_PARTS": '["LSPINE", "SACRUM"]',
        "SPINE_GATEWAY__ROUTING__RETRY__MAX_ATTEMPTS": "3",
        "SPINE_GATEWAY__HL7__FACILITIES": '{"STMARYS": "st-marys"}',
        "spine_gateway__logging__level": "error",  # names are read without regard to case
    })
    assert config.routing.body_parts == ["LSPINE", "SACRUM"] and config.routing.retry.max_attempts == 3
    assert config.hl7.facilities == {"STMARYS": "st-marys"} and config.logging.level == "error"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


@pytest.mark.slow  # runs the CLI in fresh processes: 5 s
def test_cli_check_config_exit_codes_and_no_traceback(tmp_path):
    good = _cli("--config", str(SHIPPED), "check-config", cwd=tmp_path)
    assert good.returncode == 0 and "configuration OK" in good.stdout
    bad = _cli("--config", str(_write(tmp_path, "node: {prot: 1}\n" + MINIMAL)), "check-config", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "node.prot: unknown key" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = _cli("--config", str(tmp_path / "nope.yaml"), "serve", cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read the configuration file" in missing.stderr


@pytest.mark.slow  # runs the CLI in fresh processes: 10 s
def test_cli_serve_on_a_taken_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _write(tmp_path, f"node: {{host: 127.0.0.1, port: {port}}}\nstorage: {{spool_dir: {tmp_path}/s, "
                                f"database: 'sqlite:///{tmp_path}/g.db'}}\nlogging: {{file: null}}\n" + MINIMAL)
        result = _cli("--config", str(path), "serve", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
