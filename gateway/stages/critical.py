"""Critical results: the notices of a report its reviewer flagged critical, and their escalation.

A flag (:func:`flag_critical`, from the reviewer's portal or ``report create --critical``) writes one
``CriticalResult`` and a pending ``CriticalNotice`` per address of the case's source (``critical_emails``,
``critical_webhooks``). Each run of this stage:

- escalates every critical result the referrer has not acknowledged ``critical.escalate_after_s`` after its
  flag: notices to ``critical.ops_emails`` and ``ops_webhooks``, ``escalated_at`` set, logged
  (``critical_unacknowledged``) and audited;
- sends every due notice: an e-mail through ``critical.smtp_host`` or a JSON POST to the webhook. One that does
  not get through is tried again after a back-off (doubling from ``initial_s`` to ``max_s``, jittered), each
  failed attempt logged at warning; after ``max_attempts`` it is ``failed``. Each outcome is audited.

A notice carries no PHI: the source's name, the time of the flag and a link to the portal (the referral's page,
or the operators' case page for an escalation). Whom to call is shown only in the portal, to the referrer.
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.message import EmailMessage

import structlog

from gateway.backoff import Backoff
from gateway.config import CriticalConfig, SourceConfig
from gateway.ops import audit
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage.models import CriticalNotice, CriticalResult, Referral, Source, Study, db, utcnow

log = structlog.get_logger("critical")

PENDING, SENT, FAILED = "pending", "sent", "failed"
CLAIM_MARGIN_S = 60.0


class NoticeFailed(Exception):
    """A notice did not get through (the gateway's own words, never the peer's answer)."""


def flag_critical(study: Study, contact: str, flagged_by: str,
                  sources: Sequence[SourceConfig]) -> CriticalResult | None:
    """Record a critical result of ``study`` and queue its notices to the addresses its source has in
    ``sources`` (the configuration's); None when it was flagged already."""
    source_row = Source.get_or_none(Source.id == study.source_id) if study.source_id else None
    source = next((s for s in sources if source_row is not None and s.name == source_row.name), None)
    with db.atomic():
        if CriticalResult.get_or_none(CriticalResult.study == study) is not None:
            return None
        critical = CriticalResult.create(study=study, contact=contact[:200], flagged_by=flagged_by)
        targets = ([("email", t) for t in source.critical_emails] + [("webhook", t) for t in source.critical_webhooks]
                   if source is not None else [])
        for channel, target in targets:
            CriticalNotice.create(critical=critical, channel=channel, target=target)
    log.warning("critical_result", case=study.key, source=source.name if source else None, count=len(targets))
    audit.record("critical_result_flagged", actor_ae=None, actor_host=None, study_key=study.key,
                 detail=f"by {flagged_by}; {len(targets)} notice(s) to send")
    return critical


def portal_link(config: CriticalConfig, critical: CriticalResult, escalation: bool) -> str:
    study = Study.get_by_id(critical.study_id)
    if escalation:
        return f"{config.portal_url.rstrip('/')}/ops/cases/{study.key}"
    referral = Referral.get_or_none(Referral.study == study)
    path = f"/referrer/referrals/{referral.id}" if referral is not None else "/referrer"
    return config.portal_url.rstrip("/") + path


class CriticalNoticeStage(WithNodeContext):
    """Notices of critical results, and their escalation. See the module docstring."""

    name = "critical"

    def __init__(self, critical: CriticalConfig, *, context: NodeContext | None = None) -> None:
        self._context = context
        self.critical = critical
        self.backoff = Backoff(critical.initial_s, critical.max_s, jitter=True)

    def run_once(self, now: dt.datetime) -> int:
        done = self.escalate(now)
        for notice in self.due(now):
            if self._claim(notice, now):
                done += self._attempt(notice, now)
        return done

    def escalate(self, now: dt.datetime) -> int:
        """Unacknowledged past ``escalate_after_s``: the operators' notices, once."""
        cutoff = now - dt.timedelta(seconds=self.critical.escalate_after_s)
        waiting = CriticalResult.select().where(CriticalResult.acknowledged_at.is_null()
                                                & CriticalResult.escalated_at.is_null()
                                                & (CriticalResult.flagged_at <= cutoff))
        count = 0
        for critical in waiting:
            with db.atomic():
                if not CriticalResult.update(escalated_at=now).where(
                        (CriticalResult.id == critical.id) & CriticalResult.escalated_at.is_null()).execute():
                    continue
                targets = ([("email", t) for t in self.critical.ops_emails]
                           + [("webhook", t) for t in self.critical.ops_webhooks])
                for channel, target in targets:
                    CriticalNotice.create(critical=critical, channel=channel, target=target, escalation=True)
            study = Study.get_by_id(critical.study_id)
            log.error("critical_unacknowledged", case=study.key, count=len(targets))
            audit.record("critical_result_escalated", actor_ae=None, actor_host=None, study_key=study.key,
                         detail=f"not acknowledged; {len(targets)} notice(s) to the operators")
            count += 1
        return count

    @staticmethod
    def due(now: dt.datetime) -> list[CriticalNotice]:
        return list(CriticalNotice.select().where((CriticalNotice.state == PENDING)
                                                  & (CriticalNotice.next_attempt_at <= now))
                    .order_by(CriticalNotice.next_attempt_at, CriticalNotice.id))

    def _claim(self, notice: CriticalNotice, now: dt.datetime) -> bool:
        hold = dt.timedelta(seconds=self.critical.timeout_s + CLAIM_MARGIN_S)
        return bool(CriticalNotice.update(next_attempt_at=now + hold).where(
            (CriticalNotice.id == notice.id) & (CriticalNotice.state == PENDING)
            & (CriticalNotice.next_attempt_at <= now)).execute())

    def _attempt(self, notice: CriticalNotice, now: dt.datetime) -> int:
        critical = CriticalResult.get_by_id(notice.critical_id)
        study = Study.get_by_id(critical.study_id)
        source = Source.get_or_none(Source.id == study.source_id) if study.source_id else None
        attempt = notice.attempts + 1
        try:
            self._send(notice, critical, source.name if source else "")
        except NoticeFailed as exc:
            return self._failed(notice, study, attempt, str(exc), now)
        CriticalNotice.update(state=SENT, attempts=attempt, sent_at=utcnow(), last_error=None).where(
            CriticalNotice.id == notice.id).execute()
        log.info("critical_notice_sent", case=study.key, peer=notice.channel, attempt=attempt)
        audit.record("critical_notice_sent", actor_ae=None, actor_host=None, study_key=study.key,
                     detail=f"{'escalation ' if notice.escalation else ''}{notice.channel} to {notice.target}"[:200])
        return 1

    def _failed(self, notice: CriticalNotice, study: Study, attempt: int, why: str, now: dt.datetime) -> int:
        final = attempt >= self.critical.max_attempts
        CriticalNotice.update(
            attempts=attempt, last_error=why[:255], state=FAILED if final else PENDING,
            next_attempt_at=now + dt.timedelta(seconds=self.backoff.wait_s(attempt))).where(
            CriticalNotice.id == notice.id).execute()
        log.warning("critical_notice_failed", case=study.key, peer=notice.channel, attempt=attempt, error=why[:200],
                    status="failed" if final else "retrying")
        audit.record("critical_notice_sent", actor_ae=None, actor_host=None, study_key=study.key, outcome="failed",
                     detail=f"{notice.channel} to {notice.target}: {why}"[:200])
        return 1 if final else 0

    def _send(self, notice: CriticalNotice, critical: CriticalResult, source: str) -> None:
        link = portal_link(self.critical, critical, notice.escalation)
        flagged = critical.flagged_at.strftime("%Y-%m-%d %H:%M UTC")
        if notice.escalation:
            subject = f"Critical result not acknowledged ({source})"
            text = (f"A critical result of a case of {source}, flagged at {flagged}, has not been acknowledged "
                    f"by the referrer. The case: {link}\n")
        else:
            subject = f"Critical result to read ({source})"
            text = (f"A reviewer flagged a result of a case of {source} as critical at {flagged}. Read it, see "
                    f"whom to call and acknowledge it in the portal: {link}\n")
        if notice.channel == "email":
            self._email(notice.target, subject, text)
        else:
            self._post(notice.target, {"event": "critical_result_unacknowledged" if notice.escalation
                                       else "critical_result", "source": source, "flagged_at": flagged,
                                       "link": link})

    def _email(self, to: str, subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.critical.sender, to, subject
        message.set_content(text)
        try:
            with smtplib.SMTP(self.critical.smtp_host, self.critical.smtp_port,
                              timeout=self.critical.timeout_s) as smtp:
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise NoticeFailed(f"SMTP {self.critical.smtp_host}:{self.critical.smtp_port}: "
                               f"{type(exc).__name__}") from None

    def _post(self, url: str, body: dict) -> None:
        if not url.startswith(("http://", "https://")):
            raise NoticeFailed("webhook: not an http(s) URL")
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.critical.timeout_s) as answer:  # noqa: S310
                answer.read(1024)
        except urllib.error.HTTPError as exc:
            raise NoticeFailed(f"webhook answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise NoticeFailed(f"webhook: {type(exc).__name__}") from None
