"""A person in the loop for the notes' privacy: what they are shown, and the phrases they remove.

Two people look at the notes before a reviewer does:

- the **referrer**, on the portal, before sending and until the case's notes are attached: the notes scrubbed
  exactly as the notes stage will scrub them, with what was removed marked and every word the scrubber kept
  but does not know highlighted. The phrases the referrer picks travel in the referral document
  (``Referral.redactions``);
- an **operator**, for a case the outbound guard quarantined (``notes_leak``): the scrubbed notes with the
  guard's matches highlighted. The phrases the operator picks are ``NotesRedaction`` rows of the case; the
  release sends the case back to the notes stage, which rebuilds the notes with them and guards them again.
  A guard hit is never approved as it stands: a release without a new redaction is refused.

Both kinds of phrase reach the scrubber as ``KnownIdentifiers.redactions`` (``stage.case_redactions``) and
become ``[REDACTED]`` wherever they stand. Audit rows name the actor and count characters, never the phrase.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.ops import audit
from gateway.privacy.identifiers import IdentifierSet
from gateway.privacy.text import fold
from gateway.referral.document import MAX_REDACTION_LENGTH, MAX_REDACTIONS, Referral, validate_referral_data
from gateway.referral.errors import ReferralError, ReferralValidationError
from gateway.referral.notes_case import known_identifiers, load_document
from gateway.referral.scrub import REDACTED, KnownIdentifiers, Mark, ScrubbedNotes, TextScrubber
from gateway.storage import cases
from gateway.storage.models import CaseState, NotesRedaction, Study, db, utcnow
from gateway.storage.models import Referral as ReferralRow

__all__ = [
    "BEFORE_NOTES",
    "NotesField",
    "RedactionRefused",
    "Segment",
    "add_operator_redaction",
    "add_referrer_redaction",
    "check_phrase",
    "guard_segments",
    "identifier_spans",
    "is_guard_hit",
    "is_notes_leak",
    "marked_segments",
    "notes_fields",
    "referral_texts",
    "release_redacted",
]

#: A case in these states has no notes attached yet: the referrer may still redact.
BEFORE_NOTES = (CaseState.RECEIVING, CaseState.COMPLETE, CaseState.DEIDENTIFIED, CaseState.HELD)
NOTES_LEAK = "notes_leak"
#: The first word of the reason of a quarantine by the outbound guard: in the notes or in the images.
GUARD_HIT_REASONS = (NOTES_LEAK, "identifier_leak")
_LABELS = {"history": "History", "symptoms": "Symptoms", "pain.location": "Pain: location",
           "pain.nature": "Pain: nature", "pain.radiation": "Pain: radiation", "examination": "Examination",
           "emg": "EMG / nerve conduction", "prior_treatment": "Prior treatment", "prior_imaging": "Prior imaging",
           "question": "The question for the reviewer", "subspecialty": "Subspecialty"}


class RedactionRefused(ReferralError):
    """A redaction or a release a person asked for cannot be done; the message says why, for the page."""


@dataclass(frozen=True)
class Segment:
    """A piece of a notes text as a reviewing person sees it.

    ``kind``: ``text`` (kept, known), ``removed`` (``text`` is the token that replaces it, e.g. ``[NAME]``),
    ``unknown`` (kept, but the scrubber does not know the word) or ``hit`` (the outbound guard matches it;
    ``note`` names the identifier kind).
    """

    text: str
    kind: str = "text"
    note: str = ""


@dataclass(frozen=True)
class NotesField:
    """One free-text field of the notes, in segments."""

    label: str
    segments: tuple[Segment, ...]

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(s.note for s in self.segments if s.kind == "hit"))


# --- what is shown -------------------------------------------------------------------------------------------


def referral_texts(document: Referral) -> list[tuple[str, str]]:
    """(label, text) of every free-text field of the referral's notes, in the order the notes show them."""
    clinical, pain = document.clinical, document.clinical.pain
    values = {"history": clinical.history, "symptoms": clinical.symptoms,
              "pain.location": pain.location if pain else None, "pain.nature": pain.nature if pain else None,
              "pain.radiation": pain.radiation if pain else None, "examination": clinical.examination,
              "emg": clinical.emg, "prior_treatment": clinical.prior_treatment,
              "prior_imaging": clinical.prior_imaging, "question": clinical.question,
              "subspecialty": document.subspecialty}
    return [(_LABELS[name], text) for name, text in values.items() if text]


