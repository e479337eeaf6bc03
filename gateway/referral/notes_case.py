"""The notes of one case as the database holds them: its referral document, whether a person approved the
scrubbed notes, the phrases people chose to remove, and the scrubber's view of the case's identifiers.

Shared by the notes stage (:mod:`gateway.stages.referral`), the review and redaction code of this package and
the entry points (CLI, portal), so that none of them imports the stage for these.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from gateway.privacy.identifiers import IdentifierSet
from gateway.referral.document import Referral
from gateway.referral.scrub import KnownIdentifiers, ScrubbedNotes
from gateway.storage.models import AuditEvent, NotesRedaction, Study

__all__ = ["APPROVAL_ACTION", "case_redactions", "is_approved", "known_identifiers", "load_document", "warm_up"]

log = structlog.get_logger("notes")
APPROVAL_ACTION = "notes_approved"


def load_document(referral_row: object) -> Referral:
    """The validated referral document stored in a ``models.Referral`` row."""
    return Referral.model_validate_json(referral_row.document)  # type: ignore[attr-defined]


def is_approved(study: Study, referral_row: object | None) -> bool:
    """Whether a person approved the scrubbed notes of ``study`` (``notes approve``)."""
    if referral_row is not None and getattr(referral_row, "approved_at", None) is not None:
        return True
    return AuditEvent.select().where((AuditEvent.action == APPROVAL_ACTION) & (AuditEvent.study_key == study.key)
                                     & (AuditEvent.outcome == "success")).exists()


def warm_up() -> None:
    """Load, once per process and before the first case needs them, what building and checking the notes
    loads on first use: the PDF fonts (parsed by reportlab, a few hundred milliseconds), reportlab's
    layout modules and pypdf (imported lazily by the guard's PDF text extraction). The node runs it in a
    thread at start."""
    from gateway.deid.guard import pdf_text
    from gateway.referral.document import Urgency
    from gateway.referral.notes_pdf import render_notes_pdf

    try:
        pdf_text(render_notes_pdf(ScrubbedNotes(urgency=Urgency.ROUTINE, history="Warm-up.", question="Warm-up?")))
    except Exception as exc:  # noqa: BLE001 - only a head start: the first case loads whatever is missing
        log.warning("notes_warm_up_failed", error=type(exc).__name__)


def known_identifiers(identifiers: IdentifierSet, redactions: Iterable[str] = ()) -> KnownIdentifiers:
    """The scrubber's view of the case's identifier set (one set for the scrubber and the guard), with the
    phrases people chose to remove (``redactions``: the referrer's, an operator's)."""
    return KnownIdentifiers(
        redactions=tuple(dict.fromkeys(r for r in redactions if r.strip())),
        names=identifiers.person_names,
        ids=identifiers.ids,
        birth_dates=identifiers.birth_dates,
        institutions=(*identifiers.institutions, *identifiers.sources),
        places=identifiers.places,
        organisations=(*identifiers.organisations, *identifiers.institution_places),
        phones=identifiers.phones,
        emails=identifiers.emails,
    )


def case_redactions(study: Study, document: Referral | None) -> list[str]:
    """Every phrase people chose to remove from the notes of ``study``: the referrer's (in the referral
    document) and the operators' (``NotesRedaction`` rows, after a quarantine), oldest first."""
    operators = NotesRedaction.select(NotesRedaction.phrase).where(NotesRedaction.study == study.id).order_by(
        NotesRedaction.id)
    return [*(document.redactions if document is not None else ()), *(row.phrase for row in operators)]
