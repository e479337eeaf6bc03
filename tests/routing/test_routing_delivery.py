"""Delivery to real reviewers (DCMTK storescp, Orthanc): ledger, retries, restart after kill -9, transcoding."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.routing.send import LEDGER_BATCH
from gateway.stages.deliver import DeliveryStage, backoff_s, retry_case
from gateway.storage.models import CaseState, Delivery, OutboundObject, Study, utcnow
from routing_db import add_outbound, db, make_case, open_db, storescp  # noqa: F401 - fixtures
from support.dicomfiles import dataset_bytes, sop_instance_uid
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, free_port, wait_until

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)


def _config(tmp_path: Path, port: int, ae_title: str, **retry) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "node": {"ae_title": "SPINEGW"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "database": f"sqlite:///{tmp_path}/gw.db"},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": ae_title, "host": "127.0.0.1", "port": port}],
        "routing": {"retry": {"max_attempts": 12, "initial_s": 0.2, "max_s": 1.0, **retry}},
    })


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc", "REVIEW_A").start()
    yield server
    server.stop()


def _orthanc_instances(orthanc: Orthanc) -> int:
    return sum(len(orthanc.get(f"/studies/{sid}/instances")) for sid in orthanc.get("/studies"))


def _received(scp: DcmtkStoreSCP) -> list[Path]:
    return sorted(p for p in scp.out_dir.iterdir() if p.is_file())


def test_delivered_to_storescp_undecoded_with_a_ledger_row_each(tmp_path, db, storescp, small_study):
    config = _config(tmp_path, storescp.port, "REVIEW_A")
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    add_outbound(study, config.storage.spool_dir, small_study)
    with capture_logs() as logs:
        assert DeliveryStage.of(config).run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    received = {sop_instance_uid(p): dataset_bytes(p) for p in _received(storescp)}
    assert received == {sop_instance_uid(p): dataset_bytes(p) for p in small_study}, "bytes sent as stored"
    assert [d.state for d in Delivery.select()] == ["sent"] * len(small_study)
    assert all(d.destination == "reviewer:dr-a" and d.last_status == 0 for d in Delivery.select())
    attempt, = [e for e in logs if e["event"] == "delivery_attempt"]
    assert attempt["status"] == "delivered" and attempt["instances"] == len(small_study) and attempt["attempt"] == 1
    assert Study.get_by_id(study.id).delivery_attempts == 1, "the attempts it took, as the operator's page shows"


def test_late_object_is_sent_alone_after_delivery(tmp_path, db, storescp, small_study):
    config = _config(tmp_path, storescp.port, "REVIEW_A")
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    add_outbound(study, config.storage.spool_dir, small_study[:-1])
    stage = DeliveryStage.of(config)
    stage.run_once(utcnow())
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    assert stage.run_once(utcnow()) == 0, "nothing missing, nothing sent"
    add_outbound(Study.get_by_id(study.id), config.storage.spool_dir, small_study[-1:])
    with capture_logs() as logs:
        stage.run_once(utcnow())
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    assert [e["instances"] for e in logs if e["event"] == "delivery_attempt"] == [1]
    assert [e["attempt"] for e in logs if e["event"] == "delivery_attempt"] == [1], "a new delivery counts afresh"
    assert Study.get_by_id(study.id).delivery_attempts == 1
    assert all(d.attempts == 1 for d in Delivery.select())
    assert len(_received(storescp)) == len(small_study)


def test_reviewer_down_then_up_delivered_once_after_retries(tmp_path, db, small_study):
    orthanc = Orthanc(tmp_path / "orthanc", "REVIEW_A")  # not started yet: the reviewer is down
    config = _config(tmp_path, orthanc.dicom_port, "REVIEW_A")
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    add_outbound(study, config.storage.spool_dir, small_study)
    stage = DeliveryStage.of(config)
    with capture_logs() as logs:
        stage.run_once(utcnow())
        row = Study.get_by_id(study.id)
        assert row.state == CaseState.DELIVERING and row.delivery_attempts == 1 and row.next_attempt_at > utcnow()
        assert stage.run_once(utcnow()) == 0 and not stage.due(utcnow()), "not before its retry time"
        wait_until(lambda: stage.run_once(utcnow()) or Study.get_by_id(study.id).delivery_attempts >= 3, 20,
                   "a third failed attempt")
        orthanc.start()
        try:
            wait_until(lambda: stage.run_once(utcnow()) and Study.get_by_id(study.id).state == CaseState.DELIVERED,
                       30, "the delivery once the reviewer is back")
            assert _orthanc_instances(orthanc) == len(small_study)
            assert len(orthanc.get("/studies")) == 1
        finally:
            orthanc.stop()
    attempts = [e for e in logs if e["event"] == "delivery_attempt"]
    assert [e["status"] for e in attempts][-1] == "delivered" and len(attempts) >= 4
    assert all(e["status"] == "no_association" for e in attempts[:-1])
    assert [e["attempt"] for e in attempts] == list(range(1, len(attempts) + 1))
    assert Study.get_by_id(study.id).delivery_attempts == len(attempts)
    # Each ledger row counts every attempt of its leg, the ones that found no association too; stored once.
    assert all(d.state == "sent" and d.attempts == len(attempts) for d in Delivery.select())


def test_after_max_attempts_failed_with_an_alert_then_retry_resends(tmp_path, db, small_study, orthanc):
    config = _config(tmp_path, free_port(), "REVIEW_A", max_attempts=2)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    add_outbound(study, config.storage.spool_dir, small_study[:2])
    stage = DeliveryStage.of(config)
    with capture_logs() as logs:
        wait_until(lambda: stage.run_once(utcnow()) and Study.get_by_id(study.id).state == CaseState.FAILED, 20,
                   "the case to fail")
    alert, = [e for e in logs if e["event"] == "delivery_failed"]
    assert alert["log_level"] == "error" and alert["case"] == study.key and alert["attempt"] == 2
    assert retry_case(Study.get_by_id(study.id))
    assert Study.get_by_id(study.id).state == CaseState.DELIVERING and Study.get_by_id(study.id).delivery_attempts == 0
    stage = DeliveryStage.of(_config(tmp_path, orthanc.dicom_port, "REVIEW_A"))  # the reviewer's address fixed
    stage.run_once(utcnow())
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED and _orthanc_instances(orthanc) == 2
    assert not retry_case(Study.get_by_id(study.id)), "only a failed case can be retried"


def test_backoff_grows_with_jitter_and_is_capped(tmp_path):
    retry = _config(tmp_path, 104, "X", initial_s=5, max_s=600).routing.retry
    waits = [backoff_s(retry, n) for n in range(1, 12)]
    for n, wait in enumerate(waits, 1):
        ceiling = min(600, 5 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert len({round(backoff_s(retry, 3), 6) for _ in range(20)}) > 1, "jitter"


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless], ids=["j2k", "jpegls"])
def test_explicit_little_endian_only_destination_gets_transcoded_pixels(tmp_path, db, small_study, syntax):
    compressed = []
    for path in small_study[:3]:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        out = tmp_path / "compressed" / path.name
        out.parent.mkdir(exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
        compressed.append(out)
    scp = DcmtkStoreSCP(tmp_path / "storescp", ae_title="REVIEW_A", extra_args=["+xe"]).start()
    try:
        config = _config(tmp_path, scp.port, "REVIEW_A")
        study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
        add_outbound(study, config.storage.spool_dir, compressed)
        DeliveryStage.of(config).run_once(utcnow())
        assert Study.get_by_id(study.id).state == CaseState.DELIVERED
        received = {sop_instance_uid(p): pydicom.dcmread(p) for p in _received(scp)}
    finally:
        scp.stop()
    assert len(received) == len(compressed)
    for path in compressed:
        original = pydicom.dcmread(path)
        copy = received[original.SOPInstanceUID]
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(copy.pixel_array, original.pixel_array)


def test_kill_9_mid_delivery_then_restart_completes_without_duplicates(tmp_path, big_study):
    orthanc = Orthanc(tmp_path / "orthanc", "REVIEW_A").start()
    url = f"sqlite:///{tmp_path}/gw.db"
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        extra={"routing": {"poll_s": 0.2, "stable_after_s": 0.5, "retry": {"initial_s": 0.2, "max_s": 1.0,
                                                                             "max_attempts": 12}}})
    database = open_db(url)
    with database.connection_context():
        study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
        add_outbound(study, node.spool_dir, big_study)
    database.close()

    def sent() -> int:
        with database.connection_context():
            return Delivery.select().where(Delivery.state == "sent").count()

    try:
        node.start()
        wait_until(lambda: sent() >= 20, 60, "part of the study to be delivered")
        node.kill()
        part = sent()
        assert part < len(big_study), "killed mid-delivery"
        node.start()
        wait_until(lambda: sent() == len(big_study), 120, "the rest of the study after the restart")
        with database.connection_context():
            wait_until(lambda: Study.get_by_id(study.id).state == CaseState.DELIVERED, 30, "the case delivered")
        assert _orthanc_instances(orthanc) == len(big_study)
        assert len(orthanc.get("/studies")) == 1
        events = [e for e in node.log_events() if e["event"] == "delivery_attempt"]
        # The ledger is written in batches: the outcomes of at most one batch die with the node, and those
        # objects are sent again (same SOP Instance UIDs: the reviewer replaces them, one study, 300 instances).
        assert events[-1]["status"] == "delivered"
        assert events[-1]["instances"] <= len(big_study) - part + LEDGER_BATCH + 1
    finally:
        node.stop()
        orthanc.stop()


REASON = "URGENT: Cauda equina syndrome?"


def _elements(dataset: pydicom.Dataset) -> list[tuple[int, object]]:
    """The dataset's top-level elements (file meta left out: storescp writes its own), less (0040,1002)."""
    return [(int(e.tag), e.value) for e in dataset if e.keyword != "ReasonForTheRequestedProcedure"]


