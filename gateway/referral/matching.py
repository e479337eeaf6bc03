"""Matching referrals to studies: by source and accession number, else by source, patient ID and study date.

The comparison uses the study's ORIGINAL values (``StudyIdentity``, filled by de-identification), so a
study can only be matched once it is de-identified. Either side may come first: :func:`match_referral`
runs when a referral arrives, :func:`match_study` when the notes stage looks at a study. Each claim is a
conditional UPDATE (``WHERE state = 'waiting' AND study IS NULL``) so two workers never match one
referral twice. Every match is one ``referral_matched`` event, every expiry one ``referral_expired``.
"""

from __future__ import annotations

import datetime as dt

import peewee
import structlog

from gateway.models import CaseState, Referral, Study, StudyIdentity, utcnow

__all__ = [
    "MATCHABLE_HOLD_REASONS",
    "ReferralState",
    "expire_referrals",
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


#: Hold reasons under which a study still takes a referral that arrives.
MATCHABLE_HOLD_REASONS = frozenset({"awaiting_referral", "no_referral"})


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


def _waiting_for(study: Study, identity: StudyIdentity) -> list[tuple[Referral, str]]:
    waiting = (Referral.select()
               .where((Referral.state == ReferralState.WAITING) & Referral.study.is_null()
                      & (Referral.source == study.source_id))
               .order_by(Referral.received_at.desc(), Referral.id.desc()))
    found: list[tuple[Referral, str]] = []
    if identity.accession_number.strip():
        by_accession = waiting.where(Referral.accession_number == identity.accession_number.strip())
        found += [(row, "accession_number") for row in by_accession]
    study_date = _iso_date(identity.study_date)
    if identity.patient_id.strip() and study_date is not None:
        by_patient = waiting.where((Referral.patient_id == identity.patient_id.strip())
                                   & (Referral.study_date == study_date))
        found += [(row, "patient_id_study_date") for row in by_patient]
    return found


def match_study(study: Study) -> Referral | None:
    """The referral of ``study``: the one already matched, else the newest waiting one that matches.

    Returns None when the study has no de-identification identity yet or nothing matches.
    """
    existing = matched_referral(study)
    if existing is not None:
        return existing
    identity = StudyIdentity.get_or_none(StudyIdentity.study == study.id)
    if identity is None or study.source_id is None:
        return None
    for referral, how in _waiting_for(study, identity):
        if _claim(referral, study, how):
            return referral
    return None


def _candidate_studies(referral: Referral) -> peewee.ModelSelect:
    awaiting = (Study.state == CaseState.DEIDENTIFIED) | (
        (Study.state == CaseState.HELD) & Study.hold_reason.in_(sorted(MATCHABLE_HOLD_REASONS)))
    taken = Referral.select(Referral.study).where(Referral.study.is_null(False))
    return (Study.select(Study, StudyIdentity).join(StudyIdentity, attr="original")
            .where(awaiting & (Study.source == referral.source_id) & Study.id.not_in(taken))
            .order_by(Study.first_received_at.desc()))


def match_referral(referral: Referral) -> Study | None:
    """Match a newly stored referral to a de-identified study that still waits for notes, if one exists."""
    if referral.state != ReferralState.WAITING:
        return referral.study
    candidates = list(_candidate_studies(referral))
    by_accession = [s for s in candidates if s.original.accession_number.strip() == referral.accession_number]
    by_patient = [s for s in candidates
                  if referral.study_date and s.original.patient_id.strip() == referral.patient_id
                  and _iso_date(s.original.study_date) == referral.study_date]
    for how, studies in (("accession_number", by_accession), ("patient_id_study_date", by_patient)):
        for study in studies:
            if _claim(referral, study, how):
                return study
    return None


def expire_referrals(now: dt.datetime, wait_s: float) -> int:
    """Mark referrals that waited more than ``wait_s`` seconds without a study ``expired``; return how many."""
    cutoff = now - dt.timedelta(seconds=wait_s)
    stale = list(Referral.select().where((Referral.state == ReferralState.WAITING)
                                         & (Referral.received_at < cutoff)))
    expired = 0
    for referral in stale:
        changed = (Referral.update(state=ReferralState.EXPIRED)
                   .where((Referral.id == referral.id) & (Referral.state == ReferralState.WAITING))
                   .execute())
        if changed:
            expired += 1
            log.info("referral_expired", source=referral.source.name, reason="no_study_within_wait_s")
    return expired
