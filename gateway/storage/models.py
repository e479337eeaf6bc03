"""The database: peewee models, connection set-up and schema versioning.

One module holds every table so that the stages can meet here and nowhere else: the SCP's last act is
a committed ``Instance`` row, which the later stages pick up. SQLite is the embedded default
(``sqlite:///var/gateway.db``); PostgreSQL is used through the same URL form
(``postgresql://user:password@host:port/db``).

Schema changes are numbered migrations (``MIGRATIONS``) applied in order at start-up inside a
transaction, each recorded in ``schema_version``: an upgrade adds columns and tables, it never drops data.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import peewee
from peewee import (
    AutoField,
    BigIntegerField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as playhouse_migrate
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from gateway.errors import ConfigError

db = DatabaseProxy()


def utcnow() -> dt.datetime:
    """Naive UTC timestamps everywhere in the database (SQLite has no time zones)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def tuple_rows(query: peewee.BaseQuery) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query`` as plain tuples (``query.tuples()``), said once here: peewee's stubs type iterating
    any model query as its model instances ("Study object is not iterable"), which is wrong after ``tuples()``."""
    return cast("Iterator[tuple[Any, ...]]", iter(query.tuples()))


def new_study_key() -> str:
    """A random handle for a study: the only study identifier that appears in logs and on screens."""
    return secrets.token_hex(6)


class BaseModel(Model):
    # peewee adds an auto-increment ``id`` primary key to every model that names no other (all but
    # SchemaVersion), and a ``<name>_id`` column beside each ForeignKeyField: both are declared for the type
    # checker only (here, and after each foreign key); an annotation creates no field.
    id: AutoField[int]

    class Meta:
        database = db
        legacy_table_names = False


class SchemaVersion(BaseModel):
    version = IntegerField(primary_key=True)
    applied_at = DateTimeField(default=utcnow)


class Source(BaseModel):
    """A sender allowed by the configuration (synchronised from ``sources:`` at start-up)."""

    name = CharField(max_length=64, unique=True)
    ae_title = CharField(max_length=16)
    created_at = DateTimeField(default=utcnow)


class CaseState:
    """States of a case (one study sent for a second opinion). ``gateway.storage.cases`` holds the allowed
    transitions."""

    RECEIVING = "receiving"            # instances arriving
    COMPLETE = "complete"              # no new instance for routing.stable_after_s
    DEIDENTIFIED = "deidentified"      # every instance de-identified into the outbound area
    NOTES_ATTACHED = "notes_attached"  # the referral's notes (SR + PDF) built into the pseudonymous study
    ASSIGNED = "assigned"
    POOLED = "pooled"                  # in the pool worklist (a UPS workitem), waiting for a pull reviewer's claim
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    REPORTED = "reported"
    REPORT_DELIVERED = "report_delivered"
    HELD = "held"                      # waiting for a referral, an approval or an operator
    QUARANTINED = "quarantined"        # something identifying or unsafe was found; nothing leaves
    FAILED = "failed"                  # the study leg gave up (delivery to the reviewer, or a stage gave up)
    REPORT_FAILED = "report_failed"    # the report leg gave up (re-identification or delivery to the source)
    REJECTED_NOT_SPINE = "rejected_not_spine"


class Study(BaseModel):
    """A received study, and the case it becomes. ``key`` is its only identifier in logs and on screens."""

    key = CharField(max_length=16, unique=True, default=new_study_key)
    study_uid = CharField(max_length=64, unique=True)
    source = ForeignKeyField(Source, null=True, backref="studies", on_delete="RESTRICT")
    source_id: int | None
    calling_ae = CharField(max_length=16)
    state = CharField(max_length=32, default=CaseState.RECEIVING, index=True)
    state_changed_at = DateTimeField(default=utcnow)
    hold_reason = CharField(max_length=64, null=True)
    urgency = CharField(max_length=16, default="routine")
    pseudo_study_uid = CharField(max_length=64, null=True, unique=True)
    first_received_at = DateTimeField(default=utcnow)
    last_received_at = DateTimeField(default=utcnow, index=True)
    report_delivered_at = DateTimeField(null=True, index=True)  # indexed (migration 17): purge, status's turnaround
    reviewer = CharField(max_length=64, null=True, index=True)  # name of the assigned reviewer
    sla_due_at = DateTimeField(null=True)
    sla_flagged_at = DateTimeField(null=True)
    delivery_attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    claimed_by = CharField(max_length=64, null=True)  # node holding the case while it works on it
    claimed_until = DateTimeField(null=True)
    # Migration 4. Why the case is in its state (the transition's reason, e.g. ``deid:InvalidDicomError``).
    # Migration 7: TEXT, whole (a guard hit names its object, attribute path and identifier kind).
    state_reason = TextField(null=True)
    # A stage's step that raised on this case: how often since the case last changed state, the last error
    # type (``<stage>:<ErrorType>``) and when the stage may try the case again (exponential back-off).
    stage_failures = IntegerField(default=0, index=True)  # indexed (migration 17): status's cases needing attention
    stage_error = CharField(max_length=64, null=True)
    stage_retry_at = DateTimeField(null=True)
    # The report leg's own attempts (the study leg has ``delivery_attempts`` and ``next_attempt_at``).
    report_attempts = IntegerField(default=0)
    report_next_attempt_at = DateTimeField(null=True)
    # Migration 6. The short scrubbed reason for the requested procedure, set by the notes stage: the delivery
    # writes it into (0040,1002) of each image as it leaves (the spool keeps the de-identified images as they
    # were made). NULL: no reason to add (not yet through the notes stage, or through it before migration 6,
    # when the images on disk got it themselves).
    notes_reason = CharField(max_length=64, null=True)
    # Migration 18. Whether a referral is matched to the case (``referral.study``), kept by the database's triggers
    # on ``referral`` (no code writes it), so that the referrer's "images without a referral" reads an index
    # (``study_unreferred``: source, this, first received) instead of every study of its source.
    has_referral = peewee.BooleanField(default=False)


class Series(BaseModel):
    study = ForeignKeyField(Study, backref="series", on_delete="CASCADE")
    study_id: int
    series_uid = CharField(max_length=64, unique=True)
    modality = CharField(max_length=16, null=True)


class InstanceState:
    STORED = "stored"              # in the spool, not yet de-identified
    DEIDENTIFIED = "deidentified"  # its outbound object exists
    QUARANTINED = "quarantined"    # refused by de-identification (burned-in risk, unsupported, leak)
    SUPERSEDED = "superseded"      # a newer version of the same SOP instance arrived

    ALL = (STORED, DEIDENTIFIED, QUARANTINED, SUPERSEDED)


class Instance(BaseModel):
    study = ForeignKeyField(Study, backref="instances", on_delete="CASCADE")
    study_id: int
    series = ForeignKeyField(Series, backref="instances", on_delete="CASCADE")
    series_id: int
    sop_instance_uid = CharField(max_length=64, index=True)
    sop_class_uid = CharField(max_length=64)
    transfer_syntax = CharField(max_length=64)
    version = IntegerField(default=1)
    size = BigIntegerField()
    sha256 = CharField(max_length=64)
    spool_path = CharField(max_length=255, index=True)  # indexed (migration 17): purge's shared-file check
    calling_ae = CharField(max_length=16)
    received_at = DateTimeField(default=utcnow)
    state = CharField(max_length=32, default=InstanceState.STORED, index=True)
    node = CharField(max_length=128, null=True)  # the node that received it (see scp.receiver)

    class Meta:
        indexes = ((("sop_instance_uid", "sha256"), True),)


class InstanceTally(BaseModel):
    """The instance rows by state and the bytes they hold, for ``status`` (migration 18): kept by the database's
    triggers on ``instance`` in the transaction that inserts, deletes or moves a row (a rolled-back transaction
    leaves them as they were), never written by code. The sum of its rows is the tally: slot 0 on SQLite (one
    writer at a time); on PostgreSQL each backend adds to a row of its own (slot = its process id), once per
    statement, so that no two connections ever wait on one row's lock (with shared rows, two transactions holding
    one tally row and another row in opposite order deadlocked), and :func:`fold_instance_tally` folds the rows
    of backends that are gone into slot 0."""

    slot = IntegerField(primary_key=True)
    stored = BigIntegerField(default=0)
    deidentified = BigIntegerField(default=0)
    quarantined = BigIntegerField(default=0)
    superseded = BigIntegerField(default=0)
    bytes = BigIntegerField(default=0)  # the sum of ``instance.size`` over every row: the spool's originals

    class Meta:
        table_name = "instance_tally"


#: PostgreSQL: past this many rows, reading the tally first folds the rows of backends that are gone.
TALLY_FOLD_ROWS = 64


class StudyIdentity(BaseModel):
    """The study's original identifying attributes: for the outbound guard and to re-identify reports.

    PHI: never logged, never sent anywhere.
    """

    study = ForeignKeyField(Study, unique=True, backref="identity", on_delete="CASCADE")
    study_id: int
    patient_name = CharField(max_length=324, default="")
    patient_id = CharField(max_length=64, default="")
    birth_date = CharField(max_length=8, default="")
    sex = CharField(max_length=16, default="")
    accession_number = CharField(max_length=16, default="")
    study_date = CharField(max_length=8, default="")
    study_time = CharField(max_length=16, default="")
    dicom_study_id = CharField(max_length=16, default="")  # (0020,0010) Study ID
    referring_physician = CharField(max_length=324, default="")
    study_description = CharField(max_length=64, default="")
    institution_name = CharField(max_length=64, default="")
    pseudo_patient_id = CharField(max_length=64, default="")
    pseudo_accession_number = CharField(max_length=16, default="")
    date_offset_days = IntegerField(default=0)
    # Every other identifying header value of the study's originals, as JSON {keyword: [values]}: names of
    # relatives and clinicians, address, phones, other IDs, institution address and department
    # (gateway.privacy.identifiers.header_values). For the scrubber and the outbound guard. (migration 3)
    header_values = TextField(default="")
    # Every searchable text of the case's de-identified images as the workers encoded them, once each, as JSON
    # {text: attribute path} (gateway.deid.work.encoded_text_values), for the notes stage's final check
    # against the whole case's identifiers. PHI-free by intent, but checked as if it were not: never logged.
    # NULL: not recorded (a case de-identified before migration 6, an unreadable PDF, or more text than
    # IMAGE_TEXT_MAX_CHARS): the final check then reads the image files back. (migration 6)
    image_text = TextField(null=True, default="")


class StudyMatchKeys(BaseModel):
    """What a referral is matched by, read from the study's first received instance (migration 7).

    The receiving side writes it with the study row, so that a referral can be matched to the study (and is
    never expired) from the moment the study arrives, long before de-identification fills ``StudyIdentity``.
    PHI: never logged, never sent anywhere.
    """

    study = ForeignKeyField(Study, unique=True, backref="match_keys", on_delete="CASCADE")
    study_id: int
    accession_number = CharField(max_length=64, default="", index=True)
    patient_id = CharField(max_length=64, default="")
    study_date = CharField(max_length=8, default="")  # YYYYMMDD as in the header


class UidMap(BaseModel):
    """Original UID ↔ pseudonymous UID, for every UID the de-identifier replaced."""

    original_uid = CharField(max_length=64, unique=True)
    pseudo_uid = CharField(max_length=64, unique=True)
    study = ForeignKeyField(Study, backref="uid_maps", on_delete="CASCADE")
    study_id: int


class OutboundObject(BaseModel):
    """A de-identified object ready to leave: an image, or the notes SR / PDF the gateway built."""

    study = ForeignKeyField(Study, backref="outbound", on_delete="CASCADE")
    study_id: int
    instance = ForeignKeyField(Instance, null=True, backref="outbound", on_delete="CASCADE")
    instance_id: int | None
    kind = CharField(max_length=16, default="image")  # image, notes_sr, notes_pdf, report
    sop_instance_uid = CharField(max_length=64, unique=True)
    sop_class_uid = CharField(max_length=64)
    transfer_syntax = CharField(max_length=64)
    spool_path = CharField(max_length=255)
    sha256 = CharField(max_length=64)
    size = BigIntegerField()
    created_at = DateTimeField(default=utcnow)


class Referral(BaseModel):
    """A referral and its clinical notes. Patient and referrer fields are for matching and scrubbing only."""

    source = ForeignKeyField(Source, backref="referrals", on_delete="RESTRICT")
    source_id: int
    accession_number = CharField(max_length=64, index=True)
    patient_id = CharField(max_length=64, index=True)
    patient_name = CharField(max_length=324, default="")
    birth_date = CharField(max_length=10, default="")
    study_date = CharField(max_length=10, null=True)
    urgency = CharField(max_length=16, default="routine")
    subspecialty = CharField(max_length=64, null=True)
    document = TextField()  # the validated referral as JSON (free text included): PHI
    received_via = CharField(max_length=16)  # cli, http, hl7
    received_at = DateTimeField(default=utcnow, index=True)
    state = CharField(max_length=16, default="waiting", index=True)  # waiting, matched, expired
    study = ForeignKeyField(Study, null=True, unique=True, backref="referrals", on_delete="SET NULL")
    study_id: int | None
    matched_at = DateTimeField(null=True)
    approved_at = DateTimeField(null=True)
    approved_by = CharField(max_length=64, null=True)


class Assignment(BaseModel):
    """Every assignment of a case to a reviewer, with why; ``active`` marks the current one."""

    study = ForeignKeyField(Study, backref="assignments", on_delete="CASCADE")
    study_id: int
    reviewer = CharField(max_length=64, index=True)
    assigned_at = DateTimeField(default=utcnow)
    reason = CharField(max_length=255)
    active = peewee.BooleanField(default=True, index=True)
    ended_at = DateTimeField(null=True)
    ended_reason = CharField(max_length=64, null=True, index=True)  # indexed (migration 17): status's SLA breaches


class Delivery(BaseModel):
    """The per-object delivery ledger: one row per outbound object and destination."""

    outbound = ForeignKeyField(OutboundObject, backref="deliveries", on_delete="CASCADE")
    outbound_id: int
    destination = CharField(max_length=80)  # "reviewer:<name>" or "source:<name>"
    state = CharField(max_length=16, default="pending", index=True)  # pending, sent, failed
    attempts = IntegerField(default=0)
    last_status = IntegerField(null=True)
    last_error = CharField(max_length=255, null=True)
    sent_at = DateTimeField(null=True)
    # Migration 12. Storage Commitment toward a reviewer that offers it: the transaction of the N-ACTION that asked
    # about this object and when, and when the reviewer's report said it was committed (the delivery is done then).
    commitment_uid = CharField(max_length=64, null=True, index=True)
    commitment_requested_at = DateTimeField(null=True)
    committed_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("outbound", "destination"), True),)


class ReportObject(BaseModel):
    """A report (SR, Key Object Selection or Encapsulated PDF) received from the reviewer a case was assigned to.

    ``spool_path`` holds it as the reviewer sent it (pseudonymous); ``outbound`` is its re-identified copy,
    which goes only to the source that sent the study.
    """

    study = ForeignKeyField(Study, backref="reports", on_delete="CASCADE")
    study_id: int
    reviewer = CharField(max_length=64)
    calling_ae = CharField(max_length=16)
    sop_class_uid = CharField(max_length=64)
    sop_instance_uid = CharField(max_length=64, unique=True)
    transfer_syntax = CharField(max_length=64)
    spool_path = CharField(max_length=255)
    sha256 = CharField(max_length=64)
    size = BigIntegerField()
    received_at = DateTimeField(default=utcnow)
    state = CharField(max_length=16, default="received", index=True)  # received, reidentified, failed
    outbound = ForeignKeyField(OutboundObject, null=True, backref="report", on_delete="SET NULL")
    outbound_id: int | None


class PeerHealth(BaseModel):
    """The last C-ECHO result of each configured peer."""

    name = CharField(max_length=80, unique=True)  # "reviewer:<name>" or "source:<name>"
    ok = peewee.BooleanField(default=False)
    checked_at = DateTimeField(default=utcnow)
    changed_at = DateTimeField(default=utcnow)
    detail = CharField(max_length=255, default="")


class QuarantinedObject(BaseModel):
    """Something received that was refused or could not be processed, kept for diagnosis."""

    received_at = DateTimeField(default=utcnow, index=True)
    calling_ae = CharField(max_length=16)
    peer_host = CharField(max_length=64, null=True)
    reason = CharField(max_length=64)
    detail = TextField(default="")
    status = IntegerField()
    size = BigIntegerField(default=0)
    spool_path = CharField(max_length=255, null=True)


class AuditEvent(BaseModel):
    """Every action on patient data: who (AE title, host), what (action, study key), when, and the outcome.

    Only pseudonymous handles are stored here; the row is safe to show and to export.
    """

    at = DateTimeField(default=utcnow, index=True)
    action = CharField(max_length=32, index=True)  # received, refused, deidentified, sent, report_received, ...
    actor_ae = CharField(max_length=16, null=True)
    actor_host = CharField(max_length=64, null=True)
    study_key = CharField(max_length=16, null=True, index=True)
    outcome = CharField(max_length=16, default="success")  # success, refused, failed
    detail = TextField(default="")  # TEXT since migration 7 (was 255 characters)


class ExportCursor(BaseModel):
    """How far an exporter of the audit trail got (``atna``: the last row the collector took), and which node
    holds the export for now, so that two nodes sharing the database do not send the same rows."""

    name = CharField(max_length=32, unique=True)
    last_id = IntegerField(default=0)
    claimed_by = CharField(max_length=64, null=True)
    claimed_until = DateTimeField(null=True)
    sent = IntegerField(default=0)
    last_error = CharField(max_length=255, null=True)
    last_sent_at = DateTimeField(null=True)


class WebUser(BaseModel):
    """An account of the web portal: a referrer (one source), a reviewer (one reviewer) or an operator."""

    name = CharField(max_length=64, unique=True)
    role = CharField(max_length=16)  # referrer, reviewer, ops
    source = CharField(max_length=64, null=True)    # the source a referrer writes for
    reviewer = CharField(max_length=64, null=True)  # the configured reviewer a reviewer account is
    password_hash = CharField(max_length=255)       # argon2id, with its parameters and salt
    enabled = peewee.BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)
    last_login_at = DateTimeField(null=True)


class WebSession(BaseModel):
    """A signed-in browser: the SHA-256 of its cookie's token (never the token), and its CSRF token."""

    token_sha256 = CharField(max_length=64, unique=True)
    user = ForeignKeyField(WebUser, backref="sessions", on_delete="CASCADE")
    user_id: int
    csrf_token = CharField(max_length=64)
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(index=True)