def scrubbed_texts(notes: ScrubbedNotes, reason: str = "") -> list[tuple[str, str]]:
    """(label, text) of every free-text value the notes objects (and the images' reason) will carry."""
    values = {"history": notes.history, "symptoms": notes.symptoms,
              "pain.location": notes.pain.location if notes.pain else None,
              "pain.nature": notes.pain.nature if notes.pain else None,
              "pain.radiation": notes.pain.radiation if notes.pain else None, "examination": notes.examination,
              "emg": notes.emg, "prior_treatment": notes.prior_treatment, "prior_imaging": notes.prior_imaging,
              "question": notes.question, "subspecialty": notes.subspecialty}
    texts = [(_LABELS[name], text) for name, text in values.items() if text]
    texts += [(f"Red flag: {flag.code.value.replace('_', ' ')}", flag.phrase) for flag in notes.flags if flag.phrase]
    if reason:
        texts.append(("Reason for the requested procedure (every image)", reason))
    return texts


def marked_segments(text: str, marks: Iterable[Mark]) -> tuple[Segment, ...]:
    """``text`` cut at the scrubber's marks: removed spans become their token, unknown kept words are flagged.
    Overlapping marks (none are expected) keep the first."""
    segments: list[Segment] = []
    cursor = 0
    for mark in sorted(marks, key=lambda m: (m.start, m.end)):
        if mark.start < cursor or mark.end <= mark.start:
            continue
        if mark.start > cursor:
            segments.append(Segment(text[cursor:mark.start]))
        if mark.token is None:
            segments.append(Segment(text[mark.start:mark.end], "unknown"))
        else:
            segments.append(Segment(mark.token, "removed"))
        cursor = mark.end
    if cursor < len(text):
        segments.append(Segment(text[cursor:]))
    return tuple(segments)


def notes_fields(document: Referral, identifiers: IdentifierSet, date_offset_days: int, *, day_first: bool,
                 redactions: Sequence[str] = ()) -> list[NotesField]:
    """The referral's notes as the reviewer will read them, field by field, with the scrubber's marks.

    The scrubber is the notes stage's (``known_identifiers`` of the same identifier set, the same date order),
    so what is shown is what goes, given the same date offset."""
    scrubber = TextScrubber(known_identifiers(identifiers, redactions), date_offset_days, day_first=day_first)
    return [NotesField(label, marked_segments(text, scrubber.marks(text)))
            for label, text in referral_texts(document)]


def _char_folds(text: str) -> tuple[str, list[int]]:
    """``text`` folded character by character (as :func:`gateway.privacy.text.fold`), with each folded
    character's position in ``text``: the guard's patterns run on folded text, the page marks the original."""
    pieces, origin = [], []
    for position, char in enumerate(text):
        folded = fold(char)
        pieces.append(folded)
        origin += [position] * len(folded)
    return "".join(pieces), origin


def _raw_folds(text: str) -> tuple[str, list[int]]:
    pieces, origin = [], []
    for position, char in enumerate(text):
        normal = unicodedata.normalize("NFKC", char)
        pieces.append(normal)
        origin += [position] * len(normal)
    return "".join(pieces), origin


def identifier_spans(identifiers: IdentifierSet, text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) in ``text`` of every match of the outbound guard's patterns (the case's identifier
    set), in order; overlapping matches keep the first and longest."""
    folded, raw = _char_folds(text), _raw_folds(text)
    found = []
    for term in identifiers.search_terms():
        view, origin = folded if term.folded else raw
        for match in term.pattern.finditer(view):
            if match.end() > match.start():
                found.append((origin[match.start()], origin[match.end() - 1] + 1, term.kind))
    spans: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(found, key=lambda s: (s[0], -s[1])):
        if not spans or start >= spans[-1][1]:
            spans.append((start, end, kind))
    return spans


_SCRUBBER_TOKEN = re.compile(r"\[(?:[A-Z]+|\d{4}-\d{2}-\d{2})\]")


def _plain(text: str) -> list[Segment]:
    """Scrubbed text: the scrubber's own tokens ([NAME], [REDACTED], a shifted date) as ``removed`` chips."""
    segments, cursor = [], 0
    for match in _SCRUBBER_TOKEN.finditer(text):
        if match.start() > cursor:
            segments.append(Segment(text[cursor:match.start()]))
        segments.append(Segment(match.group(), "removed"))
        cursor = match.end()
    if cursor < len(text):
        segments.append(Segment(text[cursor:]))
    return segments


