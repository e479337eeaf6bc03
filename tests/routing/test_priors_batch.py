"""The priors' instances are kept in batches (``PriorInstanceStore``), on SQLite and PostgreSQL: each file is whole
in the spool when the PACS is answered, the rows are committed a batch at a time and all of them by ``flush()``; a
batch that fails to commit is answered 0xA700 and committed with the next; instances fetched again are skipped."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import peewee
import pydicom
import pytest

from gateway.demo import write_demo_study
from gateway.dicom import status
from gateway.routing.priors import PriorInstanceStore
from gateway.storage.models import CaseState, Instance, InstanceState, PriorFetch, PriorStudy, utcnow
from gateway.storage.spool import Spool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing_db import case_db, make_case  # noqa: E402, F401 - case_db: the fixture below

pytestmark = pytest.mark.usefixtures("case_db")  # the database of database_url, open for each test


@pytest.fixture
def spool(tmp_path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    return spool


@pytest.fixture
def prior_files(tmp_path) -> list[bytes]:
    return [path.read_bytes() for path in write_demo_study(tmp_path / "prior", 5, seed=3, rows=32, cols=32)]


def _prior(study, files: list[bytes]) -> PriorStudy:
    fetch = PriorFetch.create(study=study, source="st-marys", state="retrieving",
                              deadline_at=utcnow() + dt.timedelta(seconds=60))
    study_uid = pydicom.dcmread(pydicom.filebase.DicomBytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID
    return PriorStudy.create(fetch=fetch, study=study, study_uid=str(study_uid), study_date="20240101",
                             modalities="MR")


def _stored(study) -> int:
    return Instance.select().where((Instance.study == study) & (Instance.state == InstanceState.STORED)).count()


def test_rows_are_committed_a_batch_at_a_time_and_all_by_flush(spool, prior_files):
    study = make_case(CaseState.DEIDENTIFIED)
    prior = _prior(study, prior_files)
    renewals = []
    store = PriorInstanceStore(spool, prior, "STMARYS_QR", lambda: renewals.append(1), batch=3, batch_s=3600)
    assert [store(data) for data in prior_files[:2]] == [status.SUCCESS] * 2
    assert _stored(study) == 0  # answered, files whole in the spool, rows not yet committed
    assert all(kept.path.is_file() for kept in store.kept)
    assert store(prior_files[2]) == status.SUCCESS
    assert (_stored(study), len(renewals)) == (3, 1)  # one commit (and one lease renewal) for the batch
    assert [store(data) for data in prior_files[3:]] == [status.SUCCESS] * 2
    assert _stored(study) == 3
    store.flush()
    assert (_stored(study), len(renewals)) == (5, 2)
    assert PriorStudy.get_by_id(prior.id).instances == 5
    rows = list(Instance.select().where(Instance.study == study))
    assert all(spool.absolute(row.spool_path).is_file() for row in rows)
    again = PriorInstanceStore(spool, prior, "STMARYS_QR", lambda: None, batch=3, batch_s=3600)
    for data in prior_files:  # fetched again after a restart: nothing recorded twice
        assert again(data) == status.SUCCESS
    again.flush()
    assert (_stored(study), PriorStudy.get_by_id(prior.id).instances) == (5, 5)


def test_a_batch_that_fails_to_commit_is_kept_for_the_next(spool, prior_files):
    study = make_case(CaseState.DEIDENTIFIED)
    prior = _prior(study, prior_files)
    failures = [peewee.OperationalError("the database went away")]

    def renew() -> None:
        if failures:
            raise failures.pop()

    store = PriorInstanceStore(spool, prior, "STMARYS_QR", renew, batch=2, batch_s=3600)
    assert store(prior_files[0]) == status.SUCCESS
    assert store(prior_files[1]) == status.OUT_OF_RESOURCES  # the batch could not be committed
    assert (_stored(study), len(store.kept)) == (0, 2)
    assert store(prior_files[2]) == status.SUCCESS  # the next batch commits all three
    assert _stored(study) == 3
    store.flush()
    assert _stored(study) == 3


def test_an_instance_of_another_study_is_refused_and_not_kept(spool, tmp_path, prior_files):
    study = make_case(CaseState.DEIDENTIFIED)
    prior = _prior(study, prior_files)
    other = write_demo_study(tmp_path / "other", 1, seed=4, rows=32, cols=32)[0].read_bytes()
    store = PriorInstanceStore(spool, prior, "STMARYS_QR", lambda: None)
    assert store(other) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    store.flush()
    assert (_stored(study), store.kept) == (0, [])
