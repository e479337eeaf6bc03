"""The CPU-heavy part of the notes stage, as a plain function a worker process can run with a time budget.

Scrubbing the notes (the model, the word lists, the identifier rules) and building and guarding the notes SR and
PDF take milliseconds for a referral as people write them and can take minutes for an adversarial one (20,000
characters of capitalised words, say). The notes stage (``gateway.stages.referral``) runs this in a
``gateway.budget.BudgetedWorkers`` worker: past ``referrals.time_budget_s`` the worker is killed and the case
quarantined, while the other cases go on. Everything in and out is picklable; nothing here touches the database
or the spool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from gateway.deid.guard import find_leaks
from gateway.privacy.identifiers import IdentifierSet
from gateway.referral.compose import scrub_header_notes, scrub_referral_notes
from gateway.referral.document import Referral
from gateway.referral.notes_pdf import NotesPDFBuilder
from gateway.referral.notes_sr import NotesSRBuilder
from gateway.referral.scrub import KnownIdentifiers, ScrubbedNotes


@dataclass(frozen=True)
class NotesInput:
    """What scrubbing and building one case's notes needs, read from the database by the stage (PHI)."""

    document: Referral | None
    header_notes: Mapping[str, str]
    known: KnownIdentifiers
    date_offset_days: int
    day_first: bool
    evidence: Dataset
    identifiers: IdentifierSet
    priors: str | None = None  # what the gateway says of the case's priors (gateway.routing.priors.notes_summary)


@dataclass
class NotesWork:
    """The scrubbed notes, the notes SR and PDF built from them, and the guard's first hit in them, if any:
    (object kind and attribute path, identifier kind)."""

    notes: ScrubbedNotes
    built: dict[str, Dataset] = field(default_factory=dict)
    leak: tuple[str, str] | None = None


def scrub_notes(given: NotesInput) -> ScrubbedNotes:
    """The case's notes scrubbed: from its referral, else from the DICOM header's own notes."""
    if given.document is not None:
        return scrub_referral_notes(given.document, given.known, given.date_offset_days, day_first=given.day_first)
    return scrub_header_notes(given.header_notes, given.known, given.date_offset_days)


def build_notes(given: NotesInput) -> NotesWork:
    """Scrub, build the SR and the PDF, and guard both against the case's identifiers."""
    notes = scrub_notes(given)
    if given.priors:
        notes = dataclasses.replace(notes, priors=given.priors)
    work = NotesWork(notes, {"notes_sr": NotesSRBuilder(given.evidence, notes).build(),
                             "notes_pdf": NotesPDFBuilder(given.evidence, notes).build()})
    for kind, dataset in work.built.items():
        leaks = find_leaks(dataset, given.identifiers)
        if leaks:
            work.leak = (f"{kind}:{leaks[0].path}", leaks[0].kind)
            break
    return work