def guard_segments(text: str, identifiers: IdentifierSet) -> tuple[Segment, ...]:
    """Scrubbed ``text`` with the outbound guard's matches as ``hit`` segments naming the identifier kind."""
    segments: list[Segment] = []
    cursor = 0
    for start, end, kind in identifier_spans(identifiers, text):
        segments += _plain(text[cursor:start])
        segments.append(Segment(text[start:end], "hit", kind))
        cursor = end
    segments += _plain(text[cursor:])
    return tuple(segments)


# --- phrases people remove -----------------------------------------------------------------------------------


def check_phrase(phrase: str, texts: Iterable[str]) -> str:
    """The phrase, cleaned, if the scrubber would remove it from one of ``texts``.

    Raises:
        RedactionRefused: empty, longer than a line allows, several lines, or found in none of the texts
            (a phrase that would change nothing is a mistake the person should see, e.g. a selection that
            took in a ``[NAME]`` token).
    """
    cleaned = re.sub(r"[ \t]+", " ", (phrase or "").strip())
    if not cleaned:
        raise RedactionRefused("Type or select the words to remove.")
    if "\n" in cleaned or "\r" in cleaned:
        raise RedactionRefused("Remove one line at a time.")
    if len(cleaned) > MAX_REDACTION_LENGTH:
        raise RedactionRefused(f"At most {MAX_REDACTION_LENGTH} characters at a time.")
    scrubber = TextScrubber(KnownIdentifiers(redactions=(cleaned,)), 0)
    if not any(token == REDACTED for text in texts for _, _, token in scrubber.spans(text)):
        raise RedactionRefused("These words are not in the notes as written (a selection cannot take in a "
                               "removed part such as [NAME]).")
    return cleaned


def add_referrer_redaction(row: ReferralRow, phrase: str, actor: str) -> str:
    """Add ``phrase`` to the redactions of a submitted referral, while its case has no notes attached yet.

    Raises:
        RedactionRefused: the notes are attached already, the phrase is not in the notes, or there are too many.
    """
    with db.atomic():
        row = ReferralRow.get_by_id(row.id)
        study = Study.get_or_none(Study.id == row.study_id) if row.study_id else None
        if study is not None and study.state not in BEFORE_NOTES:
            raise RedactionRefused("The notes have gone on to the reviewer's queue: ask the operators to help.")
        document = load_document(row)
        cleaned = check_phrase(phrase, [text for _, text in referral_texts(document)])
        if cleaned in document.redactions:
            return cleaned
        data = document.model_dump(mode="json")
        data["redactions"] = [*document.redactions, cleaned]
        try:
            updated = validate_referral_data(data)
        except ReferralValidationError:
            raise RedactionRefused(f"At most {MAX_REDACTIONS} phrases can be removed.") from None
        row.document = updated.model_dump_json()
        row.save()
        audit.record("referrer_redaction", actor_ae=None, actor_host=actor[:64],
                     study_key=study.key if study is not None else None,
                     detail=f"referral {row.id}; {len(cleaned)} characters; {len(updated.redactions)} in all")
    return cleaned


def is_notes_leak(study: Study) -> bool:
    """Whether the outbound guard quarantined ``study``'s notes (or what the notes put in the images)."""
    return study.state == CaseState.QUARANTINED and (study.state_reason or "").startswith(NOTES_LEAK)


def is_guard_hit(study: Study) -> bool:
    """Whether the outbound guard quarantined ``study``: an identifier in the notes (``notes_leak``) or in the
    images (``identifier_leak``). Such a case goes on only through a release that runs the guard again."""
    reason = (study.state_reason or "").split(" ", 1)[0]
    return study.state == CaseState.QUARANTINED and reason in GUARD_HIT_REASONS


def add_operator_redaction(study: Study, phrase: str, source_texts: Iterable[str], actor: str) -> NotesRedaction:
    """Record an operator's redaction for a notes-leak case (``source_texts``: the notes as written, before
    scrubbing, which is what the scrubber removes the phrase from).

    Raises:
        RedactionRefused: the case is not quarantined for a notes leak, or the phrase is not in the notes.
    """
    if not is_notes_leak(study):
        raise RedactionRefused(f"The case is {study.state}; only notes the outbound guard quarantined are "
                               "redacted here.")
    cleaned = check_phrase(phrase, source_texts)
    row = NotesRedaction.create(study=study.id, phrase=cleaned, actor=actor[:64], created_at=utcnow())
    audit.record("notes_redacted", actor_ae=None, actor_host=actor[:64], study_key=study.key,
                 detail=f"by {actor}; {len(cleaned)} characters")
    return row


