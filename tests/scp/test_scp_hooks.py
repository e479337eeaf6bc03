"""The gateway's pynetdicom hooks (``gateway.dicomnet``): in effect on a real association when installed; when
pynetdicom is not what they were made for, one warning and stock pynetdicom, and the node still stores."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time

import pynetdicom
import pynetdicom._config
import pynetdicom.association
import pynetdicom.dimse
import pynetdicom.dimse_messages
import pynetdicom.dul
import pytest
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

import gateway.dicomnet
from gateway import status
from gateway.config import GatewayConfig
from gateway.dicom.command import encode_command_set
from gateway.dicomnet import (
    ASSOCIATION_POLL_S,
    DUL_POLL_DELAY_S,
    ContextsCopiedCheaply,
    DirectStores,
    _ReactorClock,
    _StoresServedInline,
    missing_hook_points,
    send_msg_store_responses_directly,
    store_request_to_primitive,
)
from gateway.models import open_database
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import start_scp
from gateway.scp.spool import Spool
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_index
from support.peers import GatewayProcess, free_port, storescu, wait_until
from support.scu import associate, send


@pytest.fixture
def scp(tmp_path, database_url, pynetdicom_hooks):
    """The gateway's own SCP in this process (``start_scp``, ``ScpHandlers``), recording where C-STOREs run."""
    config = GatewayConfig.model_validate({
        "node": {"host": "127.0.0.1", "port": free_port(), "network_timeout_s": 42.0},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}],
    })
    database = open_database(database_url, max_connections=8)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    handlers = ScpHandlers(AssociationPolicy(config), InstanceReceiver(spool, {}, "test"))
    handlers.store_threads = []
    serve = handlers.on_store

    def on_store(event):
        handlers.store_threads.append(threading.current_thread())
        return serve(event)
    handlers.on_store = on_store
    server = start_scp(config.node, handlers)
    yield server, config, handlers
    server.shutdown()
    database.close()


def test_every_hook_is_in_effect_on_a_real_association(scp, small_study, monkeypatch):
    server, config, handlers = scp
    used = counting(monkeypatch, "store_request_values", "store_response_command", "_ReceivedPData")
    assert missing_hook_points() == []
    assert isinstance(pynetdicom.association.time, _ReactorClock)
    assert isinstance(pynetdicom.dul.time, _ReactorClock)
    assert pynetdicom.dimse_messages.encode is encode_command_set
    assert pynetdicom._config.LOG_HANDLER_LEVEL == "none"
    assert pynetdicom._config.STORE_SEND_CHUNKED_DATASET is True
    assert pynetdicom.dimse_messages.C_STORE_RQ.message_to_primitive is store_request_to_primitive
    assert pynetdicom.dimse.DIMSEServiceProvider.send_msg is send_msg_store_responses_directly

    requestor = associate(config.node.port, calling="STMARYS_PACS")
    assert requestor.is_established
    try:
        acceptors = [a for a in server.active_associations if a.is_established]
        assert len(acceptors) == 1
        acceptor = acceptors[0]
        for assoc in (acceptor, requestor):
            raw = assoc.dul.socket.socket
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert "recv" in vars(assoc.dul.socket), "PDUs are read whole (read_pdus_whole)"
            assert assoc.dul._run_loop_delay == DUL_POLL_DELAY_S
            assert assoc.dul._gateway_wake.fileno() >= 0, "the DUL wakes when something is queued"
            assert "put" in vars(assoc.dul.to_provider_queue)
        assert acceptor.dul.socket.socket.gettimeout() == 42.0, "accepted sockets get the network timeout"
        assert isinstance(acceptor.dimse.msg_queue, _StoresServedInline)
        assert acceptor._gateway_poll_s == ASSOCIATION_POLL_S and "put" in vars(acceptor.dul.to_user_queue), \
            "the association thread sleeps longer and wakes for a release or abort"
        assert "clear" in vars(acceptor._reactor_checkpoint), "an acceptor's reactor pauses promptly too"
        assert "_serve_request" in vars(requestor), "responses taken by the reactor are given back"
        assert "clear" in vars(requestor._reactor_checkpoint), "the reactor pauses promptly"
        assert "send_pdu" in vars(requestor.dul) and "send" in vars(requestor.dul.socket)
        assert DirectStores.available(requestor), "a delivery's C-STOREs go straight to the socket"
        assert not DirectStores.available(acceptor)
        assert "_read_pdu_data" in vars(acceptor.dul) and "_read_pdu_data" not in vars(requestor.dul), \
            "an acceptor reads P-DATA in place"
        assert type(requestor.dul.socket).recv is AssociationSocket.recv  # the class itself is left alone
        assert isinstance(server.contexts, ContextsCopiedCheaply), "contexts copied cheaply for each association"
        own, shared = acceptor.acceptor.supported_contexts, server.contexts
        assert [(c.abstract_syntax, c.transfer_syntax) for c in own] == \
            [(c.abstract_syntax, c.transfer_syntax) for c in shared]
        assert all(a is not b and a.transfer_syntax is not b.transfer_syntax for a, b in zip(own, shared))

        rsp = requestor.send_c_store(small_study[0])
        assert rsp.Status == status.SUCCESS
        assert requestor.send_c_echo().Status == status.SUCCESS
    finally:
        requestor.release()
    assert handlers.store_threads and all(isinstance(t, DULServiceProvider) for t in handlers.store_threads), \
        "C-STOREs are served in the DUL thread (_StoresServedInline)"
    assert used["store_request_values"] >= 1, "the request's command set was read directly"
    assert used["store_response_command"] >= 1, "the response was written directly"
    assert used["_ReceivedPData"] >= 2, "the request's P-DATA (command and data set) were read in place"


