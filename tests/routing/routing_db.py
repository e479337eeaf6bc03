"""Helpers for the routing tests: cases built by hand in a real database, and outbound files in a spool."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pydicom
import pytest

from gateway.storage.models import (
    CaseState,
    Instance,
    OutboundObject,
    Referral,
    Series,
    Source,
    Study,
    open_database,
    utcnow,
)


def open_db(url: str):
    database = open_database(url, max_connections=4)
    Source.get_or_create(name="st-marys", defaults={"ae_title": "STMARYS_PACS"})
    return database


@pytest.fixture
def case_db(database_url):
    """The database of ``database_url`` (SQLite, then PostgreSQL) with the test source, open for the test."""
    database = open_db(database_url)
    with database.connection_context():
        yield database
    database.close_all()


@pytest.fixture
def db(tmp_path):
    """A SQLite database with the test source, open for the test."""
    database = open_db(f"sqlite:///{tmp_path}/gw.db")
    with database.connection_context():
        yield database


@pytest.fixture
def storescp(tmp_path):
    """A DCMTK storescp playing reviewer dr-a (REVIEW_A)."""
    from support.peers import DcmtkStoreSCP

    scp = DcmtkStoreSCP(tmp_path / "storescp", ae_title="REVIEW_A").start()
    yield scp
    scp.stop()


_counter = iter(range(1, 10**9))


def make_case(state: str = CaseState.NOTES_ATTACHED, *, modalities: tuple[str, ...] = ("MR",),
              urgency: str = "routine", received_at: dt.datetime | None = None, reviewer: str | None = None,
              subspecialty: str | None = None) -> Study:
    """A case in ``state`` with one series per modality (no files)."""
    n = next(_counter)
    source = Source.get(Source.name == "st-marys")
    received_at = received_at or utcnow()
    study = Study.create(study_uid=f"2.25.{n}{n}", source=source, calling_ae="STMARYS_PACS", state=state,
                         urgency=urgency, first_received_at=received_at, last_received_at=received_at,
                         reviewer=reviewer)
    for index, modality in enumerate(modalities):
        Series.create(study=study, series_uid=f"2.25.{n}{n}{index + 1}", modality=modality)
    if subspecialty or urgency == "urgent":
        Referral.create(source=source, accession_number=f"A{n}", patient_id=f"P{n}", document="{}",
                        received_via="cli", urgency=urgency, subspecialty=subspecialty, study=study, state="matched")
    return study


def add_outbound(study: Study, spool_dir: Path, files: list[Path]) -> list[OutboundObject]:
    """Copy ``files`` into ``spool_dir/outbound/<key>/`` as the case's outbound objects."""
    rows = []
    target = Path(spool_dir) / "outbound" / study.key
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relative = f"outbound/{study.key}/{ds.SOPInstanceUID}.dcm"
        shutil.copyfile(path, Path(spool_dir) / relative)
        data = Path(path).read_bytes()
        rows.append(OutboundObject.create(
            study=study, kind="image", sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID), spool_path=relative,
            sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    return rows


def add_instances(study: Study, spool_dir: Path, files: list[Path]) -> None:
    """Copy ``files`` into the spool as the case's ORIGINAL instances (for the spine filter), received when the
    case last received something."""
    objects = Path(spool_dir) / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series, _ = Series.get_or_create(series_uid=str(ds.SeriesInstanceUID),
                                         defaults={"study": study, "modality": str(ds.get("Modality", ""))})
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        shutil.copyfile(path, objects / f"{digest}.dcm")
        Instance.create(study=study, series=series, sop_instance_uid=str(ds.SOPInstanceUID),
                        sop_class_uid=str(ds.SOPClassUID), transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                        size=len(data), sha256=digest, spool_path=f"objects/{digest}.dcm", calling_ae="STMARYS_PACS",
                        received_at=study.last_received_at)


def write_head_ct(out_dir: Path, instances: int = 4) -> list[Path]:
    """A small study that is not spine: CT of the head (demo files re-labelled, new UIDs)."""
    from gateway.demo import write_demo_study

    paths = write_demo_study(out_dir, instances, seed=7, rows=64, cols=64)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality = "CT"
        ds.BodyPartExamined = "HEAD"
        ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
        ds.SeriesDescription = "AX 5MM"
        ds.ProtocolName = "HEAD ROUTINE"
        ds.save_as(path, enforce_file_format=True)
    return paths
