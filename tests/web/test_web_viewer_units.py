"""The viewer's install step (scripts/install-viewer.py: integrity pins, the rewritten imports) and the case page's
two forms (viewer installed or not), without a node or a browser; the browser test is test_web_viewer.py."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.web.app import templates
from gateway.web.forms import LEVELS
from gateway.web.page import SECURITY_HEADERS

ROOT = Path(__file__).resolve().parents[2]


def _installer():
    spec = importlib.util.spec_from_file_location("install_viewer", ROOT / "scripts" / "install-viewer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_a_package_is_installed_only_with_its_pinned_integrity():
    installer = _installer()
    data = b"a package's tarball"
    assert installer.verified("dwv 0.36.4", data, _integrity(data)) == data
    with pytest.raises(installer.InstallError, match="integrity mismatch"):
        installer.verified("dwv 0.36.4", data + b"!", _integrity(data))
    with pytest.raises(installer.InstallError, match="sha512"):
        installer.verified("dwv 0.36.4", data, "sha1-" + base64.b64encode(hashlib.sha1(data).digest()).decode())


def test_every_package_is_pinned_by_version_and_sha512():
    for name, version, integrity, files in _installer().PACKAGES:
        assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version), name
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", integrity), name
        assert files, name


def test_dwvs_bare_imports_become_local_modules(tmp_path):
    installer = _installer()
    (tmp_path / "dwv").mkdir()
    (tmp_path / "dwv" / "dwv.min.js").write_text('import{default as e}from"konva";import{default as t}from'
                                                 '"magic-wand-tool";import{default as n}from"jszip";var i=1;')
    installer.rewrite_imports(tmp_path)
    module = (tmp_path / "dwv" / "dwv.min.js").read_text()
    assert 'from"./konva.mjs"' in module and 'from"./jszip.mjs"' in module and 'from"konva"' not in module
    assert "export default globalThis.Konva;" in (tmp_path / "dwv" / "konva.mjs").read_text()
    (tmp_path / "dwv" / "dwv.min.js").write_text("var nothing=1;")
    with pytest.raises(installer.InstallError, match="expected one import"):
        installer.rewrite_imports(tmp_path)


def _case_page(viewer: bool) -> str:
    study = SimpleNamespace(key="9d07a611c438abcd", urgency="routine", pseudo_study_uid="2.25.1234")
    series = [SimpleNamespace(number="1", modality="MR", description="SAG T2", instances=4, first=1, last=4)]
    return templates().get_template("reviewer_case.html").render(
        user=SimpleNamespace(role="reviewer", name="dr-a", source=None, reviewer="dr-a"), csrf="token",
        path="/reviewer/cases/x", title="Case", study=study, notes=[], series=series, levels=LEVELS, values={},
        errors={}, clock="4 d left", overdue=False, reported=False, signer=None, viewer=viewer, pool_link=False,
        claim=None, claim_problem="", claim_timeout="4 h 00 min")


def test_the_case_page_says_when_the_viewer_is_not_installed():
    page = _case_page(viewer=False)
    assert "The image viewer is not installed on this node" in page and "make viewer" in page
    assert "<script" not in page
    assert "<td>1</td><td>MR</td><td>SAG T2</td><td>4</td>" in page, "the series are still listed, described"


def test_the_viewer_loads_only_the_nodes_own_scripts_under_the_portals_policy():
    page = _case_page(viewer=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all(body == "" for _, body in scripts), "no inline script"
    sources = [re.search(r'src="([^"]+)"', attributes).group(1) for attributes, _ in scripts]
    assert all(src.startswith("/static/") for src in sources), sources
    assert sources[-1] == "/static/viewer.js"
    assert 'data-study="2.25.1234"' in page and 'data-dicomweb="/dicomweb"' in page
    assert " style=" not in page, "the policy takes no inline style"
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    assert "unsafe" not in policy and "default-src 'self'" in policy
    for level in (*LEVELS, "other"):
        assert f'id="images.{level}"' in page, "the field a picked key image goes into"