def test_images_leave_with_the_notes_reason_and_the_spool_keeps_them_as_written(tmp_path, db, storescp, small_study):
    config = _config(tmp_path, storescp.port, "REVIEW_A")
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    Study.update(notes_reason=REASON).where(Study.id == study.id).execute()
    rows = add_outbound(study, config.storage.spool_dir, small_study[:4])
    OutboundObject.update(kind="notes_sr").where(OutboundObject.id == rows[-1].id).execute()  # not an image
    spooled = {row.sop_instance_uid: (Path(config.storage.spool_dir) / row.spool_path).read_bytes() for row in rows}
    assert DeliveryStage.of(config).run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    received = {sop_instance_uid(p): p for p in _received(storescp)}
    assert set(received) == set(spooled)
    for row in rows:
        dataset = pydicom.dcmread(received[row.sop_instance_uid])
        original = pydicom.dcmread(io.BytesIO(spooled[row.sop_instance_uid]))
        if row.id == rows[-1].id:
            assert "ReasonForTheRequestedProcedure" not in dataset, "only images get the reason"
        else:
            assert dataset.ReasonForTheRequestedProcedure == REASON
        assert _elements(dataset) == _elements(original), "nothing else changed"
        assert (Path(config.storage.spool_dir) / row.spool_path).read_bytes() == spooled[row.sop_instance_uid]
    assert [d.state for d in Delivery.select()] == ["sent"] * len(rows)