class NotesRedaction(BaseModel):
    """A phrase an operator removed from a case's notes after the outbound guard quarantined them (PHI: the
    phrase is text of the notes). The notes stage hands every phrase of the case to the scrubber, which
    writes [REDACTED] in its place. (migration 8)"""

    study = ForeignKeyField(Study, backref="notes_redactions", on_delete="CASCADE")
    study_id: int
    phrase = CharField(max_length=200)
    actor = CharField(max_length=64)  # who: "web:<user>"
    created_at = DateTimeField(default=utcnow, index=True)


class ResultMessage(BaseModel):
    """One re-identified report on its way to the source's RIS/EHR as an HL7 v2 ORU^R01 (migration 11): the HL7
    leg's own delivery state, beside the SR leg's ``Delivery`` rows. The message itself (PHI) is never stored:
    it is built again from the outbound report for each attempt, under the same ``control_id`` (MSH-10).

    ``state``: pending (due at ``next_attempt_at``), sent (the receiver answered AA/CA) or failed (AR/CR, or
    ``routing.retry.max_attempts`` attempts without AA). ``last_error`` is the gateway's own words, never the
    receiver's text."""

    study = ForeignKeyField(Study, backref="result_messages", on_delete="CASCADE")
    study_id: int
    outbound = ForeignKeyField(OutboundObject, unique=True, backref="result_message", on_delete="CASCADE")
    outbound_id: int
    state = CharField(max_length=16, default="pending", index=True)  # pending, sent, failed
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow, index=True)
    control_id = CharField(max_length=20, unique=True)
    last_ack_code = CharField(max_length=2, null=True)  # MSA-1 of the last answer: AA, AE, AR, CA, CE, CR
    last_error = CharField(max_length=255, null=True)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)


