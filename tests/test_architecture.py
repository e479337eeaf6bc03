"""The layers of the gateway (docs/architecture.md), read from the code's own imports.

Every import of a ``gateway`` module counts, at the top of a file or inside a function, except those under
``if TYPE_CHECKING:`` (annotations only; nothing is loaded). A module may import its own layer and the layers
below it; an import up is allowed only where INTENDED_UPWARD writes it down with its reason. No two modules may
import each other, directly or round a loop. Run alone: ``python -m pytest tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# From the ground up. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("gateway", "gateway.errors", "gateway.config", "gateway.budget", "gateway.backoff",
                    "gateway.demo")),
    ("dicom", ("gateway.dicom",)),
    ("storage", ("gateway.storage",)),
    ("ops", ("gateway.ops",)),
    ("privacy", ("gateway.privacy",)),
    ("deid", ("gateway.deid",)),
    # The MLLP client is a library (the ORU stage sends through it); the MLLP server is a way in.
    ("libraries", ("gateway.referral", "gateway.reports", "gateway.routing", "gateway.mllp.client",
                   "gateway.accounts")),
    ("stages", ("gateway.stages",)),
    # The servers, the ways in: the DICOM SCP, the portal, the one HTTP application, the MLLP server, DICOMweb, and the
    # status read-out that the portal and the CLI show (it reads every layer; it stays in ops/ for now).
    ("servers", ("gateway.scp", "gateway.web", "gateway.http", "gateway.mllp", "gateway.dicomweb",
                 "gateway.ops.status")),
    ("node", ("gateway.node",)),
    # The process's entry: ``serve`` starts the node, every other command works on the database alone.
    ("cli", ("gateway.cli", "gateway.__main__")),
]

# Imports up that are meant, each with its reason.
INTENDED_UPWARD: dict[tuple[str, str], str] = {
    ("gateway.config", "gateway.deid.options"):
        "the configuration holds the de-identification profile's switches; deid.options needs only deid.table "
        "and deid.errors, never the engine (test_config_loads_no_engine)",
    ("gateway.privacy.words", "gateway.referral.codes"):
        "a word the notes SR and PDF print themselves is too common to identify anyone; referral.codes is data "
        "with no imports of its own, read lazily",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(GATEWAY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in GATEWAY.rglob("*.py")}


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "gateway" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _resolve(name: str) -> str | None:
    """The gateway module that an imported name lives in (``gateway.storage.models.Study`` -> its module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        if _type_checking_only(node, parents):
            continue
        for name in names:
            target = _resolve(name) if name.startswith("gateway") else None
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_up_a_layer_unless_written_down():
    upward = sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in GRAPH.items() for target in targets
        if layer_of(target) > layer_of(module) and (module, target) not in INTENDED_UPWARD)
    assert not upward, "imports up a layer:\n" + "\n".join(upward)


def test_the_intended_imports_up_still_exist():
    """An entry of INTENDED_UPWARD whose import is gone must go too, or the list hides a new one later."""
    stale = [pair for pair in INTENDED_UPWARD if pair[1] not in GRAPH.get(pair[0], ())]
    assert not stale, stale


# The CLI is an entry point beside the servers: it starts the node (``serve``) and prints the status read-out that
# the portal shows too, and reaches into no other way in (what a command and a server share is a library).
CLI_REACHES = {"gateway.node", "gateway.ops.status"}


def test_the_cli_reaches_into_no_server():
    reached = sorted(f"{module} -> {target}" for module, targets in GRAPH.items()
                     if LAYERS[layer_of(module)][0] == "cli" for target in targets
                     if LAYERS[layer_of(target)][0] == "servers" and target not in CLI_REACHES)
    assert not reached, "the CLI reaches into a server's package:\n" + "\n".join(reached)


def test_no_import_circle():
    circles = _circles(GRAPH)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in circles)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


HEAVY = ("gateway.deid.engine", "gateway.deid.ocr", "gateway.deid.guard", "pydicom", "pynetdicom",
         "gateway.storage.models", "peewee")

_IMPORT_CONFIG_THEN_ENGINE = f"""
import sys, time
heavy = {HEAVY!r}
started = time.perf_counter()
import gateway.config
print(time.perf_counter() - started, *[name for name in heavy if name in sys.modules])
started = time.perf_counter()
import gateway.deid.engine
print(time.perf_counter() - started, *[name for name in heavy if name in sys.modules])
"""


def test_config_loads_no_engine():
    """``import gateway.config`` (every command's first step) loads no de-identification engine, no pydicom and
    no database. Timed in a fresh process (printed with ``-s``): about 0.3-0.6 s, where it was 1.3 s with the
    engine; importing the engine afterwards costs about as much again."""
    result = subprocess.run([sys.executable, "-c", _IMPORT_CONFIG_THEN_ENGINE], cwd=GATEWAY.parent,
                            capture_output=True, text=True, check=True)
    (config_s, *after_config), (engine_s, *after_engine) = (line.split() for line in result.stdout.splitlines())
    print(f"import gateway.config {float(config_s):.2f} s; then gateway.deid.engine {float(engine_s):.2f} s")
    assert not after_config, f"import gateway.config loaded {after_config}"
    assert "pydicom" in after_engine  # the probe sees a heavy import when there is one


