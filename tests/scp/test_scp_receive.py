"""The receiving node against real peers: DCMTK, Orthanc and a pynetdicom SCU, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.dicom import status
from gateway.storage.models import make_database
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_index
from support.peers import GatewayProcess, Orthanc, echo_ok, storescu, wait_until
from support.scu import associate, send

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)


def rows(database_url: str, sql: str) -> list[tuple]:
    database = make_database(database_url, max_connections=2)
    with database.connection_context():
        return list(database.execute_sql(sql).fetchall())


def instances_in_db(database_url: str) -> dict[str, tuple[str, str, int]]:
    return {uid: (sha, path, version) for uid, sha, path, version in
            rows(database_url, "SELECT sop_instance_uid, sha256, spool_path, version FROM instance")}


def assert_stored_intact(gateway: GatewayProcess, database_url: str, files: list[Path]) -> None:
    """Every file is in the spool with its dataset byte-identical, and has its row."""
    spool = spool_index(gateway.spool_dir)
    in_db = instances_in_db(database_url)
    for path in files:
        uid = sop_instance_uid(path)
        assert uid in in_db, f"{path.name}: no database row"
        assert spool.get(uid) == dataset_bytes(path), f"{path.name}: spooled dataset differs from what was sent"


def test_dcmtk_echo_and_store(gateway, database_url, small_study):
    assert echo_ok("127.0.0.1", gateway.port, "STMARYS_PACS", "SPINEGW")
    result = storescu("127.0.0.1", gateway.port, small_study, calling="STMARYS_PACS")
    assert result.returncode == 0, result.stderr
    assert_stored_intact(gateway, database_url, small_study)
    snapshot = gateway.status()
    assert snapshot["instances_total"] == len(small_study)
    assert snapshot["studies_by_state"] == {"receiving": 1}
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.http_port}/healthz", timeout=10) as rsp:
        health = json.loads(rsp.read())
    assert health["status"] == "ok" and health["checks"]["scp"]["ok"] is True
    events = [e["event"] for e in gateway.log_events()]
    assert events.count("instance_stored") == len(small_study)
    assert "association_accepted" in events and "association_closed" in events


def test_pynetdicom_scu_store_and_resend_is_stored_once(gateway, database_url, small_study):
    assert send(gateway.port, small_study, calling="STMARYS_PACS") == [status.SUCCESS] * len(small_study)
    assert send(gateway.port, small_study[:3], calling="STMARYS_PACS") == [status.SUCCESS] * 3
    assert_stored_intact(gateway, database_url, small_study)
    assert len(instances_in_db(database_url)) == len(small_study)
    assert [e["event"] for e in gateway.log_events()].count("instance_duplicate") == 3


def test_same_uid_with_different_bytes_is_a_new_version(gateway, database_url, small_study):
    original = pydicom.dcmread(small_study[0])
    changed = copy.deepcopy(original)
    changed.SeriesDescription = "SAG T1 TSE CORRECTED"
    assert send(gateway.port, [original, changed], calling="STMARYS_PACS") == [status.SUCCESS] * 2
    versions = [row[0] for row in rows(database_url, "SELECT version FROM instance ORDER BY version")]
    assert versions == [1, 2]


@pytest.mark.parametrize(("syntax", "storescu_flag"), [
    ("1.2.840.10008.1.2.4.90", "-xv"),  # JPEG 2000 lossless
    ("1.2.840.10008.1.2.4.80", "-xt"),  # JPEG-LS lossless
    ("1.2.840.10008.1.2.5", "-xr"),     # RLE lossless
    ("1.2.840.10008.1.2.1.99", "-xd"),  # deflated explicit VR little endian
])
def test_transfer_syntaxes_are_accepted_as_sent(gateway, database_url, small_study, tmp_path, syntax,
                                                storescu_flag):
    """Compressed and deflated instances are stored exactly as sent, never decoded on receipt."""
    source = pydicom.dcmread(small_study[0])
    if syntax == "1.2.840.10008.1.2.1.99":
        source.file_meta.TransferSyntaxUID = syntax
    else:
        source.compress(syntax)
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "compressed.dcm"
    source.save_as(path, enforce_file_format=True)
    result = storescu("127.0.0.1", gateway.port, [path], calling="STMARYS_PACS", extra_args=[storescu_flag])
    assert result.returncode == 0, result.stderr
    syntaxes = [r[0] for r in rows(database_url, "SELECT transfer_syntax FROM instance")]
    assert syntaxes == [syntax]
    assert_stored_intact(gateway, database_url, [path])


def test_unknown_calling_and_wrong_called_ae_are_rejected(gateway):
    assert not echo_ok("127.0.0.1", gateway.port, "INTRUDER", "SPINEGW")
    assert not echo_ok("127.0.0.1", gateway.port, "STMARYS_PACS", "NOT_US")
    unknown = associate(gateway.port, calling="INTRUDER")
    assert unknown.is_rejected
    assert unknown.acceptor.primitive.diagnostic == status.DIAG_CALLING_AE_NOT_RECOGNIZED
    wrong = associate(gateway.port, calling="STMARYS_PACS", called="NOT_US")
    assert wrong.is_rejected
    assert wrong.acceptor.primitive.diagnostic == status.DIAG_CALLED_AE_NOT_RECOGNIZED
    # logged once per reason, calling AE title and host every few seconds (a peer retrying in a loop)
    reasons = [e.get("reason") for e in gateway.log_events() if e["event"] == "association_rejected"]
    assert reasons.count("calling_ae_not_recognized") == 1
    assert reasons.count("called_ae_not_recognized") == 1
    assert echo_ok("127.0.0.1", gateway.port, "STMARYS_PACS", "SPINEGW")


def _part10(ds: Dataset, path: Path, sop_class: str, raw_dataset: bytes | None = None) -> Path:
    """A Part 10 file whose meta says ``sop_class`` whatever the dataset says, optionally with raw dataset bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if raw_dataset is None:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, ds)
        raw_dataset = buffer.getvalue()
    with path.open("wb") as out:
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        out.write(raw_dataset)
    return path