def test_the_reason_fits_each_images_character_set_and_transcoded_images_get_it_too(tmp_path, db, small_study):
    """Accents are folded away in a Latin-1 image (pydicom's re-encoding, as the in-place edit cannot), kept in a
    UTF-8 one (in place), and a compressed image the reviewer only takes decoded gets the reason as well."""
    reason = "Névralgie L5?"
    files = {}
    for name, path, charset, syntax in (("latin1", small_study[0], "ISO_IR 100", None),
                                        ("utf8", small_study[1], "ISO_IR 192", None),
                                        ("j2k", small_study[2], "ISO_IR 192", JPEG2000Lossless)):
        dataset = pydicom.dcmread(path)
        dataset.SpecificCharacterSet = charset
        if syntax is not None:
            dataset.compress(syntax)
        files[name] = tmp_path / f"{name}.dcm"
        dataset.save_as(files[name], enforce_file_format=True)
    scp = DcmtkStoreSCP(tmp_path / "storescp", ae_title="REVIEW_A", extra_args=["+xe"]).start()
    try:
        config = _config(tmp_path, scp.port, "REVIEW_A")
        study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
        Study.update(notes_reason=reason).where(Study.id == study.id).execute()
        add_outbound(study, config.storage.spool_dir, list(files.values()))
        DeliveryStage.of(config).run_once(utcnow())
        assert Study.get_by_id(study.id).state == CaseState.DELIVERED
        received = {sop_instance_uid(p): pydicom.dcmread(p) for p in _received(scp)}
    finally:
        scp.stop()
    reasons = {name: received[sop_instance_uid(path)].ReasonForTheRequestedProcedure for name, path in files.items()}
    assert reasons == {"latin1": "Nevralgie L5?", "utf8": reason, "j2k": reason}
    assert received[sop_instance_uid(files["j2k"])].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def _kill(scp: DcmtkStoreSCP) -> None:
    scp.proc.kill()
    scp.proc.wait()
    scp.proc = None