def new_redactions(study: Study) -> int:
    """How many redactions of ``study`` were made since it entered its current state (the quarantine)."""
    return NotesRedaction.select().where((NotesRedaction.study == study.id)
                                         & (NotesRedaction.created_at >= study.state_changed_at)).count()


def release_redacted(study: Study, actor: str) -> int:
    """Send a notes-leak case back to the notes stage (QUARANTINED → DEIDENTIFIED), which rebuilds the notes
    with every redaction and guards them again (a hit quarantines the case again). Returns how many new
    redactions go with it.

    Raises:
        RedactionRefused: not a notes-leak case, no redaction since the quarantine (a guard hit is never
            approved as it stands), or the case moved meanwhile.
    """
    if not is_notes_leak(study):
        raise RedactionRefused(f"The case is {study.state}; only notes the outbound guard quarantined are "
                               "released here.")
    count = new_redactions(study)
    if count == 0:
        audit.record("notes_release", actor_ae=None, actor_host=actor[:64], study_key=study.key, outcome="refused",
                     detail=f"by {actor}; no redaction since the quarantine")
        raise RedactionRefused("Nothing was redacted since the guard stopped the case: remove what it found "
                               "first. A guard hit is never released as it stands.")
    if not cases.move(study, CaseState.DEIDENTIFIED, reason="released_redacted"):
        raise RedactionRefused("The case changed state meanwhile; reload the page.")
    audit.record("notes_release", actor_ae=None, actor_host=actor[:64], study_key=study.key,
                 detail=f"by {actor}; notes rebuilt with {count} new redaction(s)")
    return count


# --- the operator's review of a quarantined case --------------------------------------------------------------


@dataclass(frozen=True)
class LeakReview:
    """What the operator sees of a notes-leak case: where the guard hit (attribute path), the scrubbed notes
    with the guard's matches, the kinds found in them, and the redactions so far (phrase, by whom, when)."""

    where: str
    fields: tuple[NotesField, ...]
    redactions: tuple[NotesRedaction, ...]
    new_redactions: int

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(kind for f in self.fields for kind in f.kinds))


def guard_hit_path(study: Study) -> str:
    """The full "<object>:<attribute path>" of the last quarantine of ``study`` (its audit row; the state
    reason is cut at 64 characters)."""
    from gateway.storage.models import AuditEvent

    last = (AuditEvent.select().where((AuditEvent.study_key == study.key) & (AuditEvent.action == "quarantined"))
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).first())
    prefix = "outbound guard hit in "
    if last is not None and last.detail.startswith(prefix):
        return last.detail[len(prefix):]
    return (study.state_reason or "")[len(NOTES_LEAK):].strip()


def source_texts(stage: object, study: Study) -> list[str]:
    """The notes of ``study`` as written (PHI): the matched referral's free text, else the DICOM header's."""
    row = ReferralRow.get_or_none(ReferralRow.study == study.id)
    if row is not None:
        return [text for _, text in referral_texts(load_document(row))]
    return [text for text in stage.header_notes(study).values() if text]  # type: ignore[attr-defined]


def leak_review(stage: object, study: Study) -> LeakReview:
    """Rebuild the case's scrubbed notes as the notes stage would now (with every redaction so far) and mark
    what the outbound guard matches in them. ``stage`` is a ``NotesStage``."""
    from gateway.referral.reason import short_reason

    row = ReferralRow.get_or_none(ReferralRow.study == study.id)
    document = load_document(row) if row is not None else None
    identifiers = stage.identifiers_for(study, document)  # type: ignore[attr-defined]
    notes = stage.notes_for(study, document, identifiers)  # type: ignore[attr-defined]
    fields = tuple(NotesField(label, guard_segments(text, identifiers))
                   for label, text in scrubbed_texts(notes, short_reason(notes)))
    redactions = tuple(NotesRedaction.select().where(NotesRedaction.study == study.id).order_by(NotesRedaction.id))
    return LeakReview(guard_hit_path(study), fields, redactions, new_redactions(study))
