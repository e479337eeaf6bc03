"""The gateway's pynetdicom hooks (``gateway.dicom.net``): in effect on a real association when installed; when
pynetdicom is not what they were made for, one warning and stock pynetdicom, and the node still stores."""

from __future__ import annotations

import os
import socket
import sqlite3
import struct
import threading
import time

import pynetdicom
import pynetdicom._config
import pynetdicom.association
import pynetdicom.dimse
import pynetdicom.dimse_messages
import pynetdicom.dul
import pynetdicom.fsm
import pytest
import structlog.testing
from pydicom import dcmread
from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.transport import AssociationSocket

import gateway.dicom.net
from gateway.config import GatewayConfig
from gateway.dicom import status
from gateway.dicom.command import encode_command_set
from gateway.dicom.net import (
    ASSOCIATION_POLL_S,
    DUL_POLL_DELAY_S,
    HOOKS_SWITCH,
    ContextsCopiedCheaply,
    DirectStores,
    _ReactorClock,
    _StoresServedInline,
    missing_hook_points,
    send_msg_store_responses_directly,
    store_request_to_primitive,
)
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import start_scp
from gateway.scp.slots import AssociationSlots
from gateway.storage.models import open_database
from gateway.storage.spool import Spool
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_index
from support.peers import GatewayProcess, free_port, storescu, wait_until
from support.scu import associate, send


