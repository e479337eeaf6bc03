"""The pipeline's stages on SQLite while another connection commits all the time (the SCP receiving, other
stages ticking): found by the load bench, where de-identification failed every tick with "database is
locked" once a few cases were in flight.

The cause: a stage iterating a half-read query cursor while writing on the same connection keeps an old
read snapshot open, and SQLite refuses that connection's write at once (no busy wait) as soon as anyone else
has committed. Each stage must read its work list whole before it writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import sqlite3
import threading
from pathlib import Path

import pydicom

from gateway.config import RoutingConfig
from gateway.deid.options import DeidOptions
from gateway.demo import write_demo_study
from gateway.stages.completion import CompletionStage
from gateway.stages.deid import DeidStage
from gateway.storage.models import CaseState, Instance, Series, Source, Study, db, open_database, utcnow
from gateway.storage.spool import Spool


class Committer:
    """Another connection committing small transactions in a tight loop until stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.execute("CREATE TABLE IF NOT EXISTS scratch (n INTEGER)")
        while not self._stop.wait(0.002):  # a commit every few milliseconds, like a busy SCP
            connection.execute("INSERT INTO scratch VALUES (?)", (self.commits,))
            self.commits += 1
        connection.close()

    def __enter__(self) -> Committer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _case(state: str, files: list[Path], spool_dir: Path, received_at: dt.datetime) -> Study:
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    source = Source.get(Source.name == "st-marys")
    study = Study.create(study_uid=str(first.StudyInstanceUID), source=source, calling_ae="STMARYS_PACS",
                         state=state, first_received_at=received_at, last_received_at=received_at)
    (spool_dir / "objects").mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series, _ = Series.get_or_create(series_uid=str(ds.SeriesInstanceUID),
                                         defaults={"study": study, "modality": "MR"})
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        shutil.copyfile(path, spool_dir / "objects" / f"{digest}.dcm")
        Instance.create(study=study, series=series, sop_instance_uid=str(ds.SOPInstanceUID),
                        sop_class_uid=str(ds.SOPClassUID), transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                        size=len(data), sha256=digest, spool_path=f"objects/{digest}.dcm",
                        calling_ae="STMARYS_PACS", received_at=received_at)
    return study


def _open(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.db"
    open_database(f"sqlite:///{path}", max_connections=4)
    with db.connection_context():
        Source.get_or_create(name="st-marys", defaults={"ae_title": "STMARYS_PACS"})
    return path


def test_deidentification_and_completion_keep_working_under_concurrent_commits(tmp_path):
    path = _open(tmp_path)
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    spool.prepare()
    long_ago = utcnow() - dt.timedelta(minutes=5)
    with db.connection_context():
        complete = [_case(CaseState.COMPLETE, write_demo_study(tmp_path / f"c{i}", 4, seed=40 + i, rows=32,
                                                                cols=32), spool_dir, long_ago) for i in range(3)]
        receiving = [_case(CaseState.RECEIVING, write_demo_study(tmp_path / f"r{i}", 2, seed=60 + i, rows=32,
                                                                  cols=32), spool_dir, long_ago) for i in range(3)]
    deid = DeidStage(DeidOptions(), b"k" * 32, spool)
    completion = CompletionStage(RoutingConfig(stable_after_s=1))
    with Committer(path) as committer:
        with db.connection_context():
            assert deid.run_once(utcnow()) == len(complete)
            assert completion.run_once(utcnow()) == len(receiving)
    assert committer.commits > 0
    with db.connection_context():
        states = {s.id: s.state for s in Study.select()}
    assert {states[s.id] for s in complete} == {CaseState.DEIDENTIFIED}
    assert {states[s.id] for s in receiving} == {CaseState.COMPLETE}