# The process's globals that the servers must not reach (issue 24): the node hands them in, in its context
# (gateway.stages.context.NodeContext). Module -> the names of it that are globals (functions over one included).
PROCESS_GLOBALS: dict[str, frozenset[str]] = {
    "gateway.storage.models": frozenset({"db"}),
    # METRICS, the node's registry, is gone (each node builds its own); named so that it cannot come back unseen
    "gateway.ops.metrics": frozenset({"METRICS"}) | frozenset(
        node.name for node in ast.parse((GATEWAY / "ops" / "metrics.py").read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")),
    "gateway.storage.wakeup": frozenset({"install", "current", "notify", "wake_at", "again_after_lease"}),
    "gateway.storage.cases": frozenset({"process_owner"}),
}
SERVERS = ("gateway.scp", "gateway.http", "gateway.web", "gateway.dicomweb")
# A process's entry binds the models' proxy and installs its context, as gateway/node.py does for the node.
PROCESS_ENTRIES = frozenset({"gateway.scp.receiving_process"})


def globals_reached(source: str, module: str = "gateway.x") -> set[str]:
    """``module.name`` of every process global that ``source`` imports by name or reads through its module."""
    package = module.rpartition(".")[0]
    aliases: dict[str, str] = {}  # local name -> gateway module
    found = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in PROCESS_GLOBALS:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if alias.name in PROCESS_GLOBALS.get(base, ()):
                    found.add(f"{base}.{alias.name}")
                if f"{base}.{alias.name}" in PROCESS_GLOBALS:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = ast.unparse(node.value)
            target = aliases.get(dotted) or (dotted if dotted in PROCESS_GLOBALS else None)
            if target and node.attr in PROCESS_GLOBALS[target]:
                found.add(f"{target}.{node.attr}")
    return found


def test_the_servers_reach_no_process_global():
    """The SCP, the HTTP application and the portal get the database, the metrics, the wake-ups and the lease
    owner from the node's context; only a process's entry binds and installs them."""
    reached = sorted(
        f"{module}: {name}" for module, path in MODULES.items()
        if module.startswith(SERVERS) and module not in PROCESS_ENTRIES
        for name in globals_reached(path.read_text(encoding="utf-8"), module))
    assert not reached, "process globals reached by a server:\n" + "\n".join(reached)


def test_the_global_finder_finds_each_way_of_reaching_one():
    source = """
from gateway.storage.models import Study, db
from gateway.ops import metrics
from gateway.storage import wakeup as hub
import gateway.storage.cases as cases
from ..ops.metrics import METRICS
metrics.METRICS.record_instance("stored", 1, 0.1)
hub.notify("report")
cases.claim(None, "x", owner=cases.process_owner())
cases.move(None, "x")
"""
    assert globals_reached(source, "gateway.scp.handlers") == {
        "gateway.storage.models.db", "gateway.ops.metrics.METRICS", "gateway.storage.wakeup.notify",
        "gateway.storage.cases.process_owner"}


def whole_config_takers(source: str) -> set[str]:
    """The classes of ``source`` with a ``run_once`` (a stage) whose constructor takes the whole configuration
    (a parameter annotated ``GatewayConfig``)."""
    found = set()
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        methods = {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
        init = methods.get("__init__")
        if "run_once" not in methods or init is None:
            continue
        arguments = [*init.args.args, *init.args.kwonlyargs]
        if any(argument.annotation is not None and "GatewayConfig" in ast.unparse(argument.annotation)
               for argument in arguments):
            found.add(node.name)
    return found


def test_every_stage_takes_the_sections_it_uses():
    """A stage's constructor takes the configuration's sections it reads, never the whole object; a stage that
    reads several picks them in a classmethod ``of(config)`` (``PriorsStage.of``)."""
    takers = sorted(f"{module}: {name}" for module, path in MODULES.items() if module.startswith("gateway.stages")
                    for name in whole_config_takers(path.read_text(encoding="utf-8")))
    assert not takers, "stages taking the whole configuration:\n" + "\n".join(takers)


def test_the_whole_config_finder_finds_a_stage_taking_it():
    source = """
class Taker:
    def __init__(self, config: GatewayConfig, *, context=None): ...
    def run_once(self, now): ...
class Picker:
    def __init__(self, routing: RoutingConfig): ...
    @classmethod
    def of(cls, config: GatewayConfig): ...
    def run_once(self, now): ...
class NotAStage:
    def __init__(self, config: GatewayConfig): ...
"""
    assert whole_config_takers(source) == {"Taker"}
