"""Fixtures shared by the whole suite: real peers (PostgreSQL, the gateway), synthetic studies, strict DICOM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydicom import config as pydicom_config

from gateway.demo import write_demo_study
from gateway.dicom.net import HOOKS_SWITCH, hooks_switched_on, install_fast_paths
from gateway.storage.models import db, open_database
from support.peers import GatewayProcess, PostgresCluster


@pytest.fixture(scope="session", autouse=True)
def strict_dicom():
    """Writing invalid values raises in tests (highdicom does the same for its suite)."""
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.writing_validation_mode = previous


@pytest.fixture(scope="session", autouse=True)
def pynetdicom_hooks():
    """The gateway's pynetdicom hooks, as a node installs them when it starts; in-process SCPs and SCUs of the
    tests run with them. Installing them must succeed on the pinned pynetdicom; with
    ``SPINE_GATEWAY_PYNETDICOM_HOOKS=off`` (the hooks-off run of ``make test``) they must not be installed, here
    or in the nodes the tests start (which inherit the variable), so that run cannot silently run hooked."""
    installed = install_fast_paths()
    if hooks_switched_on():
        assert installed.installed, f"pynetdicom hooks not installed: {installed}"
    else:
        assert not installed.installed and installed.switched_off, f"pynetdicom hooks installed: {installed}"
    return installed


@pytest.fixture
def hooks_on(pynetdicom_hooks):
    """For a test of the hooks themselves: skipped in the hooks-off run."""
    if not pynetdicom_hooks.installed:
        pytest.skip(f"pynetdicom hooks switched off ({HOOKS_SWITCH}=off)")
    return pynetdicom_hooks


# What stock pynetdicom logs when its reactor thread takes a DIMSE response off the queue before the ``send_*``
# waiting for it (pynetdicom issues #435 and #875): the response is dropped, the sender waits ``dimse_timeout`` and
# the attempt is cut short. The hooks fix it (``gateway.dicom.net.requeue_stolen_responses``); with them off the
# race hits about once per hooks-off run, in a test that counts attempts exactly.
STOCK_REACTOR_RACE = "Received unexpected C-"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """In the hooks-off run, a test that failed after stock pynetdicom's reactor took a response (its log says
    so) is reported skipped with that reason, not failed: its exact counts cannot hold on stock pynetdicom, and
    the hooks-on run checks it. Any other failure, or the same one with the hooks on, stays a failure."""
    report = yield
    if (report.when == "call" and report.failed and not hooks_switched_on()
            and STOCK_REACTOR_RACE in report.caplog):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           "Skipped: stock pynetdicom's reactor took a DIMSE response meant for the sender "
                           f"(pynetdicom #435/#875; {HOOKS_SWITCH}=off); the hooks-on run checks this test")
    return report


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Every test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture
def database(tmp_path):
    """A fresh SQLite database of the test's own, migrated and bound to the models, with a connection open for
    the test (and room for a few threads): the fast tests' database. A test module that needs another one (no
    connection held, rows made first) defines its own ``database``."""
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    with db.connection_context():
        yield database
    database.close_all()


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> list[Path]:
    return write_demo_study(tmp_path_factory.mktemp("small-study"), 12, seed=1, rows=128, cols=128)


@pytest.fixture(scope="session")
def big_study(tmp_path_factory) -> list[Path]:
    """The benchmark-sized study: 300 instances of 512x512 16-bit (about 157 MB)."""
    return write_demo_study(tmp_path_factory.mktemp("big-study"), 300, seed=2)


@pytest.fixture
def gateway(tmp_path, database_url):
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    yield node
    node.stop()


# The fast tier (`make test-fast`, `pytest -m "not slow"`): every test that starts a real peer is marked slow here,
# found from its code rather than listed by hand, so that a new end-to-end test lands in the slow tier by itself.
# Tests slow for another reason (OCR of large images, many hypothesis examples, CLI subprocesses) carry
# ``pytest.mark.slow`` in their own module.

TESTS = Path(__file__).parent

#: Names whose use starts a real peer: a gateway node with its processes (``GatewayProcess``, the in-process
#: ``GatewayNode``), DCMTK storescp/storescu, Orthanc, a PostgreSQL cluster, chromium (``Browser``).
PEER_STARTERS = frozenset({
    "GatewayProcess", "GatewayNode", "DcmtkStoreSCP", "storescu", "Orthanc", "PostgresCluster", "pg_cluster",
    "Browser",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_peers(item):
            item.add_marker(pytest.mark.slow)


def _starts_peers(item: pytest.Item) -> bool:
    """True when the test runs on PostgreSQL, or when its code, a fixture it uses, or a test helper either of them
    calls names a peer starter."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("database_url") == "postgresql":
        return True
    if not PEER_STARTERS.isdisjoint(item.fixturenames):
        return True
    functions = [item.function] if isinstance(item, pytest.Function) else []
    for name in item.fixturenames:
        functions += [definition.func for definition in item._fixtureinfo.name2fixturedefs.get(name, ())]
    seen: set[int] = set()
    return any(_reaches_peer_starter(function, seen) for function in functions)


def _reaches_peer_starter(function: object, seen: set[int]) -> bool:
    """Follow the global names a test function uses into the functions and classes of tests/ it calls."""
    function = getattr(function, "__wrapped__", function)
    code, namespace = getattr(function, "__code__", None), getattr(function, "__globals__", {})
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    for names in _names_of(code):
        if not PEER_STARTERS.isdisjoint(names):
            return True
        for name in names:
            target = namespace.get(name)
            if _is_test_code(target) and any(_reaches_peer_starter(f, seen) for f in _functions_of(target)):
                return True
    return False


def _names_of(code):
    """The global and attribute names of a code object and of the functions and lambdas nested in it."""
    yield code.co_names
    for constant in code.co_consts:
        if hasattr(constant, "co_names"):
            yield from _names_of(constant)


def _is_test_code(target: object) -> bool:
    """A function or class of the suite itself (a test module or a helper under tests/), not of a library."""
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    return callable(target) and path is not None and Path(path).is_relative_to(TESTS)


def _functions_of(target: object) -> list[object]:
    if isinstance(target, type):
        return [member for member in vars(target).values() if callable(member)]
    return [target]