def test_bad_instances_get_failure_statuses_and_the_node_keeps_serving(gateway, database_url, small_study,
                                                                      tmp_path):
    good = pydicom.dcmread(small_study[0])
    missing_uids = copy.deepcopy(good)
    del missing_uids.StudyInstanceUID
    missing_uids.SOPInstanceUID = generate_uid()
    mismatch = copy.deepcopy(good)
    mismatch.SOPInstanceUID = generate_uid()
    mismatch.SOPClassUID = CTImageStorage
    files = [
        _part10(missing_uids, tmp_path / "missing.dcm", good.SOPClassUID),
        # the dataset says CT, the presentation context says MR
        _part10(mismatch, tmp_path / "mismatch.dcm", good.SOPClassUID),
        # valid meta, then garbage where the dataset should be
        _part10(good, tmp_path / "garbage.dcm", good.SOPClassUID,
                raw_dataset=b"\x08\x00\x16\x00UI\xff\xff" + b"\x13" * 300),
    ]
    statuses = [send(gateway.port, [path], calling="STMARYS_PACS")[0] for path in files]
    assert statuses[0] == status.CANNOT_UNDERSTAND
    assert statuses[1] == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert statuses[2] == status.CANNOT_UNDERSTAND
    assert instances_in_db(database_url) == {}
    reasons = sorted(r[0] for r in rows(database_url, "SELECT reason FROM quarantined_object"))
    assert reasons == ["malformed_dataset", "missing_uids", "sop_class_mismatch"]
    assert len(list((gateway.spool_dir / "quarantine").rglob("*.dcm"))) == 3
    refused = [e for e in gateway.log_events() if e["event"] == "instance_refused"]
    assert {e["reason"] for e in refused} == set(reasons)
    # a following good association still succeeds
    assert storescu("127.0.0.1", gateway.port, small_study[:2], calling="STMARYS_PACS").returncode == 0
    assert len(instances_in_db(database_url)) == 2


