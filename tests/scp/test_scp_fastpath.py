"""The receiving hot path's own parts, checked against what they replace or promise.

Each one stands in for slower general machinery (pydicom's encoders, pynetdicom's socket reads and polling
reactors) or reorders durable writes; these tests hold them to the same bytes and the same guarantees.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import random
import socket
import struct
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode as pynetdicom_encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from gateway.deid.options import DeidOptions
from gateway.deid.work import deid_pool
from gateway.dicom.command import encode_command_set, store_request_values, store_response_command
from gateway.dicom.filemeta import part10_header
from gateway.dicom.net import (
    _STOCK_MESSAGE_TO_PRIMITIVE,
    NODELAY_HANDLER,
    _ReceivedPData,
    _StoresServedInline,
    _wait_for_message,
    c_store_command,
    recv_exactly,
    store_request_to_primitive,
)
from gateway.dicom.wellformed import check_well_formed
from gateway.errors import InvalidInstance
from gateway.scp.receiver import (
    HEADER_TAGS,
    AssociationCache,
    InstanceReceiver,
    ReceivedInstance,
    header_from_values,
    parse_header,
    read_header,
    remove_unplaced_receipts,
)
from gateway.stages.deid import EARLY_AFTER_QUIET_S, EARLY_AT_THE_LATEST_S, DeidStage
from gateway.storage.models import SCHEMA_VERSION, Instance, InstanceState, SchemaVersion, db, migrate, open_database
from gateway.storage.spool import Spool
from support.dicomfiles import dataset_bytes
from support.peers import free_port

MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.slow  # waits for socket timeouts: 3.5 s
def test_recv_exactly_reads_a_whole_pdu_and_stops_short_only_when_the_peer_closes():
    left, right = socket.socketpair()
    payload = bytes(random.Random(1).getrandbits(8) for _ in range(300_000))
    sender = threading.Thread(target=lambda: (left.sendall(payload), left.sendall(b"tail"), left.close()))
    sender.start()
    assert recv_exactly(right, len(payload)) == payload
    # the peer claims far more than it sends (as a hostile PDU length would): what came, no more, no 4 GiB buffer
    assert recv_exactly(right, 2**32 - 1) == b"tail"
    sender.join()
    right.close()


def _store_rq(rng: random.Random) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = rng.randint(1, 65535)
    primitive.Priority = rng.choice([0, 1, 2])
    primitive.AffectedSOPClassUID = f"1.2.840.10008.5.1.4.1.1.{rng.randint(1, 999)}"
    primitive.AffectedSOPInstanceUID = "1.2." + ".".join(str(rng.randint(0, 10**9)) for _ in range(rng.randint(1, 5)))
    if rng.random() < 0.3:
        primitive.MoveOriginatorApplicationEntityTitle = "AE" * rng.randint(1, 8)
        primitive.MoveOriginatorMessageID = rng.randint(1, 65535)
    primitive.DataSet = BytesIO(b"\0" * 8)
    return primitive


def _store_rsp(rng: random.Random) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = rng.randint(1, 65535)
    primitive.AffectedSOPClassUID = MR
    primitive.AffectedSOPInstanceUID = f"2.25.{rng.randint(0, 10**30)}"
    primitive.Status = rng.choice([0x0000, 0xA700, 0xA900, 0xC000, 0x0124, 0xB000])
    if rng.random() < 0.5:
        primitive.ErrorComment = "x" * rng.randint(1, 64)
    return primitive


@pytest.mark.parametrize("seed", range(5))
def test_command_sets_encode_to_the_same_bytes_as_pydicom(seed):
    rng = random.Random(seed)
    messages = []
    for _ in range(200):
        request, response = C_STORE_RQ(), C_STORE_RSP()
        request.primitive_to_message(_store_rq(rng))
        response.primitive_to_message(_store_rsp(rng))
        messages += [request, response]
    echo, echo_rsp = C_ECHO_RQ(), C_ECHO_RSP()
    primitive = C_ECHO()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.primitive_to_message(primitive)
    primitive.MessageIDBeingRespondedTo, primitive.Status = 7, 0
    echo_rsp.primitive_to_message(primitive)
    for message in [*messages, echo, echo_rsp]:
        assert encode_command_set(message.command_set, True, True) == \
            pynetdicom_encode(message.command_set, True, True)


def test_command_sets_outside_the_fast_shapes_go_to_pydicom():
    message = C_STORE_RSP()
    message.primitive_to_message(_store_rsp(random.Random(3)))
    message.command_set.OffendingElement = [0x00100010, 0x00100020]  # AT, two values
    assert encode_command_set(message.command_set, True, True) == pynetdicom_encode(message.command_set, True, True)
    message.command_set.ErrorComment = "Zürich"  # not ASCII
    assert encode_command_set(message.command_set, True, True) == pynetdicom_encode(message.command_set, True, True)


@pytest.mark.parametrize("instance_uid", ["1.2.3.4", "1.2.3.45", "2.25.123456789012345678901234567890"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.90"])
def test_file_meta_is_byte_for_byte_what_pydicom_writes(instance_uid, syntax):
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = MR
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert part10_header(MR, instance_uid, syntax) == expected.getvalue()


def _received(path: Path, syntax: str | None = None) -> ReceivedInstance:
    ds = pydicom.dcmread(path)
    syntax = syntax or str(ds.file_meta.TransferSyntaxUID)
    if syntax != str(ds.file_meta.TransferSyntaxUID):
        buffer = DicomBytesIO()
        buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
        buffer.is_little_endian = syntax != ExplicitVRBigEndian
        write_dataset(buffer, ds)
        dataset = buffer.getvalue()
    else:
        dataset = dataset_bytes(path)
    return ReceivedInstance(meta=part10_header(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax),
                            dataset=dataset, context_sop_class=str(ds.SOPClassUID),
                            affected_sop_instance=str(ds.SOPInstanceUID), transfer_syntax=syntax,
                            calling_ae="STMARYS_PACS")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_the_structural_walk_reads_the_same_identity_as_pydicom(small_study, syntax):
    for path in small_study[:3]:
        received = _received(path, syntax)
        assert parse_header(received) == read_header(received.part10)


@pytest.mark.parametrize("dropped", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_the_walk_finds_a_missing_identity_as_pydicom_does(small_study, dropped):
    ds = pydicom.dcmread(small_study[0])
    delattr(ds, dropped)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    received = ReceivedInstance(meta=b"", dataset=buffer.getvalue(), context_sop_class=MR,
                                affected_sop_instance=str(ds.SOPInstanceUID) if dropped != "SOPInstanceUID" else "",
                                transfer_syntax=ExplicitVRLittleEndian, calling_ae="STMARYS_PACS")
    with pytest.raises(InvalidInstance) as refused:
        parse_header(received)
    assert refused.value.reason == "missing_uids"
    found = check_well_formed(received.dataset, ExplicitVRLittleEndian, HEADER_TAGS)
    with pytest.raises(InvalidInstance):
        header_from_values(found)


def test_the_association_reactor_wakes_for_a_message_and_leaves_it_to_a_blocked_sender():
    class Reactor:
        dimse = type("Dimse", (), {})()
        _reactor_checkpoint = threading.Event()
    reactor = Reactor()
    reactor._reactor_checkpoint.set()  # running, not asked to pause
    reactor.dimse.msg_queue = queue.Queue()
    waiting = threading.Thread(target=_wait_for_message, args=(reactor, 30.0))
    blocked: list = []
    sender = threading.Thread(target=lambda: blocked.append(reactor.dimse.msg_queue.get(timeout=30)))
    waiting.start()
    sender.start()
    reactor.dimse.msg_queue.put("C-STORE-RSP")
    waiting.join(10)
    sender.join(10)
    assert not waiting.is_alive(), "the reactor slept on although a message was queued"
    assert blocked == ["C-STORE-RSP"], "a sender blocked on the same queue missed the message"


@pytest.fixture
def receiving(tmp_path, database_url):
    database = open_database(database_url, max_connections=4)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    yield spool
    database.close()


def test_a_receipt_whose_file_never_landed_is_removed_at_start_up_for_its_own_node_only(receiving, small_study):
    spool = receiving
    mine, theirs = InstanceReceiver(spool, {}, "node-a"), InstanceReceiver(spool, {}, "node-b")
    kept = mine.receive(_received(small_study[0]), AssociationCache())
    for receiver, path in ((mine, small_study[1]), (theirs, small_study[2])):
        receiver.receive(_received(path), AssociationCache())
    with db.connection_context():
        rows = {row.sop_instance_uid: row for row in Instance.select()}
    unplaced = [rows[str(pydicom.dcmread(p).SOPInstanceUID)] for p in small_study[1:3]]
    for row in unplaced:  # what a crash between the row's commit and the file's rename leaves
        spool.absolute(row.spool_path).unlink()
    with db.connection_context():
        assert remove_unplaced_receipts(spool, "node-a") == 1
        left = {row.sop_instance_uid for row in Instance.select()}
    assert left == {rows[str(pydicom.dcmread(small_study[0]).SOPInstanceUID)].sop_instance_uid,
                    unplaced[1].sop_instance_uid}, "only node-a's unplaced row goes; node-b may still be placing"
    assert not kept.duplicate


def test_a_resent_instance_whose_file_is_missing_is_placed_again(receiving, small_study):
    spool = receiving
    receiver = InstanceReceiver(spool, {}, "node-a")
    receiver.receive(_received(small_study[0]), AssociationCache())
    with db.connection_context():
        row = Instance.get()
    spool.absolute(row.spool_path).unlink()
    again = receiver.receive(_received(small_study[0]), AssociationCache())
    assert again.duplicate
    assert spool.absolute(row.spool_path).read_bytes().endswith(dataset_bytes(small_study[0]))


def test_deidentification_waits_for_a_file_still_being_placed(receiving, small_study):
    spool = receiving
    receiver = InstanceReceiver(spool, {}, "node-a")
    for path in small_study[:3]:
        receiver.receive(_received(path), AssociationCache())
    with db.connection_context():
        rows = list(Instance.select().order_by(Instance.id))
        spool.absolute(rows[1].spool_path).unlink()
        options = DeidOptions()
        stage = DeidStage(options, b"k" * 32, spool, deid_pool(options, b"k" * 32, workers=0))
        latest = stage._latest_stored(rows[0].study)
        assert {i.id for i in latest} == {rows[0].id, rows[2].id}
        assert Instance.get_by_id(rows[1].id).state == InstanceState.STORED


def test_a_version_1_database_gains_the_node_column_and_keeps_its_rows(tmp_path, small_study):
    database = open_database(f"sqlite:///{tmp_path}/old.db")
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    InstanceReceiver(spool, {}, None).receive(_received(small_study[0]), AssociationCache())
    with database.connection_context():  # make it what release 1 left behind
        database.execute_sql('ALTER TABLE "instance" DROP COLUMN "node"')
        SchemaVersion.delete().where(SchemaVersion.version > 1).execute()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert "node" in {c.name for c in database.get_columns("instance")}
        assert Instance.select().count() == 1
    database.close()


def test_a_store_service_failing_in_the_dul_thread_leaves_the_association_serving():
    class Association:
        is_established = True
        served: list = []

        def _serve_request(self, message, context_id):
            raise RuntimeError("handler blew up")

    inline = _StoresServedInline(Association())
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = MR
    request.AffectedSOPInstanceUID = "1.2.3"
    request.DataSet = BytesIO(b"\0" * 8)
    inline.put((1, request))  # served (and failed) at once, not queued, not raised
    assert inline.empty()
    echo = C_ECHO()
    echo.MessageID = 2
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    inline.put((3, echo))
    assert inline.get_nowait() == (3, echo)


@pytest.mark.slow  # runs many associations: 2 s
def test_associations_do_not_leak_their_wake_up_sockets():
    ae = AE("SPINEGW")
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.add_requested_context("1.2.840.10008.1.1")
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[NODELAY_HANDLER])
    try:
        def echo() -> None:
            assoc = ae.associate("127.0.0.1", port, ae_title="SPINEGW", evt_handlers=[NODELAY_HANDLER])
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        echo()  # the first one sets up what stays (the server's threads, logging)
        time.sleep(0.5)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(30):
            echo()
        time.sleep(0.5)
        assert len(os.listdir("/proc/self/fd")) <= before + 4
    finally:
        server.shutdown()


def test_a_version_2_database_gains_the_held_header_values_and_keeps_its_identities(tmp_path):
    from gateway.storage.models import CaseState, Source, Study, StudyIdentity
    database = open_database(f"sqlite:///{tmp_path}/old.db")
    with database.connection_context():
        source = Source.create(name="st-marys", ae_title="STMARYS_PACS")
        study = Study.create(study_uid="1.2.3", source=source, calling_ae="STMARYS_PACS", state=CaseState.COMPLETE)
        StudyIdentity.create(study=study, patient_name="DOE^JANE")
        database.execute_sql('ALTER TABLE "study_identity" DROP COLUMN "header_values"')
        SchemaVersion.delete().where(SchemaVersion.version > 2).execute()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert "header_values" in {c.name for c in database.get_columns("study_identity")}
        identity = StudyIdentity.get()
        assert identity.patient_name == "DOE^JANE" and identity.header_values == ""
    database.close()


def test_early_deidentification_waits_for_the_study_to_pause(receiving, small_study):
    """While a study's instances stream in, the workers leave the cores to the receiving threads; once the
    study pauses (or its oldest waiting instance is old, a trickling study), its instances are taken early."""
    spool = receiving
    receiver = InstanceReceiver(spool, {}, "node-a")
    for path in small_study[:3]:
        receiver.receive(_received(path), AssociationCache())
    with db.connection_context():
        options = DeidOptions()
        stage = DeidStage(options, b"k" * 32, spool, deid_pool(options, b"k" * 32, workers=0))
        study = Instance.get().study
        streaming = study.last_received_at
        assert stage._outside_completion(streaming) == []
        assert stage.run_once(streaming) == 0
        assert {i.state for i in Instance.select()} == {InstanceState.STORED}

        paused = streaming + dt.timedelta(seconds=EARLY_AFTER_QUIET_S + 0.5)
        assert [s.id for s in stage._outside_completion(paused)] == [study.id]
        stage._outside_completion_due = 0.0
        stage.run_once(paused)
        assert {i.state for i in Instance.select()} == {InstanceState.DEIDENTIFIED}

        receiver.receive(_received(small_study[3]), AssociationCache())  # the study goes on, and on
        trickling = Instance.select().where(Instance.state == InstanceState.STORED).get()
        Instance.update(received_at=trickling.received_at - dt.timedelta(seconds=EARLY_AT_THE_LATEST_S + 1)).where(
            Instance.id == trickling.id).execute()
        assert [s.id for s in stage._outside_completion(study.__class__.get_by_id(study.id).last_received_at)] \
            == [study.id]


def _received_message(command: bytes, dataset: bytes = b"\x08\x00\x16\x00\x02\x00\x00\x001\x00") -> DIMSEMessage:
    """A C-STORE-RQ as pynetdicom's DIMSE layer assembles it from its P-DATA fragments."""
    message = DIMSEMessage()
    for value in (b"\x03" + command, b"\x02" + dataset):
        fragment = P_DATA()
        fragment.presentation_data_value_list = [[3, value]]
        message.decode_msg(fragment)
    return message


