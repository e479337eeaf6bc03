"""Priors: which earlier studies of a case's patient go with it, how one retrieved instance joins the case, and what
the notes say about them.

The priors stage (``gateway.stages.priors``) asks the source's PACS and records its choice here (``PriorStudy``);
each instance the PACS sends back becomes a stored ``Instance`` of the case itself, in a series of its own, so that
the de-identification stage makes it pseudonymous like a late instance of the case: the same patient pseudonym and
the same date shift, both derived from the source and the original Patient ID (``gateway.deid.pseudonym``), and
pseudonymous UIDs of its own. The notes stage waits (:func:`notes_wait_for_priors`) until the case's priors are
with it or given up, then lists them with their date relative to the case's study (:func:`notes_summary`), never
an original date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import peewee
import pydicom
from pydicom.errors import InvalidDicomError

from gateway.config import PriorsConfig
from gateway.dicom import status
from gateway.dicom.qr import FoundSeries, FoundStudy
from gateway.errors import SpoolError
from gateway.storage.models import (
    CaseState,
    Instance,
    InstanceState,
    PriorFetch,
    PriorFetchState,
    PriorStudy,
    Series,
    Source,
    Study,
    db,
    tuple_rows,
    utcnow,
)
from gateway.storage.spool import Spool

UNAVAILABLE_NOTE = "Priors could not be retrieved from the source's PACS"
NONE_FOUND_NOTE = "No earlier study of the patient matched the priors rules"
_CODE_STRING = re.compile(r"[^A-Z0-9_ ]")
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality"]


@dataclass(frozen=True)
class ChosenPrior:
    study_uid: str
    study_date: str
    modalities: str
    body_part: str


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _code(value: str) -> str:
    """A code string from the PACS, kept to what a CS may hold (it is printed in the notes)."""
    return _CODE_STRING.sub("", value.upper())[:16]


def choose(found: Iterable[FoundStudy], *, current_uid: str, current_date: str, rules: PriorsConfig,
           series_of: Callable[[str], list[FoundSeries]]) -> list[ChosenPrior]:
    """The priors to fetch among ``found``, the newest first, at most ``rules.max_priors``: studies other than the
    case's own, dated on or before its study and at most ``rules.max_years`` earlier, with one of
    ``rules.modalities`` and one of ``rules.body_parts`` in a series' Body Part Examined (or, when no series names
    one, in the study description). ``series_of`` asks the PACS for a study's series (only for the candidates that
    pass the dates and the study-level modalities)."""
    today = _date(current_date)
    if today is None or rules.max_priors == 0:
        return []
    earliest = today - dt.timedelta(days=round(rules.max_years * 365.25))
    wanted_modalities = {m.upper() for m in rules.modalities}
    wanted_parts = {p.upper() for p in rules.body_parts}
    dated = [(day, study) for study in found if study.study_uid != current_uid
             and (day := _date(study.study_date)) is not None and earliest <= day <= today]
    chosen: list[ChosenPrior] = []
    for _, study in sorted(dated, key=lambda item: item[0], reverse=True):
        if study.modalities and not wanted_modalities & set(study.modalities):
            continue
        prior = _matching_series(study, series_of(study.study_uid), wanted_modalities, wanted_parts)
        if prior is not None:
            chosen.append(prior)
            if len(chosen) >= rules.max_priors:
                break
    return chosen


def _matching_series(study: FoundStudy, series: list[FoundSeries], modalities: set[str],
                     parts: set[str]) -> ChosenPrior | None:
    images = [s for s in series if s.modality in modalities] or (
        [FoundSeries(m, "") for m in study.modalities if m in modalities] if not series else [])
    if not images:
        return None
    named = [s for s in images if s.body_part]
    matching = [s for s in named if s.body_part in parts]
    if not named:
        description = study.description.upper()
        if any(part in description for part in parts):
            matching = images
    if not matching:
        return None
    modality_text = "\\".join(sorted({s.modality for s in matching}))
    return ChosenPrior(study.study_uid, study.study_date, _code(modality_text.replace("\\", " ")),
                       _code(next((s.body_part for s in matching if s.body_part), "")))


def relative_interval(prior_date: str, current_date: str) -> str:
    """``prior_date`` said relative to ``current_date``: "2 years 3 months before", "5 days before", "the same
    day". Whole calendar months, then days when under a month; never a date."""
    prior, current = _date(prior_date), _date(current_date)
    if prior is None or current is None:
        return "date unknown"
    months = (current.year - prior.year) * 12 + current.month - prior.month - (1 if current.day < prior.day else 0)
    if months <= 0:
        days = (current - prior).days
        return "the same day" if days == 0 else f"{days} day{'s' * (days != 1)} before"
    years, months = divmod(months, 12)
    parts = [f"{years} year{'s' * (years != 1)}"] if years else []
    parts += [f"{months} month{'s' * (months != 1)}"] if months else []
    return " ".join(parts) + " before"


