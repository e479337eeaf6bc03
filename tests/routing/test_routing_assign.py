"""Reviewer assignment against a real database (SQLite and PostgreSQL): balance, urgency, hours, health, holds."""

from __future__ import annotations

import datetime as dt

import pytest
from structlog.testing import capture_logs

from gateway.config import ReviewerConfig, RoutingConfig
from gateway.routing.assignment import NO_REVIEWER, within_hours
from gateway.stages.assign import AssignmentStage
from gateway.storage.models import Assignment, CaseState, PeerHealth, Study, utcnow
from routing_db import make_case, open_db

ROUTING = RoutingConfig()


def _reviewer(name: str, port: int = 104, **options) -> ReviewerConfig:
    return ReviewerConfig(name=name, ae_title=name.upper().replace("-", "_"), host="127.0.0.1", port=port, **options)


def _hours_excluding(now: dt.datetime) -> str:
    """A two-hour UTC window that starts six hours after ``now``: ``now`` is outside it."""
    start = (now + dt.timedelta(hours=6)).hour
    return f"{start:02d}:00-{(start + 2) % 24:02d}:00"


@pytest.fixture
def db(database_url):
    database = open_db(database_url)
    with database.connection_context():
        yield database


def _state(study: Study) -> Study:
    return Study.get_by_id(study.id)


def test_two_reviewers_three_cases_balanced_and_every_assignment_has_a_row(db):
    stage = AssignmentStage([_reviewer("dr-a"), _reviewer("dr-b")], ROUTING)
    base = utcnow() - dt.timedelta(hours=1)
    studies = [make_case(received_at=base + dt.timedelta(minutes=i)) for i in range(3)]
    with capture_logs() as logs:
        assert stage.run_once(utcnow()) == 3
    reviewers = [_state(s).reviewer for s in studies]
    assert sorted(reviewers) in (["dr-a", "dr-a", "dr-b"], ["dr-a", "dr-b", "dr-b"])
    assert reviewers[0] != reviewers[1], "the second case goes to the reviewer with fewer open cases"
    assert all(_state(s).state == CaseState.ASSIGNED and _state(s).sla_due_at is not None for s in studies)
    rows = list(Assignment.select().order_by(Assignment.id))
    assert [r.reviewer for r in rows] == reviewers and all(r.active and r.reason for r in rows)
    assigned = [e for e in logs if e["event"] == "case_assigned"]
    assert [(e["case"], e["reviewer"]) for e in assigned] == [(s.key, r) for s, r in zip(studies, reviewers)]
    # the next case (a tie at 2-1 is not possible; 2-1 → the one with 1)
    fourth = make_case()
    stage.run_once(utcnow())
    assert _state(fourth).reviewer == ("dr-b" if reviewers.count("dr-a") == 2 else "dr-a")


def test_round_robin_is_persisted_across_stage_instances(db):
    reviewers = [_reviewer("dr-a"), _reviewer("dr-b")]
    first = make_case()
    AssignmentStage(reviewers, ROUTING).run_once(utcnow())
    Study.update(state=CaseState.REPORT_DELIVERED).where(Study.id == first.id).execute()  # load back to 0-0
    second = make_case()
    AssignmentStage(reviewers, ROUTING).run_once(utcnow())  # a new stage, as after a restart
    assert {_state(first).reviewer, _state(second).reviewer} == {"dr-a", "dr-b"}


def test_urgent_case_first_even_when_newer(db):
    stage = AssignmentStage([_reviewer("dr-a", max_open_cases=1)], ROUTING)
    routine = make_case(received_at=utcnow() - dt.timedelta(hours=3))
    urgent = make_case(urgency="urgent", received_at=utcnow())
    stage.run_once(utcnow())
    assert _state(urgent).state == CaseState.ASSIGNED and _state(urgent).reviewer == "dr-a"
    assert _state(routine).state == CaseState.HELD and _state(routine).hold_reason == NO_REVIEWER


def test_out_of_hours_reviewer_skipped_unless_urgent_and_on_call(db):
    now = utcnow()
    night = _hours_excluding(now)
    off = _reviewer("dr-off", hours=night, timezone="Asia/Tokyo")
    assert not within_hours(off, now)
    stage = AssignmentStage([off, _reviewer("dr-on", max_open_cases=1)], ROUTING)
    routine = make_case()
    stage.run_once(now)
    assert _state(routine).reviewer == "dr-on"
    urgent = make_case(urgency="urgent")  # dr-on is full: dr-off is on call for urgent cases
    stage.run_once(now)
    assert _state(urgent).reviewer == "dr-off" and "on_call_out_of_hours" in _state(urgent).assignments[0].reason
    routine2 = make_case()
    stage.run_once(now)
    assert _state(routine2).state == CaseState.HELD


def test_hours_in_a_time_zone_and_over_midnight():
    reviewer = _reviewer("dr-a", hours="08:00-18:00", timezone="Europe/London")
    assert within_hours(reviewer, dt.datetime(2026, 7, 1, 7, 30))       # 08:30 BST
    assert not within_hours(reviewer, dt.datetime(2026, 7, 1, 17, 30))  # 18:30 BST
    assert within_hours(reviewer, dt.datetime(2026, 1, 1, 17, 30))      # 17:30 GMT
    night = _reviewer("dr-n", hours="22:00-06:00")
    assert within_hours(night, dt.datetime(2026, 1, 1, 23, 0)) and within_hours(night, dt.datetime(2026, 1, 1, 5, 0))
    assert not within_hours(night, dt.datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError):
        _reviewer("dr-x", hours="8-18")
    with pytest.raises(ValueError):
        _reviewer("dr-x", timezone="Mars/Olympus")