def _primitive_fields(primitive: C_STORE) -> dict:
    names = ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
             "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "_context_id", "_dataset_path")
    return {**{name: getattr(primitive, name) for name in names}, "DataSet": primitive.DataSet.getvalue()}


@pytest.mark.parametrize("seed", range(3))
def test_a_store_request_read_directly_is_the_primitive_pynetdicom_makes(seed):
    rng = random.Random(seed)
    read_directly = 0
    for _ in range(200):
        request = C_STORE_RQ()
        request.primitive_to_message(_store_rq(rng))
        command = pynetdicom_encode(request.command_set, True, True)
        read_directly += store_request_values(command) is not None
        ours = store_request_to_primitive(_received_message(command))
        theirs = _STOCK_MESSAGE_TO_PRIMITIVE(_received_message(command))
        assert type(ours) is type(theirs) is C_STORE
        assert _primitive_fields(ours) == _primitive_fields(theirs)
    assert read_directly > 100  # those with a C-MOVE originator went to pynetdicom


def test_a_store_request_padded_with_spaces_reads_as_pydicom_reads_it():
    command = c_store_command(9, MR, "1.2.3.4")
    padded = command.replace(b"1.2.3.4\0", b"1.2.3.4 ").replace(MR.encode() + b"\0", MR.encode() + b" ")
    ours = store_request_to_primitive(_received_message(padded))
    theirs = _STOCK_MESSAGE_TO_PRIMITIVE(_received_message(padded))
    assert _primitive_fields(ours) == _primitive_fields(theirs)
    assert ours.AffectedSOPInstanceUID == "1.2.3.4"


