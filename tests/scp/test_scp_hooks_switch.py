"""The switch that keeps pynetdicom stock (``SPINE_GATEWAY_PYNETDICOM_HOOKS=off``, the hooks-off run of ``make
test``), and the pynetdicom touches moved into the install step (``gateway.dicom.net.install_fast_paths``): each
in effect on the real library when the hooks are on and absent when off. These tests run in both runs, each
asserting the mode it runs in."""

from __future__ import annotations

import socket
import time

import pynetdicom._config
import pynetdicom.association
import pynetdicom.dimse
import pynetdicom.dimse_messages
import pynetdicom.dul
import pytest

from gateway.config import GatewayConfig
from gateway.dicom import status
from gateway.dicom.command import encode_command_set
from gateway.dicom.net import (
    DOCUMENTED_SETTINGS,
    HOOKS_SWITCH,
    _ReactorClock,
    apply_documented_settings,
    fast_paths_installed,
    hooks_switched_on,
    send_msg_store_responses_directly,
    store_request_to_primitive,
)
from gateway.errors import ConfigError
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import start_scp
from gateway.storage.models import open_database
from gateway.storage.spool import Spool
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_index
from support.peers import GatewayProcess, free_port, storescu, wait_until
from support.scu import associate

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)


@pytest.mark.parametrize(("value", "on"), [(None, True), ("on", True), ("off", False), (" OFF ", False)])
def test_the_switch_reads_on_or_off(value, on):
    assert hooks_switched_on({} if value is None else {HOOKS_SWITCH: value}) is on


@pytest.mark.parametrize("value", ["of", "0", "false", ""])
def test_any_other_value_of_the_switch_is_refused_naming_it(value):
    with pytest.raises(ConfigError, match=HOOKS_SWITCH):
        hooks_switched_on({HOOKS_SWITCH: value})


def test_the_hooks_are_in_this_process_exactly_when_the_switch_is_on(pynetdicom_hooks):
    """The process-wide hooks on the real library: all in place with the switch on, none with it off; the
    documented settings in either case."""
    on = hooks_switched_on()
    assert fast_paths_installed() is on and pynetdicom_hooks.installed is on
    hooked = [
        isinstance(pynetdicom.association.time, _ReactorClock),
        isinstance(pynetdicom.dul.time, _ReactorClock),
        pynetdicom.dimse_messages.encode is encode_command_set,
        pynetdicom.dimse_messages.C_STORE_RQ.message_to_primitive is store_request_to_primitive,
        pynetdicom.dimse.DIMSEServiceProvider.send_msg is send_msg_store_responses_directly,
    ]
    assert hooked == [on] * len(hooked)
    for name, value in DOCUMENTED_SETTINGS.items():
        assert getattr(pynetdicom._config, name) == value, name


def test_a_documented_setting_this_pynetdicom_lacks_or_types_otherwise_is_left_alone(monkeypatch):
    """The documented settings' fallback: one removed (or of another type) in some future pynetdicom is not
    created or overwritten; pynetdicom's own default holds, and the others are still set."""
    monkeypatch.delattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET")
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", 10)
    assert apply_documented_settings() == []
    assert not hasattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET")
    assert pynetdicom._config.LOG_HANDLER_LEVEL == 10
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", "standard")
    assert apply_documented_settings() == ["LOG_HANDLER_LEVEL"]
    assert pynetdicom._config.LOG_HANDLER_LEVEL == "none"


@pytest.fixture
def scp(tmp_path):
    """The gateway's own SCP in this process (``start_scp``), not yet stopped."""
    config = GatewayConfig.model_validate({
        "node": {"host": "127.0.0.1", "port": free_port()},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
    })
    database = open_database(f"sqlite:///{tmp_path}/gateway.db", max_connections=8)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    server = start_scp(config.node, ScpHandlers(AssociationPolicy(config), InstanceReceiver(spool, {}, "test")))
    yield server, config
    if server.socket.fileno() >= 0:
        server.shutdown()
    database.close()


def test_the_scp_server_is_registered_with_its_ae_exactly_when_the_hooks_are_on(scp):
    """``register_server`` (was ``ae._servers.append`` in ``start_scp``): with the hooks on, the server is in its
    AE's private list, as ``AE.start_server`` leaves it, and ``AE.shutdown()`` stops it; with them off it is
    not, and its own ``shutdown()`` stops it without pynetdicom's list. Either way it serves, then stops."""
    server, config = scp
    on = fast_paths_installed()
    assert server.registered is on
    assert (server in server.ae._servers) is on
    requestor = associate(config.node.port, calling="STMARYS_PACS")
    assert requestor.is_established and requestor.send_c_echo().Status == status.SUCCESS
    requestor.release()
    if on:
        server.ae.shutdown()  # AE.shutdown stops the servers on its list
    else:
        server.shutdown()
    assert server not in server.ae._servers
    assert server.socket.fileno() < 0, "the listening socket is closed"
    wait_until(lambda: not refuses_nothing(config.node.port), 10, "the port to refuse connections")


def refuses_nothing(port: int) -> bool:
    """Whether something still accepts a connection on ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_node_started_as_a_subprocess_follows_the_switch(tmp_path, database_url, small_study):
    """The variable reaches a node (and its receiving processes) through the environment: with it off, the node
    says so once and receives on stock pynetdicom; with it on, no such line."""
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    try:
        started = time.monotonic()
        result = storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 60
        spool = spool_index(node.spool_dir)
        for path in small_study:
            assert spool.get(sop_instance_uid(path)) == dataset_bytes(path)
        warnings = [e for e in node.log_events() if e["event"] == "pynetdicom_hooks_not_installed"]
        if hooks_switched_on():
            assert warnings == []
        else:
            assert warnings and {e["reason"] for e in warnings} == {f"{HOOKS_SWITCH}=off"}
    finally:
        node.stop()
