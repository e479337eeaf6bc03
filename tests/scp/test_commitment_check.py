"""What the Storage Commitment SCP counts as committed (``gateway.storage.commitments.check``), on a real
database and spool: each failure reason, another source's instance, and a repeated transaction UID."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from pydicom.dataset import Dataset

from gateway.dicom.commitment import InvalidCommitmentRequest, read_request
from gateway.storage import commitments
from gateway.storage.models import (
    CommitmentRequest,
    CommitmentState,
    Delivery,
    Instance,
    InstanceState,
    OutboundObject,
    Series,
    Source,
    Study,
    open_database,
    utcnow,
)
from gateway.storage.spool import Spool

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def stored(tmp_path, database_url):
    database = open_database(database_url)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    with database.connection_context():
        for name, ae_title, uid in (("north", "NORTH", "2.25.1"), ("south", "SOUTH", "2.25.2")):
            source = Source.create(name=name, ae_title=ae_title)
            study = Study.create(study_uid=uid, calling_ae=ae_title, source=source)
            series = Series.create(study=study, series_uid=f"{uid}.1", modality="MR")
            for i, state in enumerate((InstanceState.STORED, InstanceState.DEIDENTIFIED, InstanceState.SUPERSEDED)):
                content = f"{name}-{i}".encode()
                digest = hashlib.sha256(content).hexdigest()
                path = spool.store(content, digest)
                Instance.create(study=study, series=series, sop_instance_uid=f"{uid}.1.{i}", sop_class_uid=MR,
                                transfer_syntax="1.2.840.10008.1.2.1", size=len(content), sha256=digest,
                                spool_path=spool.relative(path), calling_ae=ae_title, state=state)
    yield database, spool
    database.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_each_reference_is_committed_or_fails_with_its_reason(stored):
    database, spool = stored
    with database.connection_context():
        (spool.root / Instance.get(Instance.sop_instance_uid == "2.25.1.1.1").spool_path).unlink()
        checked = commitments.check("north", [
            (MR, "2.25.1.1.0"),  # stored, its file there
            (MR, "2.25.1.1.1"),  # de-identified, its original's file gone
            (MR, "2.25.1.1.2"),  # superseded: not held as such
            (CT, "2.25.1.1.0"),  # stored as MR
            (MR, "2.25.2.1.0"),  # another source's
            (MR, "2.25.9.9.9"),  # never sent
        ], spool.root)
    assert checked.committed == [(MR, "2.25.1.1.0")]
    assert checked.failed == [((MR, "2.25.1.1.1"), 0x0110), ((MR, "2.25.1.1.2"), 0x0112),
                              ((CT, "2.25.1.1.0"), 0x0119), ((MR, "2.25.2.1.0"), 0x0112),
                              ((MR, "2.25.9.9.9"), 0x0112)]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_repeated_transaction_is_reported_again_not_twice(stored):
    database, _ = stored
    with database.connection_context():
        first, new = commitments.record_request("north", "NORTH", "2.25.77", [(MR, "2.25.1.1.0")])
        assert new
        commitments.mark_reported(first, 1, 0)
        again, new = commitments.record_request("north", "NORTH", "2.25.77", [(MR, "2.25.1.1.0"), (MR, "2.25.x")])
        assert not new and again.id == first.id
        assert again.state == CommitmentState.PENDING and again.attempts == 0
        assert commitments.references_of(again) == [(MR, "2.25.1.1.0"), (MR, "2.25.x")]
        other, new = commitments.record_request("south", "SOUTH", "2.25.77", [(MR, "2.25.2.1.0")])
        assert new and other.id != first.id


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_one_node_claims_a_due_request_and_a_failed_try_backs_it_off(stored):
    database, _ = stored
    with database.connection_context():
        commitments.record_request("north", "NORTH", "2.25.78", [(MR, "2.25.1.1.0")])
        now = utcnow()
        [request] = commitments.due(now)
        [same] = commitments.due(now)  # a second node reads the same row
        assert commitments.claim(request, now, dt.timedelta(seconds=60))
        assert not commitments.claim(same, now, dt.timedelta(seconds=60))
        assert commitments.due(now) == []
        commitments.mark_not_delivered(request, "no association", now + dt.timedelta(seconds=5))
        assert commitments.due(now) == [] and len(commitments.due(now + dt.timedelta(seconds=6))) == 1
        pending = commitments.summary()["open"]
        assert [(row["state"], row["attempts"], row["last_error"]) for row in pending] == [
            ("pending", 1, "no association")]
        commitments.mark_not_delivered(CommitmentRequest.get_by_id(request.id), "refused", None)
        assert commitments.summary()["by_state"] == {"failed": 1}


def test_a_request_without_what_it_needs_is_refused_with_its_status():
    with pytest.raises(InvalidCommitmentRequest) as wrong_type:
        read_request(2, Dataset(), 10)
    assert wrong_type.value.status == 0x0123
    with pytest.raises(InvalidCommitmentRequest) as missing:
        read_request(1, Dataset(), 10)
    assert missing.value.status == 0x0120
    information = Dataset()
    information.TransactionUID = "2.25.5"
    item = Dataset()
    item.ReferencedSOPClassUID = MR
    item.ReferencedSOPInstanceUID = "2.25.5.1"
    information.ReferencedSOPSequence = [item, item]
    with pytest.raises(InvalidCommitmentRequest) as too_many:
        read_request(1, information, 1)
    assert too_many.value.status == 0x0115
    assert read_request(1, information, 2).references == [(MR, "2.25.5.1"), (MR, "2.25.5.1")]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_reviewers_report_commits_its_transactions_objects_and_sends_the_failed_ones_again(stored):
    database, _ = stored
    destination = "reviewer:dr-a"
    with database.connection_context():
        study = Study.get(Study.study_uid == "2.25.1")
        rows = []
        for i in range(3):
            outbound = OutboundObject.create(study=study, sop_instance_uid=f"2.25.50.{i}", sop_class_uid=MR,
                                             transfer_syntax="1.2.840.10008.1.2.1", spool_path=f"outbound/x/{i}.dcm",
                                             sha256="0" * 64, size=1)
            rows.append(Delivery.create(outbound=outbound, destination=destination, state="sent"))
        assert [o.sop_instance_uid for _, o in commitments.uncommitted(study.id, destination)] == [
            "2.25.50.0", "2.25.50.1", "2.25.50.2"]
        commitments.mark_asked([r.id for r in rows[:2]], "2.25.900", utcnow())
        # the third object was asked about in another transaction: this report cannot touch it
        committed, failed, studies = commitments.record_reviewer_report(
            destination, "2.25.900", ["2.25.50.0", "2.25.50.2"], [("2.25.50.1", 0x0112)])
        assert (committed, failed, studies) == (1, 1, [study.id])
        states = {d.outbound.sop_instance_uid: (d.state, d.committed_at is not None, d.commitment_uid)
                  for d in Delivery.select()}
        assert states == {"2.25.50.0": ("sent", True, "2.25.900"), "2.25.50.1": ("pending", False, None),
                          "2.25.50.2": ("sent", False, None)}
        assert commitments.record_reviewer_report(destination, "2.25.901", ["2.25.50.2"], []) == (0, 0, [])