@pytest.fixture
def scp(tmp_path, database_url, hooks_on):
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
            assert "do_action" in vars(assoc.dul.state_machine), "an event out of state aborts, not kills the DUL"
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
    """Count the calls of ``gateway.dicom.net``'s ``names`` (still calling them), to see which paths ran."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(gateway.dicom.net, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(gateway.dicom.net, name, counted)
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
        "d.DIMSEServiceProvider.send_msg = "
        "lambda self, primitive, context_id: _original(self, primitive, context_id)\n"),
}


@pytest.mark.parametrize("alteration", sorted(ALTERATIONS))
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_different_pynetdicom_means_one_warning_and_stock_pynetdicom(tmp_path, database_url, small_study,
                                                                       monkeypatch, alteration):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import pynetdicom\n" + ALTERATIONS[alteration])
    monkeypatch.setenv("PYTHONPATH", f"{site}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv(HOOKS_SWITCH, "on")  # the check itself finds the difference, in the hooks-off run too
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


@pytest.fixture
def bounded_scp(tmp_path, database_url, hooks_on):
    """The gateway's SCP in this process as a node builds it: the node's slots with each peer's share (4 places, 2
    a peer) and ``node.max_instance_bytes`` (1 MiB), so that received data sets are ``BoundedDataSet``s."""
    config = GatewayConfig.model_validate({
        "node": {"host": "127.0.0.1", "port": free_port(), "max_associations": 4},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
    })
    database = open_database(database_url, max_connections=8)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    slots = AssociationSlots.create(1, config.node.max_associations)
    handlers = ScpHandlers(AssociationPolicy(config), InstanceReceiver(spool, {}, "test"), slots=slots,
                           ae_share=2, host_share=4, max_instance_bytes=1024 * 1024)
    handlers.data_sets = []
    serve = handlers.on_store

    def on_store(event):
        data_set = event.request.DataSet
        handlers.data_sets.append((type(data_set), getattr(data_set, "spilled", None)))
        return serve(event)
    handlers.on_store = on_store
    server = start_scp(config.node, handlers)
    yield server, config, spool, slots, handlers
    server.shutdown()
    slots.close()
    database.close()


def test_a_data_set_past_the_spill_size_goes_to_the_spool_as_it_arrives(bounded_scp, small_study, monkeypatch):
    """On the real library, the acceptor's DIMSE layer receives into a ``BoundedDataSet`` (the
    ``receive_primitive`` hook is in effect): past ``SPILL_AFTER_BYTES`` (lowered here to 8 KiB, under one
    instance of the small study) each is written to the spool's tmp/ as it arrives, renamed into the spool, and
    stored intact; a data set under it stays in memory."""
    _server, config, spool, _slots, handlers = bounded_scp
    monkeypatch.setattr(gateway.dicom.net, "SPILL_AFTER_BYTES", 8 * 1024)
    spilled = counting(monkeypatch, "_write_fd")
    statuses = send(config.node.port, small_study[:3], calling="STMARYS_PACS")
    assert statuses == [status.SUCCESS] * 3
    recorded = handlers.data_sets
    assert recorded == [(gateway.dicom.net.BoundedDataSet, True)] * 3, recorded
    assert spilled["_write_fd"] >= 6, "each spilled data set written to its file (its meta and its fragments)"
    stored = spool_index(spool.root)
    for path in small_study[:3]:
        assert stored.get(sop_instance_uid(path)) == dataset_bytes(path), f"{path.name} not stored intact"
    assert not list(spool.tmp.rglob("*.part")), "a spilled file left behind in tmp/"

    monkeypatch.setattr(gateway.dicom.net, "SPILL_AFTER_BYTES", 16 * 1024 * 1024)
    assert send(config.node.port, small_study[3:4], calling="STMARYS_PACS") == [status.SUCCESS]
    assert handlers.data_sets[-1] == (gateway.dicom.net.BoundedDataSet, False)


def test_a_data_set_over_max_instance_bytes_is_refused_a700_and_the_association_goes_on(bounded_scp, tmp_path,
                                                                                       small_study):
    """An instance over ``node.max_instance_bytes`` is answered 0xA700 and nothing of it is kept; the next
    instance on the same association is stored."""
    _server, config, spool, _slots, _handlers = bounded_scp

    large = dcmread(small_study[0])
    large.PixelData = bytes(1100 * 1024)
    large.Rows, large.Columns = 550, 1024
    oversized = tmp_path / "oversized.dcm"
    large.save_as(oversized, enforce_file_format=True)
    statuses = send(config.node.port, [oversized, small_study[1]], calling="STMARYS_PACS")
    assert statuses == [status.OUT_OF_RESOURCES, status.SUCCESS]
    stored = spool_index(spool.root)
    assert sop_instance_uid(oversized) not in stored
    assert stored.get(sop_instance_uid(small_study[1])) == dataset_bytes(small_study[1])
    assert not list(spool.tmp.rglob("*.part"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the DUL thread made to die
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("ending", ["invalid_abort_source", "dul_thread_dies"])
def test_an_association_ended_without_an_abort_event_gives_its_place_back(bounded_scp, monkeypatch, ending):
    """The 800-PDU fuzz kept one AE title refused ("ae_share_exceeded") after it: an A-ABORT PDU with an invalid
    source made pynetdicom's state machine raise in AA-3, its DUL thread died, and the association ended with no
    release or abort event, its place under the slots and its AE title's share never given back. Both causes
    are covered: the A-ABORT is checked when read (an undecodable PDU, Evt19, an orderly abort), and the end
    of the association's thread gives the place back whatever ended it (here AA-3 made to raise)."""
    _server, config, _spool, slots, _handlers = bounded_scp
    if ending == "dul_thread_dies":
        description, _action, state = pynetdicom.fsm.ACTIONS["AA-3"]

        def raising(dul):
            raise RuntimeError("AA-3 failed")
        monkeypatch.setitem(pynetdicom.fsm.ACTIONS, "AA-3", (description, raising, state))
    source = 0x22 if ending == "invalid_abort_source" else 0x00
    for _ in range(3 * 2):  # three times the AE title's share
        peer = socket.create_connection(("127.0.0.1", config.node.port), timeout=10)
        try:
            peer.sendall(associate_rq(calling="STMARYS_PACS"))
            assert read_pdu(peer)[0] == 0x02, "A-ASSOCIATE-AC: the AE title's place was not given back"
            peer.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, 0))
            answer = read_pdu(peer)
            if ending == "invalid_abort_source":  # an undecodable PDU: the gateway aborts in order (AA-8)
                assert answer is not None and answer[0] == 0x07, answer
        finally:
            peer.close()
        wait_until(lambda: slots.total() == 0, 5, "the aborted association's place to be given back")
    assert slots.peer_total("ae:STMARYS_PACS") == 0 and slots.peer_total("host:127.0.0.1") == 0
    requestor = associate(config.node.port, calling="STMARYS_PACS")
    assert requestor.is_established
    requestor.release()