@pytest.mark.parametrize("change", ["truncated", "unknown element", "two message ids", "not ascii", "backslash",
                                    "empty uid", "c-echo", "no instance uid"])
def test_a_command_set_not_plainly_a_store_request_is_left_to_pynetdicom(change):
    command = c_store_command(9, MR, "1.2.3.4")
    altered = {
        "truncated": command[:-3],
        "unknown element": command + struct.pack("<HHI", 0, 0x1030, 2) + b"AE",
        "two message ids": command.replace(struct.pack("<HHIH", 0, 0x0110, 2, 9),
                                           struct.pack("<HHIHH", 0, 0x0110, 4, 9, 9)),
        "not ascii": command.replace(b"1.2.3.4\0", b"1.2.3.\xe4\0"),
        "backslash": command.replace(b"1.2.3.4\0", b"1.2\\3.4\0"),
        "empty uid": command.replace(struct.pack("<HHI", 0, 0x1000, 8) + b"1.2.3.4\0",
                                     struct.pack("<HHI", 0, 0x1000, 0)),
        "c-echo": command.replace(struct.pack("<HHIH", 0, 0x0100, 2, 1), struct.pack("<HHIH", 0, 0x0100, 2, 0x30)),
        "no instance uid": command.replace(struct.pack("<HHI", 0, 0x1000, 8) + b"1.2.3.4\0", b""),
    }[change]
    assert altered != command
    assert store_request_values(altered) is None