class CriticalResult(BaseModel):
    """A report its reviewer flagged critical or urgent (migration 15): whom to call (the reviewer's words, shown
    to the referrer, never in a notice), and whether the referrer acknowledged it and when the operators were
    told for want of that."""

    study = ForeignKeyField(Study, unique=True, backref="critical", on_delete="CASCADE")
    study_id: int
    contact = CharField(max_length=200, default="")
    flagged_by = CharField(max_length=64)  # "web:<user>" or "cli"
    flagged_at = DateTimeField(default=utcnow, index=True)
    acknowledged_at = DateTimeField(null=True)
    acknowledged_by = CharField(max_length=64, null=True)
    escalated_at = DateTimeField(null=True)


class CriticalNotice(BaseModel):
    """One notice of a critical result to one address (migration 15), with its own attempts: ``channel`` email
    or webhook, ``escalation`` for the operators'; ``state`` pending, sent or failed."""

    critical = ForeignKeyField(CriticalResult, backref="notices", on_delete="CASCADE")
    critical_id: int
    channel = CharField(max_length=16)
    escalation = peewee.BooleanField(default=False)
    target = CharField(max_length=255)
    state = CharField(max_length=16, default="pending", index=True)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow, index=True)
    last_error = CharField(max_length=255, null=True)
    sent_at = DateTimeField(null=True)