def counting(monkeypatch, *names: str) -> dict[str, int]:
    """Count the calls of ``gateway.dicomnet``'s ``names`` (still calling them), to see which paths ran."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(gateway.dicomnet, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(gateway.dicomnet, name, counted)
    return calls


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("ending", ["release", "abort"])
def test_the_association_thread_wakes_for_a_release_or_abort_however_long_it_sleeps(scp, small_study, ending):
    """With the acceptor's association thread set to look for work only once an hour, a C-STORE is still
    served and the peer's A-RELEASE or A-ABORT is still handled at once: it is woken, not polled."""
    server, config, _handlers = scp
    requestor = associate(config.node.port, calling="STMARYS_PACS")
    assert requestor.is_established
    acceptor = wait_until(lambda: next((a for a in server.active_associations if a.is_established), None), 10,
                          "the acceptor's association")
    acceptor._gateway_poll_s = 3600.0
    try:
        assert requestor.send_c_store(small_study[0]).Status == status.SUCCESS
        assert requestor.send_c_echo().Status == status.SUCCESS  # served by the association thread
    finally:
        requestor.release() if ending == "release" else requestor.abort()
    assert requestor.is_released if ending == "release" else requestor.is_aborted
    wait_until(lambda: not acceptor.is_alive(), 20, f"the acceptor to end after the peer's {ending}")
    assert acceptor.is_released if ending == "release" else acceptor.is_aborted


ALTERATIONS = {
    "another_version": "pynetdicom.__version__ = '3.1.0'\n",
    "serve_request_changed": (
        "import pynetdicom.association as a\n"
        "_original = a.Association._serve_request\n"
        "def _serve_request(self, *args):\n"
        "    return _original(self, *args)\n"
        "a.Association._serve_request = _serve_request\n"),
    "config_option_removed": "import pynetdicom._config as c\ndel c.STORE_SEND_CHUNKED_DATASET\n",
    "status_check_changed": (
        "import pynetdicom.association as a\n"
        "a.Association._check_received_status = lambda self, rsp, strict=False: None\n"),
    "pdu_read_changed": (
        "import pynetdicom.dul as d\n"
        "_original = d.DULServiceProvider._read_pdu_data\n"
        "def _read_pdu_data(self):\n"
        "    return _original(self)\n"
        "d.DULServiceProvider._read_pdu_data = _read_pdu_data\n"),
    "response_sending_changed": (
        "import pynetdicom.dimse as d\n"
        "_original = d.DIMSEServiceProvider.send_msg\n"
        "d.DIMSEServiceProvider.send_msg = lambda self, primitive, context_id: _original(self, primitive, context_id)\n"),
}


@pytest.mark.parametrize("alteration", sorted(ALTERATIONS))
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_different_pynetdicom_means_one_warning_and_stock_pynetdicom(tmp_path, database_url, small_study,
                                                                       monkeypatch, alteration):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import pynetdicom\n" + ALTERATIONS[alteration])
    monkeypatch.setenv("PYTHONPATH", f"{site}:{os.environ.get('PYTHONPATH', '')}")
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    try:
        result = storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS")
        assert result.returncode == 0, result.stderr
        spool = spool_index(node.spool_dir)
        for path in small_study:
            assert spool.get(sop_instance_uid(path)) == dataset_bytes(path)
        warnings = [e for e in node.log_events() if e["event"] == "pynetdicom_hooks_not_installed"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"
        if alteration == "another_version":
            assert warnings[0]["version"] == "3.1.0"
        else:
            assert {"serve_request_changed": "Association._serve_request",
                    "config_option_removed": "_config.STORE_SEND_CHUNKED_DATASET",
                    "status_check_changed": "Association._check_received_status",
                    "pdu_read_changed": "DULServiceProvider._read_pdu_data",
                    "response_sending_changed": "DIMSEServiceProvider.send_msg"}[alteration] in warnings[0]["reason"]
    finally:
        node.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_commit_held_up_by_the_database_answers_a700_within_the_bound(tmp_path, database_url, small_study):
    """SQLite's write lock held by another connection: the C-STORE answers 0xA700 after
    ``store_commit_timeout_s`` (not after the 30 s busy timeout, stalling the association); once the lock is
    released the same instance is stored."""
    node = GatewayProcess(tmp_path / "gw", database_url, node={"store_commit_timeout_s": 1.0}).start()
    blocker = sqlite3.connect(database_url[len("sqlite:///"):],
                              isolation_level=None, timeout=60)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert send(node.port, small_study[:1], calling="STMARYS_PACS") == [status.OUT_OF_RESOURCES]
        assert time.monotonic() - started < 20, "the commit waited for SQLite's own busy timeout (30 s)"
        blocker.execute("ROLLBACK")
        assert send(node.port, small_study[:2], calling="STMARYS_PACS") == [status.SUCCESS] * 2
        spool = spool_index(node.spool_dir)
        for path in small_study[:2]:
            assert spool.get(sop_instance_uid(path)) == dataset_bytes(path)
        failed = [e for e in node.log_events() if e["event"] == "instance_not_stored"]
        assert len(failed) == 1 and failed[0]["status"] == status.OUT_OF_RESOURCES
        assert "busy" in failed[0]["error"]
    finally:
        blocker.close()
        node.stop()
