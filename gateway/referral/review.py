"""The human check of the scrubbed notes: ``notes show`` (original beside scrubbed) and ``notes approve``.

The preview shows PHI (the original text) on the operator's terminal only; nothing of it is logged.
Approval is recorded on the matched referral (``approved_at``, ``approved_by``) and, for every case,
as a ``notes_approved`` audit row, which is what the notes stage checks (a case routed on its DICOM
header's notes has no referral row).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from gateway.ops import audit
from gateway.referral.compose import HEADER_NOTE_KEYWORDS
from gateway.referral.errors import ReferralError
from gateway.referral.matching import matched_referral
from gateway.referral.notes_case import APPROVAL_ACTION, is_approved, load_document
from gateway.referral.redaction import is_guard_hit
from gateway.referral.scrub import ScrubbedNotes
from gateway.storage import wakeup
from gateway.storage.models import CaseState, Study, utcnow
from gateway.storage.models import Referral as ReferralRow

if TYPE_CHECKING:  # the stage is handed in by the entry point; this library does not import it
    from gateway.stages.referral import NotesStage

__all__ = ["ApprovalRefused", "NotesPreview", "UnknownCase", "approve_notes", "preview_as_dict", "preview_notes",
           "render_preview"]

log = structlog.get_logger("notes")

_FIELDS = ("history", "symptoms", "examination", "emg", "prior_treatment", "prior_imaging", "question")
_PAIN_FIELDS = ("location", "nature", "radiation")


class UnknownCase(ReferralError):
    """No case has this key."""


class ApprovalRefused(ReferralError):
    """The notes of this case cannot be approved (the outbound guard quarantined it); the message says why and
    what to do instead."""


# The notes are approved before they leave with the study: a case past them (with a reviewer, reported) has no
# approval to give, and one would only write a misleading ``notes_approved`` to the audit trail.
NOTES_APPROVABLE_STATES = frozenset({CaseState.RECEIVING, CaseState.COMPLETE, CaseState.DEIDENTIFIED,
                                     CaseState.HELD, CaseState.QUARANTINED, CaseState.NOTES_ATTACHED})


def approval_applies(study: Study) -> bool:
    return study.state in NOTES_APPROVABLE_STATES


GUARD_HIT_NOT_APPROVED = ("A guard hit is never approved as it stands: remove what the outbound guard found and "
                          "release the case (the guard runs again), or leave it quarantined.")


@dataclass(frozen=True)
class NotesPreview:
    """What ``notes show`` prints: (field, original, scrubbed) rows, flags and urgency."""

    case: str
    state: str
    from_referral: bool
    rows: tuple[tuple[str, str, str], ...]
    flags: tuple[tuple[str, str, str], ...]  # code, provenance, scrubbed phrase
    urgency: str
    approved: bool


def _study(case: str) -> Study:
    study = Study.get_or_none(Study.key == case)
    if study is None:
        raise UnknownCase(f"no case with key {case!r}")
    return study


def _scrubbed_value(notes: ScrubbedNotes, name: str) -> str:
    if name.startswith("pain."):
        return (getattr(notes.pain, name[5:]) or "") if notes.pain is not None else ""
    return getattr(notes, name) or ""


def preview_notes(stage: NotesStage, case: str) -> NotesPreview:
    """The original and the scrubbed notes of ``case`` side by side.

    Raises:
        UnknownCase: no case has this key.
        NotesStageError: the case is not de-identified yet.
    """
    study = _study(case)
    row = matched_referral(study)
    document = load_document(row) if row is not None else None
    notes = stage.notes_for(study, document)
    if document is not None:
        clinical = document.clinical
        originals = {name: getattr(clinical, name) or "" for name in _FIELDS}
        if clinical.pain is not None:
            originals.update({f"pain.{n}": getattr(clinical.pain, n) or "" for n in _PAIN_FIELDS})
    else:
        header = stage.header_notes(study)
        originals = {field: header.get(keyword, "") for keyword, field in HEADER_NOTE_KEYWORDS.items()}
    rows = tuple((name, original, _scrubbed_value(notes, name)) for name, original in originals.items()
                 if original or _scrubbed_value(notes, name))
    if document is None and not any(r[0] == "history" for r in rows):
        rows = (("history", "", notes.history or ""), *rows)
    flags = tuple((f.code.value, "declared" if f.declared else "detected", f.phrase or "") for f in notes.flags)
    return NotesPreview(case=study.key, state=study.state, from_referral=document is not None, rows=rows,
                        flags=flags, urgency=notes.urgency.value, approved=is_approved(study, row))


def preview_as_dict(preview: NotesPreview) -> dict[str, object]:
    """The preview as ``notes show --json`` prints it: the same content as the tables, machine-readable
    (the originals are PHI, as on the terminal)."""
    return {"case": preview.case, "state": preview.state,
            "source_of_notes": "referral" if preview.from_referral else "dicom_header",
            "fields": [{"field": name, "original": original, "scrubbed": scrubbed}
                       for name, original, scrubbed in preview.rows],
            "red_flags": [{"code": code, "source": source, "phrase": phrase} for code, source, phrase in preview.flags],
            "urgency": preview.urgency, "approved": preview.approved}


def render_preview(preview: NotesPreview, console: object) -> None:
    """Print the preview as rich tables (plain text in a pipe)."""
    from rich.table import Table

    title = (f"Case {preview.case} ({preview.state}) - notes from "
             f"{'the referral' if preview.from_referral else 'the DICOM header (no referral)'}")
    table = Table(title=title, show_lines=True)
    table.add_column("field")
    table.add_column("original (PHI)")
    table.add_column("scrubbed (leaves the gateway)")
    for name, original, scrubbed in preview.rows:
        table.add_row(name, original, scrubbed)
    console.print(table)  # type: ignore[attr-defined]
    if preview.flags:
        flags = Table(title="Red flags")
        for column in ("code", "source", "phrase (scrubbed)"):
            flags.add_column(column)
        for row in preview.flags:
            flags.add_row(*row)
        console.print(flags)  # type: ignore[attr-defined]
    approved = "yes" if preview.approved else "no"
    console.print(f"urgency: {preview.urgency}; approved: {approved}")  # type: ignore[attr-defined]


def approve_notes(case: str, user: str | None = None) -> str:
    """Record that ``user`` (default: the OS user) approved the scrubbed notes of ``case``; return the user.

    Raises:
        UnknownCase: no case has this key.
        ApprovalRefused: the outbound guard quarantined the case, or the case is past its notes (with a reviewer
            or reported): audited ``notes_approved``, refused.
    """
    study = _study(case)
    who = (user or getpass.getuser())[:64]
    if not approval_applies(study):
        audit.record(APPROVAL_ACTION, actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                     detail=f"by {who}; the case is {study.state}: its notes went with the study already")
        raise ApprovalRefused(f"nothing to approve: the case is {study.state}, its notes went with the study "
                              "to the reviewer already")
    if is_guard_hit(study):
        audit.record(APPROVAL_ACTION, actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                     detail=f"by {who}; a guard hit ({(study.state_reason or '').split(' ', 1)[0]}) is not approved")
        log.warning("notes_approval_refused", case=study.key, reason="guard_hit")
        raise ApprovalRefused(GUARD_HIT_NOT_APPROVED)
    row = matched_referral(study)
    if row is not None:
        ReferralRow.update(approved_at=utcnow(), approved_by=who).where(ReferralRow.id == row.id).execute()
    audit.record(APPROVAL_ACTION, actor_ae=None, actor_host=None, study_key=study.key,
                 detail=f"approved by {who}")
    wakeup.notify(wakeup.REFERRAL)  # the notes stage looks again: a case HELD awaiting approval may go on
    log.info("notes_approved", case=study.key)
    return who
