"""Matching referrals to studies: by source and accession number, else by source, patient ID and study date.

The comparison uses the study's ORIGINAL values: ``StudyMatchKeys``, which the receiving side writes with the
study row from its first instance, else ``StudyIdentity`` (filled by de-identification; a study received
before migration 7 has only that). So a study is matched from the moment it arrives, whichever side comes
first: :func:`match_arrived_study` runs when the study's row is committed, :func:`match_referral` when a
referral arrives, and :func:`match_study` again at each stage until the notes are attached (completion,
notes). Each claim is a conditional UPDATE (``WHERE state = 'waiting' AND study IS NULL``) so two workers
never match one referral twice. Every match is one ``referral_matched`` event, every expiry one
``referral_expired``; a referral never expires while a study of its source with its accession number is in
the node and could still take it (:func:`expire_referrals`).
"""

from __future__ import annotations

import datetime as dt

import peewee
import structlog

from gateway.storage.models import CaseState, Referral, Study, StudyIdentity, StudyMatchKeys, tuple_rows, utcnow

__all__ = [
    "BEFORE_NOTES",
    "MATCHABLE_HOLD_REASONS",
    "ReferralState",
    "expire_referrals",
    "match_arrived_study",
    "match_referral",
    "match_study",
    "matched_referral",
]

log = structlog.get_logger("referral")


class ReferralState:
    """States of a ``models.Referral`` row."""

    WAITING = "waiting"
    MATCHED = "matched"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # by its referrer before its images arrived (or replaced by a correction)


#: Hold reasons under which a study still takes a referral that arrives.
MATCHABLE_HOLD_REASONS = frozenset({"awaiting_referral", "no_referral"})
#: States of a study whose notes are not attached yet: it takes a referral that arrives (HELD only for the
#: reasons above).
MATCHABLE_STATES = (CaseState.RECEIVING, CaseState.COMPLETE, CaseState.DEIDENTIFIED)
#: States in which a study is "in the node" before its notes: a waiting referral with its accession number is
#: kept (a quarantined or not-spine case may be released and go through the notes stage after all).
BEFORE_NOTES = (*MATCHABLE_STATES, CaseState.HELD, CaseState.QUARANTINED, CaseState.REJECTED_NOT_SPINE)


class _Keys:
    """A study's original accession number, patient ID and study date (PHI; never logged)."""

    __slots__ = ("accession_number", "patient_id", "study_date")

    def __init__(self, accession_number: str, patient_id: str, study_date: str) -> None:
        self.accession_number = accession_number.strip()
        self.patient_id = patient_id.strip()
        self.study_date = study_date.strip()


def _keys_of(study_id: int) -> _Keys | None:
    """The study's match keys: from its arrival, else from its de-identification identity (None: neither)."""
    accession = patient_id = study_date = ""
    for model in (StudyMatchKeys, StudyIdentity):  # a key left empty on arrival (not ASCII) from the identity
        row = model.get_or_none(model.study == study_id)
        if row is not None:
            accession = accession or row.accession_number.strip()
            patient_id = patient_id or row.patient_id.strip()
            study_date = study_date or (row.study_date or "").strip()
    return _Keys(accession, patient_id, study_date) if accession or patient_id else None