def test_reviewer_may_not_send_studies(gateway, database_url, small_study):
    assert send(gateway.port, small_study[:1], calling="REVIEW_A") == [status.NOT_AUTHORIZED]
    assert instances_in_db(database_url) == {}


def test_free_space_floor_answers_out_of_resources(tmp_path, database_url, small_study):
    node = GatewayProcess(tmp_path / "gw", database_url, storage={"min_free_bytes": 10**18}).start()
    try:
        assert send(node.port, small_study[:2], calling="STMARYS_PACS") == [status.OUT_OF_RESOURCES] * 2
        assert instances_in_db(database_url) == {}
        assert echo_ok("127.0.0.1", node.port, "STMARYS_PACS", "SPINEGW")
    finally:
        node.stop()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_answers_out_of_resources_then_recovers(tmp_path, small_study):
    """A real ENOSPC from a 256 KiB tmpfs spool: 0xA700, never success; after space returns, success."""
    spool = tmp_path / "spool"
    if not _mount_tmpfs(spool, "256k"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", storage={"spool_dir": str(spool)})
    try:
        node.start()
        statuses = send(node.port, small_study, calling="STMARYS_PACS")
        assert status.OUT_OF_RESOURCES in statuses
        assert all(code in (status.SUCCESS, status.OUT_OF_RESOURCES) for code in statuses)
        stored = len(instances_in_db(f"sqlite:///{tmp_path}/gateway.db"))
        assert stored == statuses.count(status.SUCCESS)
        assert echo_ok("127.0.0.1", node.port, "STMARYS_PACS", "SPINEGW")
        subprocess.run(["mount", "-o", "remount,size=64m", str(spool)], check=True)
        assert send(node.port, small_study, calling="STMARYS_PACS") == [status.SUCCESS] * len(small_study)
        assert_stored_intact(node, f"sqlite:///{tmp_path}/gateway.db", small_study)
    finally:
        node.stop()
        subprocess.run(["umount", str(spool)], capture_output=True)


def test_database_down_answers_out_of_resources(tmp_path, pg_cluster, small_study):
    url = pg_cluster.new_database()
    node = GatewayProcess(tmp_path / "gw", url).start()
    try:
        assert send(node.port, small_study[:1], calling="STMARYS_PACS") == [status.SUCCESS]
        pg_cluster.stop_server()
        try:
            statuses = send(node.port, small_study[1:3], calling="STMARYS_PACS")
            assert statuses == [status.OUT_OF_RESOURCES] * 2
        finally:
            pg_cluster.restart_server()
        assert send(node.port, small_study[3:5], calling="STMARYS_PACS") == [status.SUCCESS] * 2
        assert set(instances_in_db(url)) == {sop_instance_uid(p) for p in [small_study[0], *small_study[3:5]]}
    finally:
        node.stop()


def test_orthanc_sends_a_study(tmp_path, database_url, small_study):
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    orthanc = Orthanc(tmp_path / "orthanc", "STMARYS_PACS",
                      modalities={"gateway": ["SPINEGW", "127.0.0.1", node.port]}).start()
    try:
        study_id = orthanc.upload(small_study)[0]["ParentStudy"]
        orthanc.post("/modalities/gateway/store", {"Resources": [study_id], "Synchronous": True})
        wait_until(lambda: len(instances_in_db(database_url)) == len(small_study), 120, "all instances stored")
        spool = spool_index(node.spool_dir)
        assert set(spool) == {sop_instance_uid(p) for p in small_study}
    finally:
        orthanc.stop()
        node.stop()


def test_max_associations_is_enforced(tmp_path):
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", node={"max_associations": 2}).start()
    held = [associate(node.port, calling="STMARYS_PACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = associate(node.port, calling="STMARYS_PACS")
        assert third.is_rejected
        assert third.acceptor.primitive.result == status.REJECTED_TRANSIENT
    finally:
        for assoc in held:
            assoc.release()
        node.stop()
