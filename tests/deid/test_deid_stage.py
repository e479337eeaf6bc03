"""The de-identification stage inside a running node: what DCMTK sends comes out de-identified, consistently."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pydicom

from gateway.deid.guard import find_leaks, identifiers_from_dataset
from gateway.storage.models import make_database
from support.dicomfiles import sop_instance_uid
from support.peers import GatewayProcess, storescu, wait_until

FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2}}


def _query(url: str, sql: str) -> list[tuple]:
    database = make_database(url, max_connections=2)
    with database.connection_context():
        return list(database.execute_sql(sql).fetchall())


def _outbound(node: GatewayProcess, url: str) -> list[Path]:
    rows = _query(url, "SELECT spool_path FROM outbound_object WHERE kind = 'image'")
    return [node.spool_dir / row[0] for row in rows]


def test_study_split_over_two_associations_is_deidentified_as_one(tmp_path, database_url, small_study):
    node = GatewayProcess(tmp_path / "gw", database_url, extra=FAST).start()
    try:
        assert storescu("127.0.0.1", node.port, small_study[:6], calling="STMARYS_PACS").returncode == 0
        # de-identified; with no referral the notes stage may already have moved it on to HELD
        wait_until(lambda: _query(database_url, "SELECT state FROM study") in ([("deidentified",)], [("held",)]),
                   60, "the case to be de-identified")
        # the rest of the study arrives after the case moved on: de-identified as late instances
        assert storescu("127.0.0.1", node.port, small_study[6:], calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: len(_outbound(node, database_url)) == len(small_study), 60, "every instance de-identified")
        (key, pseudo_study_uid), = _query(database_url, "SELECT key, pseudo_study_uid FROM study")
        originals = {sop_instance_uid(p): pydicom.dcmread(p) for p in small_study}
        mapped = dict(_query(database_url, "SELECT original_uid, pseudo_uid FROM uid_map"))
        for path in _outbound(node, database_url):
            out = pydicom.dcmread(path)
            original_uid = next(o for o, p in mapped.items() if p == out.SOPInstanceUID)
            original = originals[original_uid]
            assert out.StudyInstanceUID == pseudo_study_uid and out.StudyInstanceUID.startswith("2.25.")
            assert out.PatientName == f"SPINEGW^{key}"
            assert out.PatientIdentityRemoved == "YES"
            assert "113100" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
            assert out.PixelData == original.PixelData, "pixel data must never change"
            assert out.SeriesDescription == original.SeriesDescription  # "SAG T2 TSE" is a safe descriptor
            assert out.PatientSex == original.PatientSex and out.PatientAge == original.PatientAge
            assert find_leaks(out, identifiers_from_dataset(original)) == []
            assert path.name == f"{out.SOPInstanceUID}.dcm" and key in str(path)
        log_text = node.log_file.read_text()
        for original in originals.values():
            for value in (str(original.PatientName), original.PatientID, original.AccessionNumber,
                          original.StudyInstanceUID, original.SOPInstanceUID):
                assert value not in log_text
        events = [json.loads(line)["event"] for line in log_text.splitlines()]
        assert "case_deidentified" in events and "late_instances_deidentified" in events
    finally:
        node.stop()


def test_same_study_sent_again_keeps_its_pseudonyms(tmp_path, small_study):
    """Two nodes with the same key give the same pseudonymous UIDs: a study sent twice stays one study."""
    first_url, second_url = f"sqlite:///{tmp_path}/a/gateway.db", f"sqlite:///{tmp_path}/b/gateway.db"
    results = []
    for url, workdir in ((first_url, tmp_path / "a"), (second_url, tmp_path / "b")):
        node = GatewayProcess(workdir, url, extra={**FAST, "deid": {"secret_file": str(tmp_path / "shared.key")}})
        node.start()
        try:
            assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
            wait_until(lambda node=node, url=url: len(_outbound(node, url)) == len(small_study), 60,
                       "every instance de-identified")
            results.append(sorted(_query(url, "SELECT original_uid, pseudo_uid FROM uid_map")))
        finally:
            node.stop()
    assert results[0] == results[1]
    assert (tmp_path / "shared.key").stat().st_mode & 0o777 == 0o600


def _worker_processes(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
            if ppid == parent and b"multiprocessing.spawn" in command:
                found.add(int(entry.name))
    return found


def test_deidentification_workers_leave_with_a_killed_node(tmp_path, small_study):
    url = f"sqlite:///{tmp_path}/gw.db"
    node = GatewayProcess(tmp_path / "gw", url, extra={**FAST, "deid": {"workers": 1}}).start()
    assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
    wait_until(lambda: _outbound(node, url), 60, "an instance de-identified by a worker process")
    workers = _worker_processes(node.proc.pid)
    assert workers, "the node de-identifies in worker processes"
    node.kill()  # kill -9: the pool is never shut down
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 30,
               "the orphaned workers to exit")


def test_a_worker_that_starts_after_its_node_died_leaves_too():
    """A worker still starting when its node died already has another parent: it must not wait for that one."""
    code = ("import time\nfrom gateway.deid.work import _start_worker\n"
            "_start_worker(1, lambda: None)\ntime.sleep(60)\n")  # pid 1 stands for the node: not our parent
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    try:
        assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


def _large_copy(template: Path, target: Path, megabytes: int) -> Path:
    """``template`` (an MR image of the study) as a multi-frame instance of about ``megabytes`` MB."""
    dataset = pydicom.dcmread(template)
    frame = bytes(dataset.PixelData)
    frames = megabytes * 1_000_000 // len(frame) + 1
    dataset.NumberOfFrames = frames
    dataset.PixelData = frame * frames
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dataset.save_as(target, enforce_file_format=True)
    return target


def test_a_large_instance_is_written_by_its_worker_and_placed_whole(tmp_path, small_study):
    """An original over ``LARGE_OBJECT_BYTES`` is encoded by its worker into the spool's tmp/ and renamed into
    the outbound folder (its bytes never sent back to the node's process): the result is de-identified, its
    recorded size and digest are the file's, and nothing is left in tmp/."""
    from gateway.deid.work import LARGE_OBJECT_BYTES

    url = f"sqlite:///{tmp_path}/gateway.db"
    large = _large_copy(small_study[0], tmp_path / "large.dcm", 2 * LARGE_OBJECT_BYTES // 1_000_000)
    node = GatewayProcess(tmp_path / "gw", url, extra=FAST).start()
    try:
        assert storescu("127.0.0.1", node.port, [*small_study[1:4], large], calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: len(_outbound(node, url)) == 4, 120, "every instance de-identified")
        original = pydicom.dcmread(large)
        rows = _query(url, "SELECT spool_path, size, sha256 FROM outbound_object WHERE kind = 'image'")
        (spool_path, size, sha256), = [row for row in rows if (node.spool_dir / row[0]).stat().st_size > 1 << 24]
        path = node.spool_dir / spool_path
        assert size == path.stat().st_size and sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        out = pydicom.dcmread(path)
        assert out.PatientIdentityRemoved == "YES" and out.StudyInstanceUID.startswith("2.25.")
        assert out.PixelData == original.PixelData
        assert find_leaks(out, identifiers_from_dataset(original)) == []
        assert not [p for p in (node.spool_dir / "tmp").rglob("*") if p.is_file()], "a worker's file was left"
    finally:
        node.stop()