class HealthProbe(BaseModel):
    """A row each node (and ``spine-gateway status``) rewrites to prove the database takes a write (``/healthz``)."""

    name = CharField(max_length=128, unique=True)  # "node:<host>" or "status:<host>"
    written_at = DateTimeField(default=utcnow)


class CommitmentState:
    PENDING = "pending"    # the N-EVENT-REPORT is still to be sent (first try, or retrying after a failure)
    REPORTED = "reported"  # the requester answered the N-EVENT-REPORT with success
    FAILED = "failed"      # no report got through in ``commitment.max_attempts`` tries: for an operator


class CommitmentRequest(BaseModel):
    """A source's Storage Commitment request (N-ACTION), kept until its N-EVENT-REPORT has been answered, so that
    a restart of the node or a requester that is offline still gets its report later.

    ``sop_references``: the requested instances as JSON, ``[[SOP Class UID, SOP Instance UID], ...]``. These are
    original UIDs, as in ``instance``: never logged. One row per (source, transaction UID): a request repeated
    with the same transaction UID is reported again, not twice.
    """

    source = CharField(max_length=64)  # the configured source's name
    calling_ae = CharField(max_length=16)
    transaction_uid = CharField(max_length=64)
    sop_references = TextField()
    state = CharField(max_length=16, default=CommitmentState.PENDING, index=True)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow, index=True)
    last_error = TextField(null=True)
    requested_at = DateTimeField(default=utcnow)
    reported_at = DateTimeField(null=True)
    event_type = IntegerField(null=True)  # of the last report built: 1 all committed, 2 some failed
    failed_count = IntegerField(null=True)

    class Meta:
        table_name = "commitment_request"
        indexes = ((("source", "transaction_uid"), True),)


class PriorFetchState:
    QUERYING = "querying"        # the PACS is to be asked (C-FIND) which earlier studies it holds
    RETRIEVING = "retrieving"    # the chosen priors are to be fetched (C-GET), instance by instance
    DEIDENTIFYING = "deidentifying"  # every prior fetched; waiting for the de-identification stage to take them
    DONE = "done"                # the priors (possibly none) are with the case; the notes stage may go on
    UNAVAILABLE = "unavailable"  # the PACS did not answer or failed within ``priors.wait_s``: the case goes without
    FINISHED = (DONE, UNAVAILABLE)


class PriorFetch(BaseModel):
    """The priors of one case (migration 13): where fetching them stands, so that a node killed at any point
    picks the work up where it was. The notes stage waits while a case's row is not finished (``PriorFetchState``);
    ``deadline_at`` (the case's de-identification plus ``priors.wait_s``) bounds that wait.

    ``claimed_by``/``claimed_until``: the priors stage's own lease (not the case's, which the de-identification
    stage takes meanwhile for the retrieved instances)."""

    study = ForeignKeyField(Study, unique=True, backref="prior_fetch", on_delete="CASCADE")
    study_id: int
    source = CharField(max_length=64)
    state = CharField(max_length=16, default=PriorFetchState.QUERYING, index=True)
    reason = CharField(max_length=255, null=True)  # why UNAVAILABLE (the gateway's own words, no PHI)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(default=utcnow)
    deadline_at = DateTimeField()
    finished_at = DateTimeField(null=True)
    claimed_by = CharField(max_length=64, null=True)
    claimed_until = DateTimeField(null=True)

    class Meta:
        table_name = "prior_fetch"


class PriorStudy(BaseModel):
    """One earlier study of the case's patient that the rules chose (migration 13). ``study_uid`` and
    ``study_date`` are the PACS's original values: PHI, never logged and never sent; the notes carry only the
    interval to the case's own study. Its instances are ``Instance`` rows of the case (in series of their own)."""

    fetch = ForeignKeyField(PriorFetch, backref="priors", on_delete="CASCADE")
    fetch_id: int
    study = ForeignKeyField(Study, backref="priors", on_delete="CASCADE")
    study_id: int
    study_uid = CharField(max_length=64)
    study_date = CharField(max_length=8, default="")
    modalities = CharField(max_length=64, default="")  # e.g. "MR" or "CT\\SR"
    body_part = CharField(max_length=64, default="")
    state = CharField(max_length=16, default="pending", index=True)  # pending, retrieved, failed
    instances = IntegerField(default=0)  # instances the PACS sent for it
    retrieved_at = DateTimeField(null=True)

    class Meta:
        table_name = "prior_study"
        indexes = ((("study", "study_uid"), True),)


class DicomwebToken(BaseModel):
    """A bearer token of one reviewer's own DICOMweb viewer or workstation (migration 14), issued and revoked by
    ops (``spine-gateway dicomweb token``). The token is ``<token_id>.<secret>``: the row is found by its public
    ``token_id`` and the secret's SHA-256 compared in constant time; the secret itself is never stored (it is
    shown once, at issue)."""

    token_id = CharField(max_length=16, unique=True)
    secret_sha256 = CharField(max_length=64)
    reviewer = CharField(max_length=64, index=True)  # the configured reviewer it acts as
    label = CharField(max_length=64, default="")     # what it is for (e.g. "home workstation"), never PHI
    issued_at = DateTimeField(default=utcnow)
    issued_by = CharField(max_length=64, default="")
    revoked_at = DateTimeField(null=True)
    last_used_at = DateTimeField(null=True)

    class Meta:
        table_name = "dicomweb_token"


