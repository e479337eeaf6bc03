"""A delivery's C-STOREs written straight to the socket (``gateway.dicom.net.DirectStores``): in effect on a real
association to a real DCMTK storescp, the peer writing byte for byte the objects meant (with the reason in images
only), the PDUs those pynetdicom would send, and the stock path (pynetdicom's ``send_c_store``) still right without
it."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pydicom
import pynetdicom._config
import pynetdicom.association
import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from gateway.config import GatewayConfig
from gateway.dicom.net import DirectStores, c_store_command, pdata_pdus
from gateway.routing import send
from gateway.stages.deliver import DeliveryStage
from gateway.storage.models import CaseState, OutboundObject, Study, utcnow
from routing_db import add_outbound, db, make_case, storescp  # noqa: F401 - fixtures
from support.dicomfiles import dataset_bytes, sop_instance_uid
from support.peers import DcmtkStoreSCP

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)

REASON = "Low back pain; query L5 root"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _config(tmp_path: Path, port: int) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "node": {"ae_title": "SPINEGW"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "database": f"sqlite:///{tmp_path}/gw.db"},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": port}],
    })


def _deliver_with_reason(tmp_path: Path, storescp: DcmtkStoreSCP, files: list[Path]) -> dict[str, bytes]:
    """Deliver ``files`` (the last one as the notes SR, not an image) with the reason; SOP Instance UID → the
    data set bytes each should arrive as (the spooled file's, with the reason set in images)."""
    config = _config(tmp_path, storescp.port)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    Study.update(notes_reason=REASON).where(Study.id == study.id).execute()
    rows = add_outbound(study, config.storage.spool_dir, files)
    OutboundObject.update(kind="notes_sr").where(OutboundObject.id == rows[-1].id).execute()
    expected = {}
    for row in rows:
        spooled = (Path(config.storage.spool_dir) / row.spool_path).read_bytes()
        meant = spooled if row.id == rows[-1].id else send.with_reason(spooled, REASON)
        expected[row.sop_instance_uid] = dataset_bytes_of(meant)
    assert DeliveryStage.of(config).run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    return expected


def dataset_bytes_of(part10: bytes) -> bytes:
    meta = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta
    return part10[128 + 4 + 12 + int(meta.FileMetaInformationGroupLength):]


def _received(scp: DcmtkStoreSCP) -> dict[str, bytes]:
    return {sop_instance_uid(p): dataset_bytes(p) for p in scp.out_dir.iterdir() if p.is_file()}


def test_direct_stores_are_in_effect_and_storescp_writes_the_objects_meant(tmp_path, db, storescp, small_study,
                                                                          monkeypatch, hooks_on):
    seen = []
    direct_send = DirectStores.send

    def watched(self, context_id, sop_class_uid, sop_instance_uid, data_set):
        assoc = self.assoc
        seen.append((assoc.is_requestor, assoc._reactor_checkpoint.is_set(), assoc._is_paused, self._max_pdu))
        return direct_send(self, context_id, sop_class_uid, sop_instance_uid, data_set)

    def refused(*args, **kwargs):
        raise AssertionError("the stock path was taken")

    monkeypatch.setattr(DirectStores, "send", watched)
    monkeypatch.setattr("pynetdicom.association.Association.send_c_store", refused)
    monkeypatch.setattr(send._MemoryFile, "__init__", refused)
    files = small_study[:5]
    expected = _deliver_with_reason(tmp_path, storescp, files)
    assert len(seen) == len(files), "every object went by DirectStores"
    assert all(requestor and not running and paused for requestor, running, paused, _ in seen), \
        "the reactor stays paused through the delivery"
    assert {max_pdu for *_, max_pdu in seen} == {16384}, "PDUs of the peer's size (storescp's default)"
    assert _received(storescp) == expected, "byte for byte: the file's data set, the reason in images only"


def test_without_direct_stores_the_stock_path_writes_the_same_objects(tmp_path, db, storescp, small_study,
                                                                      monkeypatch):
    """Also the path of the hooks-off run and of an unknown pynetdicom: ``send_c_store`` by path, the files sent
    undecoded (``STORE_SEND_CHUNKED_DATASET``, a documented setting that ``install_fast_paths`` sets either way:
    pynetdicom never reads them with ``dcmread``)."""
    monkeypatch.setattr(DirectStores, "available", staticmethod(lambda assoc: False))
    memory_files = []
    memory_init = send._MemoryFile.__init__

    def counted(self, *args):
        memory_files.append(self)
        memory_init(self, *args)

    decoded = []
    monkeypatch.setattr(send._MemoryFile, "__init__", counted)
    monkeypatch.setattr(pynetdicom.association, "dcmread", lambda *args, **kwargs: decoded.append(args))
    expected = _deliver_with_reason(tmp_path, storescp, small_study[:5])
    assert pynetdicom._config.STORE_SEND_CHUNKED_DATASET is True
    assert decoded == [], "pynetdicom decoded a file it should have sent as stored"
    assert len(memory_files) == 1, "pynetdicom sent the edited images from the in-memory file"
    assert _received(storescp) == expected


@pytest.mark.parametrize("instance_uid", ["1.2.3.45", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"])
@pytest.mark.parametrize("message_id", [1, 65535])
def test_the_command_set_is_the_one_pynetdicom_encodes(instance_uid, message_id):
    request = C_STORE()
    request.MessageID = message_id
    request.Priority = 2
    request.AffectedSOPClassUID = MR
    request.AffectedSOPInstanceUID = instance_uid
    request.DataSet = io.BytesIO(b"\0\0")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    assert c_store_command(message_id, MR, instance_uid) == encode(message.command_set, True, True)


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096 + 6, 1000])
@pytest.mark.parametrize("cuts", [0, 1, 3])
def test_the_pdus_are_those_pynetdicom_sends(max_pdu, cuts):
    """The same P-DATA-TF bytes as pynetdicom's ``encode_msg``, for a data set given in pieces cut anywhere."""
    rng = random.Random(max_pdu * 7 + cuts)
    data_set = rng.randbytes(50_001)
    request = C_STORE()
    request.MessageID = 7
    request.Priority = 2
    request.AffectedSOPClassUID = MR
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.DataSet = io.BytesIO(data_set)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    theirs = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(5, max_pdu))
    edges = sorted(rng.sample(range(1, len(data_set)), cuts))
    pieces = [data_set[a:b] for a, b in zip([0, *edges], [*edges, len(data_set)])]
    ours = pdata_pdus(5, [c_store_command(7, MR, "1.2.3.4.5")], command=True, max_pdu_length=max_pdu)
    ours += pdata_pdus(5, [memoryview(p) for p in pieces], command=False, max_pdu_length=max_pdu)
    assert b"".join(bytes(b) for b in ours) == theirs
