"""Referral intake: store a validated referral, whichever path it came by (CLI, HTTP or HL7).

Every intake path parses and validates first (``parse_referral``, ``validate_referral_data``,
``parse_hl7_referral``) and then calls :func:`store_referral`, which is the only writer of
``models.Referral`` rows. Nothing is written unless everything is valid: the source is resolved
before the transaction starts, and the row, its audit event and an immediate match attempt commit
together.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import structlog

from gateway.ops import audit
from gateway.referral.document import Referral
from gateway.referral.errors import ReferralValidationError
from gateway.referral.matching import match_referral
from gateway.storage import models, wakeup

__all__ = ["INTAKE_PATHS", "IntakePath", "store_referral"]

IntakePath = Literal["cli", "http", "hl7"]
INTAKE_PATHS: tuple[str, ...] = ("cli", "http", "hl7")

log = structlog.get_logger("referral")


def _resolve_source(name: str) -> models.Source:
    source = models.Source.get_or_none(models.Source.name == name)
    if source is None:
        raise ReferralValidationError(["source: not a configured source"])
    return source


def store_referral(referral: Referral, via: IntakePath) -> models.Referral:
    """Store ``referral`` (already validated) and try to match it to a study at once.

    Args:
        referral: the validated referral document.
        via: the intake path, ``"cli"``, ``"http"`` or ``"hl7"``.

    Returns:
        The stored row (``state`` is ``matched`` when a de-identified study was waiting for it).

    Raises:
        ReferralValidationError: the source is not configured (problem line names ``source``).
        ValueError: ``via`` is not an intake path.
    """
    if via not in INTAKE_PATHS:
        raise ValueError(f"via must be one of {', '.join(INTAKE_PATHS)}")
    if not isinstance(referral, Referral):
        raise TypeError("referral must be a gateway.referral.document.Referral")
    with models.db.connection_context() if models.db.is_closed() else contextlib.nullcontext():
        source = _resolve_source(referral.source)
        with models.db.atomic():
            row = models.Referral.create(
                source=source,
                accession_number=referral.accession_number,
                patient_id=referral.patient.id,
                patient_name=referral.patient.name,
                birth_date=referral.patient.birth_date.isoformat() if referral.patient.birth_date else "",
                study_date=referral.study_date.isoformat() if referral.study_date else None,
                urgency=referral.effective_urgency.value,
                subspecialty=referral.subspecialty,
                document=referral.model_dump_json(),
                received_via=via,
            )
            study = match_referral(row)
            wakeup.notify(wakeup.REFERRAL)  # the notes stage runs once this commits: a held case may go on
            audit.record("referral_received", actor_ae=None, actor_host=None,
                         study_key=study.key if study is not None else None,
                         detail=f"referral {row.id} via {via}")
    fields = {"source": source.name, "reason": via}
    if study is not None:
        fields["case"] = study.key
    log.info("referral_received", **fields)
    return row