class Workitem(BaseModel):
    """A case in the pool worklist: one UPS workitem (PS3.4 Annex CC, served by UPS-RS under
    ``/dicomweb/workitems``; migration 16). Everything here is pseudonymous: the case's key and pseudonymous
    Study Instance UID, what the case asks of its reviewer (to decide who may claim it), and the claim.

    ``state`` is the UPS Procedure Step State (``gateway.storage.workitems`` holds its machine). A case has at most
    one workitem that is not final (CANCELED, COMPLETED); a claim its reviewer cancels leaves a new one SCHEDULED.
    ``transaction_sha256``: the SHA-256 of the claimer's Transaction UID, which the claimer alone knows."""

    uid = CharField(max_length=64, unique=True)  # the workitem's SOP Instance UID (2.25.<random>)
    study = ForeignKeyField(Study, backref="workitems", on_delete="CASCADE")
    study_id: int
    pseudo_patient_id = CharField(max_length=64, default="")  # the de-identified images' Patient ID
    state = CharField(max_length=16, index=True)
    priority = CharField(max_length=8)  # HIGH (urgent or red flags), MEDIUM
    modalities = CharField(max_length=64, default="")  # the case's image modalities, "MR\\CT"
    subspecialty = CharField(max_length=64, null=True)
    scheduled_at = DateTimeField(default=utcnow)  # Scheduled Procedure Step Start DateTime
    due_at = DateTimeField()  # the SLA deadline: Expected Completion and Scheduled Procedure Step Expiration DateTime
    claimed_by = CharField(max_length=64, null=True, index=True)  # the pull reviewer holding or having held it
    claimed_at = DateTimeField(null=True)
    claim_expires_at = DateTimeField(null=True, index=True)
    transaction_sha256 = CharField(max_length=64, null=True)
    cancel_reason = CharField(max_length=64, null=True)  # the node's own words, never PHI
    changed_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "workitem"


class WorkitemSubscription(BaseModel):
    """A reviewer's subscription to the events of one workitem, or of every workitem it may see (``workitem``
    null: the global subscription; ``suspended``: a suspended global subscription takes no new workitem)."""

    reviewer = CharField(max_length=64, index=True)
    ae_title = CharField(max_length=16)  # the subscriber's AE title, as in the request's path
    workitem = ForeignKeyField(Workitem, null=True, backref="subscriptions", on_delete="CASCADE")
    workitem_id: int | None
    deletion_lock = peewee.BooleanField(default=False)
    suspended = peewee.BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "workitem_subscription"
        indexes = ((("reviewer", "ae_title", "workitem"), True),)


class WorkitemEvent(BaseModel):
    """The event log of the workitems (UPS event reports, PS3.4 CC.2.4): what subscribers read, in ``id`` order,
    over the WebSocket or the polling resource. ``event_type``: 1 State Report, 2 Cancel Requested."""

    workitem = ForeignKeyField(Workitem, backref="events", on_delete="CASCADE")
    workitem_id: int
    event_type = IntegerField()
    state = CharField(max_length=16)
    reason = CharField(max_length=64, null=True)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "workitem_event"


MODELS_V1 = [SchemaVersion, Source, Study, Series, Instance, StudyIdentity, UidMap, OutboundObject, Referral,
             Assignment, Delivery, ReportObject, PeerHealth, QuarantinedObject, AuditEvent]


def timestamp_column(database: peewee.Database) -> str:
    """The column type of a ``DateTimeField`` on ``database``'s backend, as ``create_tables`` makes it: peewee's
    PostgreSQL database maps DATETIME to ``TIMESTAMP`` (without time zone; our values are naive UTC), SQLite and
    MySQL keep ``DATETIME``. For the migrations that add such a column with ``ALTER TABLE``."""
    return "TIMESTAMP" if isinstance(database, peewee.PostgresqlDatabase) else "DATETIME"


def _migrate_to_1(database: peewee.Database) -> None:
    database.create_tables(MODELS_V1)


def _migrate_to_2(database: peewee.Database) -> None:
    """``instance.node``: which node received the instance (a database made at version 1 lacks it)."""
    if "node" not in {column.name for column in database.get_columns(Instance._meta.table_name)}:
        migrator = SchemaMigrator.from_database(database)
        playhouse_migrate(migrator.add_column(Instance._meta.table_name, "node", Instance.node))


def _migrate_to_3(database: peewee.Database) -> None:
    """``study_identity.header_values``: the identifying header values beyond the fixed columns."""
    table = StudyIdentity._meta.table_name
    if "header_values" not in {column.name for column in database.get_columns(table)}:
        migrator = SchemaMigrator.from_database(database)
        playhouse_migrate(migrator.add_column(table, "header_values", StudyIdentity.header_values))


STAGE_LOOP_COLUMNS = ("state_reason", "stage_failures", "stage_error", "stage_retry_at", "report_attempts",
                      "report_next_attempt_at")


def _migrate_to_4(database: peewee.Database) -> None:
    """The stage loop's per-case failure count and back-off, the report leg's own attempts, and the reason of
    the state. A case FAILED on its report leg (it holds a report) becomes REPORT_FAILED.

    Plain ``ALTER TABLE ... ADD COLUMN`` with the default in the column: playhouse's SQLite migrator rebuilds
    the table for a NOT NULL column, and dropping the old ``study`` table would cascade to its children."""
    table = Study._meta.table_name
    present = {column.name for column in database.get_columns(table)}
    timestamp = timestamp_column(database)
    definitions = {
        "state_reason": "VARCHAR(64)", "stage_failures": "INTEGER NOT NULL DEFAULT 0",
        "stage_error": "VARCHAR(64)", "stage_retry_at": timestamp,
        "report_attempts": "INTEGER NOT NULL DEFAULT 0", "report_next_attempt_at": timestamp,
    }
    for name in STAGE_LOOP_COLUMNS:
        if name not in present:
            database.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {definitions[name]}')
    with_reports = ReportObject.select(ReportObject.study)
    Study.update(state=CaseState.REPORT_FAILED).where(
        (Study.state == CaseState.FAILED) & Study.id.in_(with_reports)).execute()


def _migrate_to_5(database: peewee.Database) -> None:
    """The web portal's accounts and sessions."""
    database.create_tables([WebUser, WebSession], safe=True)


def _migrate_to_6(database: peewee.Database) -> None:
    """``study.notes_reason`` (the reason the delivery adds to each image) and ``study_identity.image_text``
    (the images' text, for the notes stage's final check). Both NULL on existing rows: a case past the notes
    stage already has the reason in its images on disk, and a case de-identified before has its image files
    read back by the final check, as before."""
    for table, name, definition in ((Study._meta.table_name, "notes_reason", "VARCHAR(64)"),
                                    (StudyIdentity._meta.table_name, "image_text", "TEXT")):
        if name not in {column.name for column in database.get_columns(table)}:
            database.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {definition}')


def _migrate_to_7(database: peewee.Database) -> None:
    """``study_match_keys`` (a referral is matched from the study's arrival on), and ``study.state_reason`` and
    ``audit_event.detail`` widened to TEXT, so that a quarantine's reason (object, attribute path, identifier
    kind) is kept whole. SQLite does not enforce a VARCHAR's length: only PostgreSQL's columns change type."""
    database.create_tables([StudyMatchKeys], safe=True)
    if isinstance(database, peewee.PostgresqlDatabase):
        for table, name in ((Study._meta.table_name, "state_reason"), (AuditEvent._meta.table_name, "detail")):
            database.execute_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{name}" TYPE TEXT')


def _migrate_to_8(database: peewee.Database) -> None:
    """``notes_redaction``: the phrases operators removed from a quarantined case's notes."""
    database.create_tables([NotesRedaction], safe=True)