def _iso_date(dicom_date: str) -> str | None:
    """``YYYYMMDD`` → ``YYYY-MM-DD`` (the form referral rows store), None when not a date."""
    try:
        return dt.datetime.strptime(dicom_date.strip(), "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def _claim(referral: Referral, study: Study, how: str) -> bool:
    now = utcnow()
    try:
        changed = (Referral.update(state=ReferralState.MATCHED, study=study.id, matched_at=now)
                   .where((Referral.id == referral.id) & (Referral.state == ReferralState.WAITING)
                          & Referral.study.is_null())
                   .execute())
    except peewee.IntegrityError:  # the study took another referral in the meantime
        return False
    if not changed:
        return False
    referral.state, referral.study, referral.matched_at = ReferralState.MATCHED, study, now
    log.info("referral_matched", case=study.key, source=referral.source.name, reason=how)
    return True


def matched_referral(study: Study) -> Referral | None:
    """The referral already matched to ``study``, if any."""
    return Referral.get_or_none(Referral.study == study.id)


def _waiting_for(study: Study, identity: _Keys) -> list[tuple[Referral, str]]:
    waiting = (Referral.select()
               .where((Referral.state == ReferralState.WAITING) & Referral.study.is_null()
                      & (Referral.source == study.source_id))
               .order_by(Referral.received_at.desc(), Referral.id.desc()))
    found: list[tuple[Referral, str]] = []
    if identity.accession_number:
        by_accession = waiting.where(Referral.accession_number == identity.accession_number)
        found += [(row, "accession_number") for row in by_accession]
    study_date = _iso_date(identity.study_date)
    if identity.patient_id and study_date is not None:
        by_patient = waiting.where((Referral.patient_id == identity.patient_id)
                                   & (Referral.study_date == study_date))
        found += [(row, "patient_id_study_date") for row in by_patient]
    return found


def match_study(study: Study) -> Referral | None:
    """The referral of ``study``: the one already matched, else the newest waiting one that matches.

    Returns None when the study has no match keys (neither from its arrival nor from de-identification) or
    nothing matches.
    """
    existing = matched_referral(study)
    if existing is not None:
        return existing
    identity = _keys_of(study.id)
    if identity is None or study.source_id is None:
        return None
    for referral, how in _waiting_for(study, identity):
        if _claim(referral, study, how):
            return referral
    return None


def match_arrived_study(study_id: int) -> Referral | None:
    """The receiving side's call once a new study's row (and its ``StudyMatchKeys``) is committed: claim the
    newest waiting referral of its source that matches, if any."""
    study = Study.get_or_none(Study.id == study_id)
    return None if study is None else match_study(study)


def _candidate_studies(referral: Referral) -> list[tuple[Study, _Keys]]:
    """The studies of the referral's source that have no referral and still wait for notes, newest first,
    each with its match keys."""
    awaiting = Study.state.in_(MATCHABLE_STATES) | (
        (Study.state == CaseState.HELD) & Study.hold_reason.in_(sorted(MATCHABLE_HOLD_REASONS)))
    taken = Referral.select(Referral.study).where(Referral.study.is_null(False))
    studies = (Study.select().where(awaiting & (Study.source == referral.source_id) & Study.id.not_in(taken))
               .order_by(Study.first_received_at.desc()))
    with_keys = ((study, _keys_of(study.id)) for study in studies)
    return [(study, keys) for study, keys in with_keys if keys is not None]


def match_referral(referral: Referral) -> Study | None:
    """Match a newly stored referral to a study that still waits for notes (received, complete, de-identified
    or held for want of a referral), if one exists."""
    if referral.state != ReferralState.WAITING:
        return referral.study
    candidates = _candidate_studies(referral)
    by_accession = [s for s, keys in candidates if keys.accession_number == referral.accession_number]
    by_patient = [s for s, keys in candidates
                  if referral.study_date and keys.patient_id == referral.patient_id
                  and _iso_date(keys.study_date) == referral.study_date]
    for how, studies in (("accession_number", by_accession), ("patient_id_study_date", by_patient)):
        for study in studies:
            if _claim(referral, study, how):
                return study
    return None


def _accessions_in_node(source_ids: set[int]) -> set[tuple[int, str]]:
    """(source id, accession number) of every study of ``source_ids`` that is in the node before its notes
    (``BEFORE_NOTES``) and has no referral yet: a waiting referral with one of them may still be matched."""
    taken = Referral.select(Referral.study).where(Referral.study.is_null(False))
    in_node = Study.state.in_(BEFORE_NOTES) & Study.source.in_(sorted(source_ids)) & Study.id.not_in(taken)
    found: set[tuple[int, str]] = set()
    for model in (StudyMatchKeys, StudyIdentity):
        pairs = tuple_rows(model.select(Study.source, model.accession_number).join(Study).where(in_node))
        found |= {(source_id, accession.strip()) for source_id, accession in pairs if accession.strip()}
    return found


def expire_referrals(now: dt.datetime, wait_s: float) -> int:
    """Mark referrals that waited more than ``wait_s`` seconds without a study ``expired``; return how many.

    A referral whose accession number a study of its source in the node still carries (``BEFORE_NOTES``, no
    referral of its own) is never expired: that study is on its way to the notes stage, which matches it.
    """
    cutoff = now - dt.timedelta(seconds=wait_s)
    stale = list(Referral.select().where((Referral.state == ReferralState.WAITING)
                                         & (Referral.received_at < cutoff)))
    in_node = _accessions_in_node({referral.source_id for referral in stale}) if stale else set()
    expired = 0
    for referral in stale:
        if (referral.source_id, referral.accession_number) in in_node:
            continue
        changed = (Referral.update(state=ReferralState.EXPIRED)
                   .where((Referral.id == referral.id) & (Referral.state == ReferralState.WAITING))
                   .execute())
        if changed:
            expired += 1
            log.info("referral_expired", source=referral.source.name, reason="no_study_within_wait_s")
    return expired