def notes_summary(study: Study, current_date: str) -> str | None:
    """What the notes say about the case's priors (None: its source has no PACS to ask, or fetching never began):
    one line per prior retrieved (modality, body part, date relative to the case's study), and a line when
    some or all could not be retrieved."""
    fetch = PriorFetch.get_or_none(PriorFetch.study == study.id)
    if fetch is None:
        return None
    priors = list(PriorStudy.select().where(PriorStudy.fetch == fetch.id).order_by(PriorStudy.study_date.desc()))
    retrieved = [p for p in priors if p.state == "retrieved" and p.instances]
    lines = [f"Prior {number}: {prior.modalities or 'unknown modality'} {prior.body_part or 'unknown body part'}, "
             f"{relative_interval(prior.study_date, current_date)} this study ({prior.instances} instances)"
             for number, prior in enumerate(retrieved, 1)]
    if fetch.state == PriorFetchState.UNAVAILABLE or len(retrieved) < len(priors):
        lines.append(UNAVAILABLE_NOTE + (" (some of them)." if retrieved else "; the case went without them."))
    elif not priors:
        lines.append(NONE_FOUND_NOTE + ".")
    return "\n".join(lines)


def notes_wait_for_priors(source_names: Iterable[str]) -> peewee.Expression:
    """The cases the notes stage leaves alone for now: those whose priors are being fetched, and the de-identified
    cases of a source with a PACS to ask whose fetching has not begun (the priors stage creates its row)."""
    unfinished = PriorFetch.select(PriorFetch.study).where(PriorFetch.state.in_(WORKING))
    with_pacs = Source.select(Source.id).where(Source.name.in_(list(source_names)))
    not_begun = (Study.state == CaseState.DEIDENTIFIED) & Study.source.in_(with_pacs) & _not_begun()
    return Study.id.in_(unfinished) | not_begun


#: The states of a fetch under way, named: ``state IN`` is served by the state's index, where ``NOT IN`` the
#: finished states read every fetch of the history.
WORKING = [PriorFetchState.QUERYING, PriorFetchState.RETRIEVING, PriorFetchState.DEIDENTIFYING]


def _not_begun() -> peewee.Expression:
    """The case has no fetch row: ``NOT EXISTS`` (an index look-up per candidate case), not ``NOT IN (every fetch's
    case)``, which PostgreSQL answers by reading every fetch of the history."""
    return ~peewee.fn.EXISTS(PriorFetch.select(PriorFetch.id).where(PriorFetch.study == Study.id))


def due_to_begin(source_names: Iterable[str], limit: int = 20) -> list[Study]:
    """De-identified cases of a source with a PACS to ask, whose priors have not been looked for yet."""
    with_pacs = Source.select(Source.id).where(Source.name.in_(list(source_names)))
    return list(Study.select().where((Study.state == CaseState.DEIDENTIFIED) & Study.source.in_(with_pacs)
                                     & _not_begun()).order_by(Study.state_changed_at).limit(limit))