def _migrate_to_9(database: peewee.Database) -> None:
    """``health_probe``: the row /healthz and ``status`` write to prove the database takes a write."""
    database.create_tables([HealthProbe], safe=True)


def _migrate_to_10(database: peewee.Database) -> None:
    """``export_cursor``: how far the audit messages (ATNA) reached the hospital's collector."""
    database.create_tables([ExportCursor], safe=True)


def _migrate_to_11(database: peewee.Database) -> None:
    """``result_message``: the HL7 ORU^R01 leg of each re-identified report (its own attempts and state)."""
    database.create_tables([ResultMessage], safe=True)


def _migrate_to_12(database: peewee.Database) -> None:
    """``commitment_request``: Storage Commitment requests kept until their report is answered; and the delivery
    ledger's commitment columns (toward reviewers with ``storage_commitment``), NULL on existing rows. (Number 11
    is taken by another branch of the same issue; ``migrate`` applies every missing number, in order.)"""
    database.create_tables([CommitmentRequest], safe=True)
    table = Delivery._meta.table_name
    timestamp = timestamp_column(database)
    present = {column.name for column in database.get_columns(table)}
    for name, definition in (("commitment_uid", "VARCHAR(64)"), ("commitment_requested_at", timestamp),
                             ("committed_at", timestamp)):
        if name not in present:
            database.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {definition}')
    database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{table}_commitment_uid" ON "{table}" ("commitment_uid")')


def _migrate_to_13(database: peewee.Database) -> None:
    """``prior_fetch`` and ``prior_study``: the priors of each case, fetched from its source's PACS."""
    database.create_tables([PriorFetch, PriorStudy], safe=True)


def _migrate_to_14(database: peewee.Database) -> None:
    """``dicomweb_token``: the reviewers' DICOMweb bearer tokens (hashed). (Number 13 is taken by another branch;
    ``migrate`` applies every missing number, in order.)"""
    database.create_tables([DicomwebToken], safe=True)


def _migrate_to_15(database: peewee.Database) -> None:
    """``critical_result`` and ``critical_notice``: reports flagged critical and their notices (e-mail, webhook,
    escalation). (Numbers 13 and 14 are other branches'; ``migrate`` applies every missing number, in order.)"""
    database.create_tables([CriticalResult, CriticalNotice], safe=True)


def _migrate_to_16(database: peewee.Database) -> None:
    """``workitem``, ``workitem_subscription`` and ``workitem_event``: the pool worklist (UPS-RS). (Other numbers are
    other branches'; ``migrate`` applies every missing number, in order.)"""
    database.create_tables([Workitem, WorkitemSubscription, WorkitemEvent], safe=True)


#: The indexes of migration 17, as ``create_tables`` names them: (table, column).
HISTORY_INDEXES = (("instance", "spool_path"), ("study", "stage_failures"), ("study", "report_delivered_at"),
                   ("assignment", "ended_reason"))


def _migrate_to_17(database: peewee.Database) -> None:
    """Indexes for queries that read the whole history on every call (bench/history.py): purge's check that no
    other case refers to a spool file (``instance.spool_path``) and its choice of the cases reported before the
    cut-off (``study.report_delivered_at``, status's turnaround too), status's cases with stage failures
    (``study.stage_failures``) and reviewers' SLA breaches (``assignment.ended_reason``)."""
    for table, column in HISTORY_INDEXES:
        database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{table}_{column}" ON "{table}" ("{column}")')


def _tally_terms(row: str, sign: str) -> list[str]:
    """``instance_tally``'s SET terms adding (``sign`` "+") or taking away ("-") the instance row ``row`` (NEW or
    OLD of a trigger)."""
    terms = [f'"{state}" = "{state}" {sign} CASE WHEN {row}."state" = \'{state}\' THEN 1 ELSE 0 END'
             for state in InstanceState.ALL]
    return [*terms, f'"bytes" = "bytes" {sign} {row}."size"']


def _tally_update(slot: str, *changes: tuple[str, str]) -> str:
    """The UPDATE of ``instance_tally``'s row ``slot`` for ``changes``, each (NEW or OLD, "+" or "-")."""
    terms: dict[str, list[str]] = {}
    for row, sign in changes:
        for term in _tally_terms(row, sign):
            column, _, change = term.partition(" = ")
            terms.setdefault(column, [column]).append(change.partition(" ")[2])
    body = ", ".join(f"{column} = " + " ".join(parts) for column, parts in terms.items())
    return f'UPDATE "instance_tally" SET {body} WHERE "slot" = {slot}'


def _tally_triggers(database: peewee.Database) -> list[str]:
    """The statements creating the triggers of migration 18: ``instance_tally`` follows ``instance``, and
    ``study.has_referral`` follows ``referral.study``. SQLite has row-level triggers only (it writes one
    transaction at a time, so a single tally row, slot 0)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        return [*_postgres_tally_triggers(), *_postgres_referral_triggers()]
    flag = 'UPDATE "study" SET "has_referral" = {value} WHERE "id" = {row}."study_id";'
    changed = '(OLD."state" IS NOT NEW."state" OR OLD."size" IS NOT NEW."size")'  # IS NOT: IS DISTINCT FROM
    referral_changed = 'OLD."study_id" IS NOT NEW."study_id"'
    return [
        f'CREATE TRIGGER IF NOT EXISTS instance_tally_insert AFTER INSERT ON "instance" '
        f'BEGIN {_tally_update("0", ("NEW", "+"))}; END',
        f'CREATE TRIGGER IF NOT EXISTS instance_tally_delete AFTER DELETE ON "instance" '
        f'BEGIN {_tally_update("0", ("OLD", "-"))}; END',
        f'CREATE TRIGGER IF NOT EXISTS instance_tally_move AFTER UPDATE OF "state", "size" ON "instance" '
        f'WHEN {changed} BEGIN {_tally_update("0", ("NEW", "+"), ("OLD", "-"))}; END',
        f'CREATE TRIGGER IF NOT EXISTS study_referral_insert AFTER INSERT ON "referral" '
        f'WHEN NEW."study_id" IS NOT NULL BEGIN {flag.format(value=1, row="NEW")} END',
        f'CREATE TRIGGER IF NOT EXISTS study_referral_delete AFTER DELETE ON "referral" '
        f'WHEN OLD."study_id" IS NOT NULL BEGIN {flag.format(value=0, row="OLD")} END',
        f'CREATE TRIGGER IF NOT EXISTS study_referral_move AFTER UPDATE OF "study_id" ON "referral" '
        f'WHEN {referral_changed} BEGIN {flag.format(value=0, row="OLD")} {flag.format(value=1, row="NEW")} END',
    ]


def _postgres_tally_triggers() -> list[str]:
    """PostgreSQL: statement-level triggers over the statement's rows (transition tables), so that a statement
    writing many instance rows (a group commit, a case's de-identification, a purge) adds to the tally once, and
    one changing no state or size not at all: each connection adds to its backend's own row (created on its
    first change), which no other connection writes."""
    def sums(rows: str, sign: str) -> str:
        counts = [f"{sign}count(*) FILTER (WHERE state = '{state}')" for state in InstanceState.ALL]
        return f"SELECT ARRAY[{', '.join(counts)}, {sign}COALESCE(sum(size), 0)]::bigint[] FROM {rows}"

    columns = [*InstanceState.ALL, "bytes"]
    names = ", ".join(f'"{column}"' for column in columns)
    values = ", ".join(f"d[{n}]" for n in range(1, len(columns) + 1))
    terms = ", ".join(f'"{column}" = "instance_tally"."{column}" + EXCLUDED."{column}"' for column in columns)
    zero = ", ".join("0" for _ in range(len(InstanceState.ALL) + 1))
    events = (("inserts", "INSERT", "NEW TABLE AS new_rows"), ("deletes", "DELETE", "OLD TABLE AS old_rows"),
              ("updates", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"))
    return [
        f"""CREATE OR REPLACE FUNCTION instance_tally_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  d bigint[];
  o bigint[];
