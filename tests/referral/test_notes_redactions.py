"""A person in the loop: phrases people remove reach the notes as [REDACTED]; a quarantined case is released
only with a new redaction, and the guard runs again on the rebuilt notes.

Through the real stages in process (SQLite, the spool, DeidStage then NotesStage). Where the guard must hit, the
scrubber is made to miss (fault injection, as in test_referral_privacy): it is told nothing but the phrases
people removed, and otherwise passes the history as written.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

import gateway.referral.notes_case as notes_case
import gateway.referral.notes_work as notes_work
from gateway.referral import redaction
from gateway.referral.document import validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.referral.scrub import KnownIdentifiers, Mark, scrub_referral
from gateway.stages.referral import NotesStage
from gateway.storage.models import AuditEvent, CaseState, NotesRedaction, Study
from privacy_cases import MENTIONS, referral_document
from test_referral_privacy import _case, _delivered_texts, _run, world  # noqa: F401 - the fixture

EMPLOYER = "Kettering Tyre Depot"
HISTORY = f"Low back pain for 10 weeks after lifting tyres at {EMPLOYER}; worse at night."


def _notes(world, case: Study) -> dict[str, str]:
    texts = _delivered_texts(world, case)
    return {kind.split(":")[0]: text for kind, text in texts.items() if kind.startswith("notes_")}


def test_the_referrers_redactions_reach_the_sr_and_the_pdf_as_redacted(world, tmp_path):
    document = referral_document(clinical={"history": HISTORY, "question": "Disc herniation?"},
                                 redactions=["Kettering Tyre Depot"])
    case = _run(world, _case(world, tmp_path, document))
    assert case.state == CaseState.NOTES_ATTACHED, case.state_reason
    notes = _notes(world, case)
    assert set(notes) == {"notes_sr", "notes_pdf"}
    for kind, text in notes.items():
        assert "[REDACTED]" in text, kind
        assert "Kettering" not in text and "Tyre Depot" not in text, kind
        assert "lifting tyres" in text, kind  # the rest of the sentence stays


def test_the_document_bounds_its_redactions():
    with pytest.raises(ReferralValidationError) as many:
        validate_referral_data(referral_document(redactions=[f"word{n}" for n in range(51)]))
    assert many.value.problems == ["redactions: must have at most 50 items"]
    with pytest.raises(ReferralValidationError) as lines:
        validate_referral_data(referral_document(redactions=["two\nlines"]))
    assert lines.value.problems == ["redactions.0: must be one line"]
    with pytest.raises(ReferralValidationError) as long:
        validate_referral_data(referral_document(redactions=["x" * 201]))
    assert long.value.problems == ["redactions.0: must be at most 200 characters"]


def _scrubber_told_only_the_redactions(monkeypatch) -> None:
    """Fault injection: the history goes as written, less only the phrases people removed."""
    def leaky(referral, known, date_offset_days, **options):
        notes = scrub_referral(referral, date_offset_days, known=KnownIdentifiers(), **options)
        history = referral.clinical.history
        for phrase in known.redactions:
            history = re.sub(re.escape(phrase), "[REDACTED]", history, flags=re.IGNORECASE)
        return replace(notes, history=history)
    monkeypatch.setattr(notes_work, "scrub_referral_notes", leaky)


def _actions(case: Study) -> list[tuple[str, str, str | None]]:
    rows = AuditEvent.select().where(AuditEvent.study_key == case.key).order_by(AuditEvent.id)
    return [(row.action, row.outcome, row.actor_host) for row in rows]


def test_an_operator_redacts_what_the_guard_found_releases_and_the_case_goes_on(world, tmp_path, monkeypatch):
    _scrubber_told_only_the_redactions(monkeypatch)
    text = f"Low back pain for 10 weeks. Lives in {MENTIONS['town']}, works for {MENTIONS['maiden name']} & Co."
    case = _run(world, _case(world, tmp_path, referral_document(clinical={"history": text})))
    assert case.state == CaseState.QUARANTINED and redaction.is_notes_leak(case)
    stage = NotesStage.of(world.config, world.spool)

    review = redaction.leak_review(stage, case)
    assert review.where.startswith("notes_sr:ContentSequence[")
    assert set(review.kinds) == {"address", "patient name"}
    hits = [s.text for f in review.fields for s in f.segments if s.kind == "hit"]
    assert MENTIONS["town"] in hits and MENTIONS["maiden name"] in hits

    with pytest.raises(redaction.RedactionRefused, match="never released as it stands"):
        redaction.release_redacted(case, "web:ops")
    assert Study.get_by_id(case.id).state == CaseState.QUARANTINED
    with pytest.raises(redaction.RedactionRefused, match="not in the notes"):
        redaction.add_operator_redaction(case, "Northampton", redaction.source_texts(stage, case), "web:ops")

    redaction.add_operator_redaction(case, MENTIONS["town"], redaction.source_texts(stage, case), "web:ops")
    assert set(redaction.leak_review(stage, case).kinds) == {"patient name"}  # the view is rebuilt with it
    assert redaction.release_redacted(case, "web:ops") == 1
    case = Study.get_by_id(case.id)
    assert case.state == CaseState.DEIDENTIFIED

    case = _run(world, case)  # the guard runs again: the maiden name is still there
    assert case.state == CaseState.QUARANTINED
    with pytest.raises(redaction.RedactionRefused, match="never released"):
        redaction.release_redacted(case, "web:ops")  # the first redaction is older than this quarantine

    redaction.add_operator_redaction(case, MENTIONS["maiden name"], redaction.source_texts(stage, case), "web:ops")
    redaction.release_redacted(case, "web:ops")
    case = _run(world, Study.get_by_id(case.id))
    assert case.state == CaseState.NOTES_ATTACHED, case.state_reason
    sr = _notes(world, case)["notes_sr"]
    assert sr.count("[REDACTED]") >= 2 and MENTIONS["town"] not in sr and MENTIONS["maiden name"] not in sr
    assert [r.phrase for r in NotesRedaction.select().where(NotesRedaction.study == case.id)] == [
        MENTIONS["town"], MENTIONS["maiden name"]]
    actions = _actions(case)
    assert ("notes_release", "refused", "web:ops") in actions
    assert actions.count(("notes_redacted", "success", "web:ops")) == 2
    assert actions.count(("notes_release", "success", "web:ops")) == 2
    assert actions[-1][0] == "notes_attached"
    for row in AuditEvent.select().where(AuditEvent.study_key == case.key):
        assert MENTIONS["town"] not in row.detail and MENTIONS["maiden name"] not in row.detail


def test_a_case_not_quarantined_for_its_notes_is_not_redacted_or_released_here(world, tmp_path):
    case = _run(world, _case(world, tmp_path, referral_document()))
    assert case.state == CaseState.NOTES_ATTACHED
    with pytest.raises(redaction.RedactionRefused, match="only notes the outbound guard quarantined"):
        redaction.add_operator_redaction(case, "pain", ["Low back pain"], "web:ops")
    with pytest.raises(redaction.RedactionRefused, match="only notes the outbound guard quarantined"):
        redaction.release_redacted(case, "web:ops")


def test_the_referrer_redacts_a_submitted_referral_until_the_notes_are_attached(world, tmp_path):
    from gateway.storage.models import Referral as ReferralRow

    case = _case(world, tmp_path, referral_document(clinical={"history": HISTORY}))
    row = ReferralRow.get()
    assert redaction.add_referrer_redaction(row, "  Kettering  Tyre Depot ", "web:stmarys") == EMPLOYER
    assert notes_case.load_document(ReferralRow.get_by_id(row.id)).redactions == [EMPLOYER]
    case = _run(world, case)
    assert case.state == CaseState.NOTES_ATTACHED
    assert "[REDACTED]" in _notes(world, case)["notes_sr"]
    with pytest.raises(redaction.RedactionRefused, match="gone on to the reviewer"):
        redaction.add_referrer_redaction(ReferralRow.get_by_id(row.id), "weeks", "web:stmarys")
    audited = AuditEvent.get(AuditEvent.action == "referrer_redaction")
    assert audited.actor_host == "web:stmarys" and "Kettering" not in audited.detail


def test_segments_mark_removed_spans_with_their_token_and_unknown_words():
    text = "Seen by Dr Quarmby re Zolgensma trial."
    marks = [Mark(8, 18, "[NAME]"), Mark(22, 31, None)]
    assert redaction.marked_segments(text, marks) == (
        redaction.Segment("Seen by "), redaction.Segment("[NAME]", "removed"), redaction.Segment(" re "),
        redaction.Segment("Zolgensma", "unknown"), redaction.Segment(" trial."))
    assert redaction.marked_segments(text, [Mark(8, 18, "[NAME]"), Mark(10, 12, None)])[1].text == "[NAME]"


def test_the_guard_view_marks_matches_by_kind_and_the_scrubbers_tokens_as_removed():
    from gateway.privacy.identifiers import IdentifierSet

    identifiers = IdentifierSet(patient_names=("Hargreaves^Eleanor",), towns=("Thrapston",))
    segments = redaction.guard_segments("[NAME] of Thrapston, seen [2024-02-03].", identifiers)
    assert segments == (redaction.Segment("[NAME]", "removed"), redaction.Segment(" of "),
                        redaction.Segment("Thrapston", "hit", "address"), redaction.Segment(", seen "),
                        redaction.Segment("[2024-02-03]", "removed"), redaction.Segment("."))