def begin(study: Study, source: str, wait_s: float) -> PriorFetch | None:
    """The case's fetch row, QUERYING until ``wait_s`` from now (None: another node made it first)."""
    now = utcnow()
    try:
        with db.atomic():
            return PriorFetch.create(study=study.id, source=source, started_at=now, next_attempt_at=now,
                                     deadline_at=now + dt.timedelta(seconds=wait_s))
    except peewee.IntegrityError:
        return None


def claim(fetch: PriorFetch, holder: str, lease: dt.timedelta) -> bool:
    """Take (or renew) the priors stage's lease on ``fetch``; False when another node holds it."""
    now = utcnow()
    free = PriorFetch.claimed_until.is_null() | (PriorFetch.claimed_until < now) | (PriorFetch.claimed_by == holder)
    return PriorFetch.update(claimed_by=holder, claimed_until=now + lease).where(
        (PriorFetch.id == fetch.id) & free).execute() == 1


def release(fetch: PriorFetch, holder: str) -> None:
    PriorFetch.update(claimed_by=None, claimed_until=None).where(
        (PriorFetch.id == fetch.id) & (PriorFetch.claimed_by == holder)).execute()


def set_state(fetch: PriorFetch, state: str, **fields: object) -> bool:
    """Move ``fetch`` from the state it was read in to ``state`` (False: someone moved it first)."""
    values = {PriorFetch.state: state, **{getattr(PriorFetch, name): value for name, value in fields.items()}}
    if state in PriorFetchState.FINISHED:
        values[PriorFetch.finished_at] = utcnow()
    changed = PriorFetch.update(values).where((PriorFetch.id == fetch.id) & (PriorFetch.state == fetch.state)).execute()
    if changed:
        fetch.state = state
        for name, value in fields.items():
            setattr(fetch, name, value)
    return bool(changed)


def record_choice(fetch: PriorFetch, chosen: list[ChosenPrior]) -> None:
    """The priors chosen, and the fetch moved on (RETRIEVING, or DONE when there is none), in one transaction."""
    with db.atomic():
        for prior in chosen:
            PriorStudy.insert(fetch=fetch.id, study=fetch.study_id, study_uid=prior.study_uid,
                              study_date=prior.study_date, modalities=prior.modalities,
                              body_part=prior.body_part).on_conflict_ignore().execute()
        set_state(fetch, PriorFetchState.RETRIEVING if chosen else PriorFetchState.DONE)


def stored_instances_left(study_id: int) -> int:
    """Instances of the case still waiting for de-identification (the retrieved priors' among them)."""
    return Instance.select().where((Instance.study == study_id) & (Instance.state == InstanceState.STORED)).count()


#: Instances of a prior recorded per transaction, and the longest a kept instance waits for its row: the lease on the
#: fetch is renewed at each batch too.
PRIOR_BATCH = 64
PRIOR_BATCH_S = 2.0


@dataclass(frozen=True)
class _Kept:
    """An instance of a prior whose file is in the spool (fsynced, its name not yet synced) and whose row is not
    yet committed."""

    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    syntax: str
    size: int
    digest: str
    path: Path