@pytest.mark.parametrize("seed", range(3))
def test_a_store_response_sent_directly_is_the_pdu_pynetdicom_sends(seed):
    rng = random.Random(seed)
    for _ in range(200):
        primitive = _store_rsp(rng)
        primitive.ErrorComment = None
        if rng.random() < 0.2:
            primitive.AffectedSOPClassUID = None
        message = C_STORE_RSP()
        message.primitive_to_message(primitive)
        [pdata] = list(message.encode_msg(5, 16384))
        command = store_response_command(primitive.MessageIDBeingRespondedTo, primitive.Status,
                                         primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID)
        assert pdata.presentation_data_value_list == [(5, b"\x03" + command)]


def _p_data_tf(values: list[tuple[int, bytes]]) -> bytes:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(value) for value in values]
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return pdu.encode()


@pytest.mark.parametrize("sizes", [[1], [2, 16_000], [131_072], [7, 1, 300, 5]])
def test_a_p_data_read_in_place_gives_the_fragments_pynetdicom_gives(sizes):
    rng = random.Random(len(sizes))
    values = [(rng.choice([1, 3, 255]), bytes([rng.choice([0, 1, 2, 3])]) + rng.randbytes(size - 1)) for size in sizes]
    encoded = _p_data_tf(values)
    stock = P_DATA_TF()
    stock.decode(encoded)
    ours = _ReceivedPData(memoryview(bytearray(encoded[6:]))).to_primitive()
    assert [(cid, bytes(value)) for cid, value in ours.presentation_data_value_list] == \
        stock.to_primitive().presentation_data_value_list == values


@pytest.mark.parametrize("damage", ["item runs past the end", "empty item", "truncated item header"])
def test_a_damaged_p_data_is_refused_in_place_as_pynetdicom_refuses_it(damage):
    body = _p_data_tf([(1, b"\x02abc")])[6:]  # item length 5, context 1, "\x02abc"
    damaged = {"item runs past the end": struct.pack(">L", 99) + body[4:],
               "empty item": struct.pack(">LB", 0, 1),
               "truncated item header": body + b"\x00\x00"}[damage]
    with pytest.raises((AssertionError, struct.error)):  # what stock pynetdicom 3.0.4 raises on each
        P_DATA_TF().decode(b"\x04\x00" + struct.pack(">L", len(damaged)) + damaged)
    with pytest.raises(ValueError):
        _ReceivedPData(memoryview(damaged))