def _readable_uids(paths: list[Path]) -> set[str]:
    """The SOP Instance UIDs of the files that can be read: the kill may leave the file in flight cut short
    (the reviewer never acknowledged it)."""
    uids = set()
    for path in paths:
        try:
            uids.add(sop_instance_uid(path))
        except (InvalidDicomError, EOFError, ValueError):
            continue
    return uids


def test_the_ledger_after_a_delivery_cut_short_and_the_retry_that_sends_only_the_rest(tmp_path, db, big_study):
    """The reviewer is killed mid-association: the ledger (written in batches) shows as sent exactly what the
    reviewer acknowledged, at most the one object in flight is unaccounted, and the retry sends only the rest."""
    scp = DcmtkStoreSCP(tmp_path / "first", ae_title="REVIEW_A").start()
    config = _config(tmp_path, scp.port, "REVIEW_A")
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    Study.update(notes_reason=REASON).where(Study.id == study.id).execute()
    add_outbound(study, config.storage.spool_dir, big_study)
    stage = DeliveryStage.of(config)
    killer = threading.Thread(target=lambda: (wait_until(lambda: len(_received(scp)) >= 60, 60, "60 objects"),
                                              _kill(scp)))
    killer.start()
    try:
        stage.run_once(utcnow())
    finally:
        killer.join()
        scp.stop()
    row = Study.get_by_id(study.id)
    assert row.state == CaseState.DELIVERING and row.delivery_attempts == 1
    first = _readable_uids(_received(scp))
    sent = {d.outbound.sop_instance_uid for d in Delivery.select().where(Delivery.state == "sent")}
    assert 60 <= len(sent) < len(big_study)
    assert sent <= first and len(first - sent) <= 1, "the ledger shows every acknowledged object, and only those"
    assert Delivery.select().count() == len(big_study) and all(d.attempts == 1 for d in Delivery.select())

    second = DcmtkStoreSCP(tmp_path / "second", ae_title="REVIEW_A")
    second.port = scp.port
    second.start()
    try:
        Study.update(next_attempt_at=None).where(Study.id == study.id).execute()
        assert stage.run_once(utcnow()) == 1
    finally:
        second.stop()
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    again = {sop_instance_uid(p) for p in _received(second)}
    assert again == {sop_instance_uid(p) for p in big_study} - sent, "the retry sends only what was not sent"
    assert all(d.state == "sent" for d in Delivery.select())
    assert {d.attempts for d in Delivery.select() if d.outbound.sop_instance_uid in sent} == {1}