BEGIN
  IF TG_OP = 'INSERT' THEN {sums("new_rows", "")} INTO d;
  ELSIF TG_OP = 'DELETE' THEN {sums("old_rows", "-")} INTO d;
  ELSE
    {sums("new_rows", "")} INTO d;
    {sums("old_rows", "-")} INTO o;
    SELECT array_agg(a + b ORDER BY n) INTO d FROM unnest(d, o) WITH ORDINALITY AS t(a, b, n);
  END IF;
  IF d <> ARRAY[{zero}]::bigint[] THEN
    INSERT INTO "instance_tally" ("slot", {names}) VALUES (pg_backend_pid(), {values})
      ON CONFLICT ("slot") DO UPDATE SET {terms};
  END IF;
  RETURN NULL;
END $$""",
        *[statement for name, event, tables in events for statement in (
            f'DROP TRIGGER IF EXISTS instance_tally_{name} ON "instance"',
            f'CREATE TRIGGER instance_tally_{name} AFTER {event} ON "instance" REFERENCING {tables} '
            "FOR EACH STATEMENT EXECUTE FUNCTION instance_tally_change()")],
    ]


def _postgres_referral_triggers() -> list[str]:
    flag = 'UPDATE "study" SET "has_referral" = {value} WHERE "id" = {row}."study_id"'
    return [
        f"""CREATE OR REPLACE FUNCTION study_referral_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' AND OLD."study_id" IS NOT NULL THEN {flag.format(value="FALSE", row="OLD")};
  END IF;
  IF TG_OP <> 'DELETE' AND NEW."study_id" IS NOT NULL THEN {flag.format(value="TRUE", row="NEW")};
  END IF;
  RETURN NULL;