class PriorInstanceStore:
    """Keeps each instance a C-GET brings, in a series of its own: its file whole and fsynced in the spool before
    the PACS is answered, its row (a stored ``Instance`` of the case) committed with the others of its batch
    (``PRIOR_BATCH`` instances or ``PRIOR_BATCH_S``: one directory sync round and one commit a batch), and every
    row committed by ``flush()``, which the stage calls before the prior counts as retrieved. Only instances of the
    prior being retrieved are kept (anything else: 0xA900).

    Durability is the gateway's own here: it pulls, and the PACS keeps every instance whatever it was answered.
    An instance answered success whose row a crash lost leaves the prior pending, so the next C-GET brings it
    again (what was recorded is skipped); a batch that fails to commit stays kept for the next (that instance is
    answered 0xA700)."""

    def __init__(self, spool: Spool, prior: PriorStudy, calling_ae: str, renew: Callable[[], object],
                 batch: int = PRIOR_BATCH, batch_s: float = PRIOR_BATCH_S) -> None:
        self.spool, self.prior, self.calling_ae, self.renew = spool, prior, calling_ae, renew
        self.batch, self.batch_s = batch, batch_s
        self.kept: list[_Kept] = []
        self._oldest = 0.0

    def __call__(self, data: bytes) -> int:
        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            uids = [str(header.get(keyword, "") or "") for keyword in _HEADER_TAGS[:4]]
            syntax = str(header.file_meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError):
            return status.CANNOT_UNDERSTAND
        if uids[0] != self.prior.study_uid or not all(uids):
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        digest = hashlib.sha256(data).hexdigest()
        path = self.spool.store(data, digest, sync_name=False)  # whole and fsynced; its name synced with the batch
        if not self.kept:
            self._oldest = time.monotonic()
        self.kept.append(_Kept(uids[1], uids[2], uids[3], str(header.get("Modality", "") or "")[:16] or None,
                               syntax, len(data), digest, path))
        if len(self.kept) >= self.batch or time.monotonic() - self._oldest >= self.batch_s:
            try:
                self.flush()
            except (peewee.DatabaseError, SpoolError):
                return status.OUT_OF_RESOURCES  # the batch stays kept: the next one or ``flush()`` tries it again
        return status.SUCCESS

    def flush(self) -> None:
        """Make the kept instances' names durable and commit their rows, in one transaction.

        Raises:
            peewee.DatabaseError: the commit failed (the instances stay kept).
            SpoolError: the spool's directories could not be synced (likewise).
        """
        if not self.kept:
            return
        self.spool.sync_names(kept.path for kept in self.kept)
        with db.connection_context():
            self.renew()
            self._record(self.kept)
        self.kept = []

    def _record(self, kept: list[_Kept]) -> None:
        case_id = self.prior.study_id
        uids = sorted({item.sop_instance_uid for item in kept})
        with db.atomic():
            known = set(tuple_rows(Instance.select(Instance.sop_instance_uid, Instance.sha256)
                                   .where(Instance.sop_instance_uid.in_(uids))))
            versions = dict(tuple_rows(Instance.select(Instance.sop_instance_uid, peewee.fn.MAX(Instance.version))
                                       .where(Instance.sop_instance_uid.in_(uids))
                                       .group_by(Instance.sop_instance_uid)))
            series_ids: dict[str, int] = {}
            rows = []
            for item in kept:
                if (item.sop_instance_uid, item.digest) in known:
                    continue  # fetched again after a restart (or twice in one retrieval): already kept
                known.add((item.sop_instance_uid, item.digest))
                if item.series_uid not in series_ids:
                    series = Series.get_or_none(Series.series_uid == item.series_uid) or Series.create(
                        study=case_id, series_uid=item.series_uid, modality=item.modality)
                    series_ids[item.series_uid] = series.id
                versions[item.sop_instance_uid] = (versions.get(item.sop_instance_uid) or 0) + 1
                rows.append({"study": case_id, "series": series_ids[item.series_uid],
                             "sop_instance_uid": item.sop_instance_uid, "sop_class_uid": item.sop_class_uid,
                             "transfer_syntax": item.syntax, "version": versions[item.sop_instance_uid],
                             "size": item.size, "sha256": item.digest, "spool_path": self.spool.relative(item.path),
                             "calling_ae": self.calling_ae[:16], "state": InstanceState.STORED, "node": None})
            if rows:
                Instance.insert_many(rows).execute()
                PriorStudy.update(instances=PriorStudy.instances + len(rows)).where(
                    PriorStudy.id == self.prior.id).execute()