def test_disabled_and_unhealthy_reviewers_skipped(db):
    reviewers = [_reviewer("dr-off", enabled=False), _reviewer("dr-down"), _reviewer("dr-up")]
    PeerHealth.create(name="reviewer:dr-down", ok=False, detail="no association")
    PeerHealth.create(name="reviewer:dr-up", ok=True)
    cases = [make_case() for _ in range(3)]
    AssignmentStage(reviewers, ROUTING).run_once(utcnow())
    assert {_state(c).reviewer for c in cases} == {"dr-up"}


def test_modality_and_subspecialty(db):
    reviewers = [_reviewer("dr-ct", modalities=["CT"]), _reviewer("dr-neuro", modalities=["MR", "CT"],
                                                                   subspecialties=["neuroradiology"])]
    stage = AssignmentStage(reviewers, ROUTING)
    mr = make_case(modalities=("MR", "SR"))
    ct = make_case(modalities=("CT",), subspecialty="musculoskeletal")
    stage.run_once(utcnow())
    assert _state(mr).reviewer == "dr-neuro"
    assert _state(ct).state == CaseState.HELD, "nobody lists the subspecialty asked for"


def test_no_eligible_reviewer_holds_then_assigns_when_one_is_back(db):
    PeerHealth.create(name="reviewer:dr-a", ok=False)
    stage = AssignmentStage([_reviewer("dr-a")], ROUTING)
    study = make_case()
    with capture_logs() as logs:
        assert stage.run_once(utcnow()) == 1
        assert stage.run_once(utcnow()) == 0  # still held, not moved again
    assert _state(study).state == CaseState.HELD and _state(study).hold_reason == NO_REVIEWER
    assert [e["event"] for e in logs if e["event"] == "no_reviewer"] == ["no_reviewer"]
    PeerHealth.update(ok=True).execute()
    assert stage.run_once(utcnow()) == 1
    assert _state(study).state == CaseState.ASSIGNED and _state(study).reviewer == "dr-a"


def test_a_held_case_says_why_and_the_reason_follows_the_pool(db):
    """The reason is the case's ``state_reason`` (what status, the log and the pages show), named by the rule."""
    stage = AssignmentStage([_reviewer("dr-a", modalities=["MR"])], ROUTING)
    wants = make_case(subspecialty="spine")
    reads = make_case(modalities=("CT",))
    with capture_logs() as logs:
        stage.run_once(utcnow())
    assert _state(wants).state_reason == "no reviewer with subspecialty spine is configured: 0 of 1 reviewers match"
    assert _state(reads).state_reason == "no reviewer reading CT is configured: 0 of 1 reviewers match"
    held = {e["case"]: e["reason"] for e in logs if e["event"] == "no_reviewer"}
    assert held == {wants.key: _state(wants).state_reason, reads.key: _state(reads).state_reason}


def test_a_held_case_for_want_of_a_free_reviewer_counts_each_obstacle(db):
    now = utcnow()
    PeerHealth.create(name="reviewer:dr-down", ok=False)
    make_case(CaseState.ASSIGNED, reviewer="dr-full")
    reviewers = [_reviewer("dr-full", max_open_cases=1), _reviewer("dr-down"), _reviewer("dr-off", enabled=False),
                 _reviewer("dr-day", hours=_hours_excluding(now)), _reviewer("dr-ct", modalities=["CT"])]
    stage = AssignmentStage(reviewers, ROUTING)
    study = make_case()
    with capture_logs() as logs:
        stage.run_once(now)
        stage.run_once(now)
    assert _state(study).state_reason == (
        "no reviewer free now: 0 of 5 reviewers can take it (1 at max_open_cases, 1 not answering C-ECHO, "
        "1 disabled, 1 out of working hours, 1 not reading MR)")
    assert len([e for e in logs if e["event"] == "no_reviewer"]) == 1, "logged once while the reason stands"
    with capture_logs() as logs:
        AssignmentStage([r for r in reviewers if r.name != "dr-down"], ROUTING).run_once(now)
    assert _state(study).state_reason == ("no reviewer free now: 0 of 4 reviewers can take it (1 at max_open_cases, "
                                          "1 disabled, 1 out of working hours, 1 not reading MR)"), "the new reason"
    assert [e["reason"] for e in logs if e["event"] == "no_reviewer"] == [_state(study).state_reason]


def test_status_lists_a_held_case_with_its_reason(db):
    from gateway.ops.status import needs_attention

    AssignmentStage([_reviewer("dr-a")], ROUTING).run_once(utcnow())
    study = make_case(subspecialty="spine")
    AssignmentStage([_reviewer("dr-a")], ROUTING).run_once(utcnow())
    (listed,) = [row for row in needs_attention() if row["case"] == study.key]
    assert (listed["state"], listed["reason"]) == (
        CaseState.HELD, "no reviewer with subspecialty spine is configured: 0 of 1 reviewers match")