END $$""",
        'DROP TRIGGER IF EXISTS study_referral_rows ON "referral"',
        'CREATE TRIGGER study_referral_rows AFTER INSERT OR DELETE ON "referral" FOR EACH ROW '
        "EXECUTE FUNCTION study_referral_change()",
        'DROP TRIGGER IF EXISTS study_referral_moves ON "referral"',
        'CREATE TRIGGER study_referral_moves AFTER UPDATE OF "study_id" ON "referral" FOR EACH ROW '
        'WHEN (OLD."study_id" IS DISTINCT FROM NEW."study_id") EXECUTE FUNCTION study_referral_change()',
    ]


def recount_instance_tally() -> None:
    """Set ``instance_tally`` from a full count of ``instance``, in one transaction: migration 18 on an existing
    database (whose transaction holds ``instance`` against writers once the triggers exist), or by hand after a
    restore of data only, while no node writes (docs/operations.md §9)."""
    with db.atomic():
        counts = dict(tuple_rows(Instance.select(Instance.state, peewee.fn.COUNT(Instance.id))
                                 .group_by(Instance.state)))
        total = Instance.select(peewee.fn.COALESCE(peewee.fn.SUM(Instance.size), 0)).scalar()
        InstanceTally.delete().execute()
        InstanceTally.insert(slot=0).execute()
        InstanceTally.update(bytes=int(total or 0), **{state: counts.get(state, 0) for state in InstanceState.ALL}
                             ).where(InstanceTally.slot == 0).execute()


def fold_instance_tally() -> int:
    """PostgreSQL: add the tally rows of backends that are gone to slot 0 and delete them, so that the table holds
    about a row per live connection; the number of rows folded (0 on SQLite, or while another fold runs). Only
    rows no live backend writes are touched, and one fold at a time (an advisory lock), so it waits on no writer."""
    if not isinstance(db.obj, peewee.PostgresqlDatabase):
        return 0
    columns = [*InstanceState.ALL, "bytes"]
    sums = ", ".join(f'"{c}" = "instance_tally"."{c}" + (SELECT COALESCE(sum("{c}"), 0) FROM gone)' for c in columns)
    with db.atomic():
        if not db.execute_sql("SELECT pg_try_advisory_xact_lock(%s)", (TALLY_FOLD_LOCK,)).fetchone()[0]:
            return 0
        cursor = db.execute_sql(
            'WITH gone AS (DELETE FROM "instance_tally" WHERE "slot" <> 0 AND "slot" NOT IN '
            "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING *) "
            f'UPDATE "instance_tally" SET {sums} WHERE "slot" = 0 RETURNING (SELECT count(*) FROM gone)')
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def instance_tally() -> tuple[dict[str, int], int]:
    """The instance rows by state (states with none left out) and the bytes they hold, from ``instance_tally``: a
    read of slot 0 and a row per connection that changed instances since the last fold (folded first when there
    are more than ``TALLY_FOLD_ROWS``), exact as a full count whatever the history."""
    if InstanceTally.select().count() > TALLY_FOLD_ROWS:
        fold_instance_tally()
    sums = [peewee.fn.COALESCE(peewee.fn.SUM(getattr(InstanceTally, state)), 0) for state in InstanceState.ALL]
    *counts, total = InstanceTally.select(*sums, peewee.fn.COALESCE(peewee.fn.SUM(InstanceTally.bytes), 0)).scalar(
        as_tuple=True)
    return {state: int(n) for state, n in zip(InstanceState.ALL, counts, strict=True) if n}, int(total)


def _migrate_to_18(database: peewee.Database) -> None:
    """Bounded ``status`` and referrer's list at a year's history (bench/history.py): ``instance_tally`` (instances
    by state, the spool's bytes) and ``study.has_referral``, each kept by triggers in the writing transaction and
    filled once here; the referrer's lists read indexes (``study_unreferred``, ``referral_source_received``), and
    the objects sent to reviewers awaiting their Storage Commitment a partial index (``delivery_awaiting_commit``),
    a reviewer's open cases (worklist, load) ``study_reviewer_state``, and the critical results not yet acknowledged
    (first on the referrer's list) the partial ``critical_result_open``.

    The triggers come first: creating one takes ``instance`` (``referral``) from writers until the migration
    commits, so the counts after it miss no row another node was writing."""
    database.create_tables([InstanceTally], safe=True)
    if "has_referral" not in {column.name for column in database.get_columns(Study._meta.table_name)}:
        kind = "BOOLEAN NOT NULL DEFAULT FALSE" if isinstance(database, peewee.PostgresqlDatabase) else \
            "INTEGER NOT NULL DEFAULT 0"
        database.execute_sql(f'ALTER TABLE "study" ADD COLUMN "has_referral" {kind}')
    for statement in _tally_triggers(database):
        database.execute_sql(statement)
    recount_instance_tally()
    Study.update(has_referral=Study.id.in_(Referral.select(Referral.study).where(Referral.study.is_null(False)))
                 ).execute()
    for statement in MIGRATION_18_INDEXES:
        database.execute_sql(statement)


MIGRATION_18_INDEXES = (
    'CREATE INDEX IF NOT EXISTS "study_unreferred" ON "study" ("source_id", "has_referral", "first_received_at")',
    'CREATE INDEX IF NOT EXISTS "referral_source_received" ON "referral" ("source_id", "received_at")',
    'CREATE INDEX IF NOT EXISTS "study_reviewer_state" ON "study" ("reviewer", "state")',
    'CREATE INDEX IF NOT EXISTS "critical_result_open" ON "critical_result" ("study_id") '
    'WHERE "acknowledged_at" IS NULL',
    'CREATE INDEX IF NOT EXISTS "delivery_awaiting_commit" ON "delivery" ("state") '
    'WHERE "commitment_uid" IS NOT NULL AND "committed_at" IS NULL',
)


MIGRATIONS: list[tuple[int, Callable[[peewee.Database], None]]] = [
    (1, _migrate_to_1),
    (2, _migrate_to_2),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
    (5, _migrate_to_5),
    (6, _migrate_to_6),
    (7, _migrate_to_7),
    (8, _migrate_to_8),
    (9, _migrate_to_9),
    (10, _migrate_to_10),
    (11, _migrate_to_11),
    (12, _migrate_to_12),
    (13, _migrate_to_13),
    (14, _migrate_to_14),
    (15, _migrate_to_15),
    (16, _migrate_to_16),
    (17, _migrate_to_17),
    (18, _migrate_to_18),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def make_database(url: str, max_connections: int = 32) -> peewee.Database:
    """Build (without connecting) the peewee database that ``url`` names.

    Raises:
        ConfigError: the URL's scheme is neither sqlite nor postgresql.
    """
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Pooled so that each C-STORE can take and give back a connection cheaply from any thread.
        return PooledSqliteDatabase(
            path or ":memory:",
            max_connections=max_connections,
            stale_timeout=300,
            timeout=30,
            check_same_thread=False,
            # BEGIN IMMEDIATE: a transaction that reads and then writes must not fail at once with
            # SQLITE_BUSY when another connection committed in between (the busy timeout does not apply then).
            lock_type="IMMEDIATE",
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",  # a committed row survives power loss, not only a crash
                "foreign_keys": 1,
                "busy_timeout": 30000,
            },
        )
    if parsed.scheme in ("postgres", "postgresql"):
        return PooledPostgresqlDatabase(
            parsed.path.lstrip("/"),
            user=parsed.username,
            password=parsed.password,
            host=parsed.hostname,
            port=parsed.port or 5432,
            max_connections=max_connections,
            stale_timeout=300,
            timeout=30,
        )
    raise ConfigError(f"storage.database: unsupported scheme {parsed.scheme!r}")


def open_database(url: str, max_connections: int = 32) -> peewee.Database:
    """Bind the models to ``url`` and bring its schema up to date."""
    database = make_database(url, max_connections)
    db.initialize(database)
    migrate(database)
    return database


#: The PostgreSQL advisory lock (transaction-scoped) under which one node at a time brings the schema up to date.
SCHEMA_LOCK = 7355608
TALLY_FOLD_LOCK = 7355609  # one fold of instance_tally at a time (fold_instance_tally)


#: Tries of a start-up step on SQLite that found the database locked (see ``_retry_if_locked``).
LOCKED_TRIES = 8


def _retry_if_locked(database: peewee.Database, work: Callable[[], Any]) -> Any:
    """``work()``, tried again on SQLite when it fails with "database is locked": nodes that open a fresh SQLite
    database at the same moment can be refused at once, without the busy timeout, while one of them switches the
    file to WAL (``PRAGMA journal_mode``). Waits doubling from 50 ms, jittered; the last failure is raised."""
    from gateway.backoff import Backoff

    backoff = Backoff(0.05, 2.0, jitter=True)
    for attempt in range(1, LOCKED_TRIES + 1):
        try:
            return work()
        except peewee.OperationalError as exc:
            if not isinstance(database, peewee.SqliteDatabase) or "locked" not in str(exc) or attempt == LOCKED_TRIES:
                raise
            time.sleep(backoff.wait_s(attempt))
    raise AssertionError("unreachable")


def migrate(database: peewee.Database) -> int:
    """Apply every migration newer than the database's version; return the version reached (on SQLite, tried
    again while the database is locked by another node's start: ``_retry_if_locked``).

    Any number of nodes may start at once, on a fresh database or an old one: one transaction, whose first
    statement takes the schema lock, creates ``schema_version`` and applies the missing steps, so the others wait
    and then find nothing left to do. PostgreSQL: an advisory lock (two concurrent ``CREATE TABLE IF NOT EXISTS``
    collide in the catalogue with an IntegrityError, so the table's creation must be under it too). SQLite: the
    transaction begins IMMEDIATE (``make_database``), which takes the database's write lock at once; the others
    wait for it through the busy timeout."""
    return int(_retry_if_locked(database, lambda: _migrate_once(database)))


def _migrate_once(database: peewee.Database) -> int:
    with database.connection_context(), database.atomic():
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        database.create_tables([SchemaVersion], safe=True)
        # Every number not yet applied, not only those above the highest: branches merged out of order
        # (a database at 12 before 11 was merged) still get each step once.
        applied = {version for (version,) in tuple_rows(SchemaVersion.select(SchemaVersion.version))}
        for version, step in MIGRATIONS:
            if version not in applied:
                step(database)
                SchemaVersion.create(version=version)
                applied.add(version)
    return max(applied, default=0)


def sync_sources(names_and_titles: list[tuple[str, str]]) -> None:
    """Make the ``source`` table hold every configured source (rows are never deleted: studies refer to them).

    Safe when several nodes start at once: one statement per source inserts its row or, when another node's is
    there, sets the AE title where it differs (``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE``, never
    read-then-create); in name order, so that two nodes' transactions never wait on each other round a loop."""
    def upsert() -> None:
        with db.atomic():
            for name, ae_title in sorted(names_and_titles):
                Source.insert(name=name, ae_title=ae_title).on_conflict(
                    conflict_target=[Source.name], update={Source.ae_title: peewee.EXCLUDED.ae_title},
                    where=(Source.ae_title != peewee.EXCLUDED.ae_title)).execute()

    _retry_if_locked(db.obj, upsert)