def associate_rq(calling: str) -> bytes:
    """An A-ASSOCIATE-RQ to SPINEGW proposing Verification in Explicit VR Little Endian."""
    def item(item_type: int, body: bytes) -> bytes:
        return struct.pack(">BBH", item_type, 0, len(body)) + body

    items = item(0x10, b"1.2.840.10008.3.1.1.1")
    items += item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + item(0x30, b"1.2.840.10008.1.1")
                  + item(0x40, b"1.2.840.10008.1.2.1"))
    items += item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = struct.pack(">HH", 1, 0) + b"SPINEGW".ljust(16) + calling.encode().ljust(16) + bytes(32) + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU (type, body), or None when the connection closed or timed out."""
    data = b""
    try:
        while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return data[0], data[6:]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_event_out_of_state_in_the_state_machine_is_dropped_and_the_threads_end(bounded_scp, monkeypatch):
    """The fuzz's A-RELEASE-RQ followed by invalid PDUs: the DUL answers the first invalid one with an A-ABORT
    (AA-8, state 13, where it stays while more bytes are to be read) while the association's thread answers the
    release, and that A-RELEASE response (Evt14) arrives in state 13, where pynetdicom's state machine has no
    entry. Stock, it raised ``InvalidEventError`` and the DUL thread died with a traceback. Here the association's
    thread is held until the DUL is in state 13 (kept there by the invalid PDUs still to read), so the race goes
    that way every time: the event is logged and dropped (``abort_on_events_out_of_state``), no thread dies, the
    peer gets the A-ABORT, and both threads end and give the place back."""
    server, config, _spool, slots, _handlers = bounded_scp
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    peer = socket.create_connection(("127.0.0.1", config.node.port), timeout=10)
    try:
        peer.sendall(associate_rq(calling="STMARYS_PACS"))
        assert read_pdu(peer)[0] == 0x02
        acceptor = wait_until(lambda: next((a for a in server.active_associations if a.is_established), None), 10,
                              "the acceptor's association")

        def hold_the_release_answer(event):
            if isinstance(event.primitive, A_RELEASE):
                wait_until(lambda: acceptor.dul.state_machine.current_state == "Sta13", 10, "the DUL's A-ABORT",
                           interval=0.0005)
        acceptor.bind(evt.EVT_ACSE_RECV, hold_the_release_answer)
        unknown_pdu = struct.pack(">BBI", 0x09, 0, 0)
        with structlog.testing.capture_logs() as logs:
            peer.sendall(struct.pack(">BBIL", 0x05, 0, 4, 0) + unknown_pdu * 4000)  # A-RELEASE-RQ, then junk
            answer = read_pdu(peer)
            assert answer is not None and answer[0] == 0x07, f"an A-ABORT, not {answer}"
            wait_until(lambda: not acceptor.is_alive() and not acceptor.dul.is_alive(), 20, "both threads to end")
    finally:
        peer.close()
    wait_until(lambda: slots.total() == 0, 5, "the association's place to be given back")
    assert died == [], f"a thread died: {died!r}"
    unexpected = [e for e in logs if e["event"] == "association_event_unexpected"]
    assert [(e["kind"], e["state"]) for e in unexpected] == [("Evt14", "Sta13")], unexpected
