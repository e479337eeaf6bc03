"""The gateway's configuration: one validated object, read before anything else starts.

Sources, in order of precedence (later wins):

1. the YAML file (``--config PATH``, else ``$SPINE_GATEWAY_CONFIG``, else ``/etc/spine-gateway/gateway.yaml``,
   else the repository's ``config/gateway.yaml``: :func:`find_config`);
2. environment variables ``SPINE_GATEWAY__<SECTION>__<KEY>`` (e.g. ``SPINE_GATEWAY__NODE__PORT=11113``),
   read by pydantic-settings from the model itself, so every option can be overridden without a hand-kept
   list (a list or mapping value is written as JSON: ``SPINE_GATEWAY__ROUTING__BODY_PARTS='["LSPINE"]'``);
3. the command-line flags that were actually passed.

``GatewayConfig`` is a pydantic-settings root and ``load_config`` builds its three sources itself (flags as
init values, the environment it is given, the file), so a test's dict environment is read without touching
``os.environ``. Every model refuses unknown keys, so a misspelt key is an error naming the key and the file
(and the variable, when the environment set it), never silently ignored: that holds for a prefixed variable
naming no section too, which pydantic-settings alone would ignore. ``config/gateway.yaml`` documents every
option next to its default, and a test checks that it lists every field of these models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from gateway.deid.options import DeidOptions
from gateway.errors import ConfigError

SECONDS = float
BYTES = int
DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
SYSTEM_CONFIG_PATH = Path("/etc/spine-gateway/gateway.yaml")
REPOSITORY_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "gateway.yaml"
CONFIG_PATH_ENV = "SPINE_GATEWAY_CONFIG"
ENV_PREFIX = "SPINE_GATEWAY__"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: 16 chars, no backslash


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError("must be 1-16 printable characters without a backslash")
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TLSConfig(_Section):
    """TLS on the DICOM port (DICOM PS3.15 Annex B.1, the TLS secure transport profile)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSConfig:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("cert_file and key_file are required when enabled is true")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("ca_file is required when require_client_cert is true")
        return self


class NodeConfig(_Section):
    """The gateway's own DICOM application entity."""

    ae_title: AETitle = "SPINEGW"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(20, ge=1, le=1000)
    max_pdu_bytes: BYTES = Field(1_048_576, ge=0)
    acse_timeout_s: SECONDS = Field(30.0, gt=0)
    dimse_timeout_s: SECONDS = Field(60.0, gt=0)
    network_timeout_s: SECONDS = Field(60.0, gt=0)
    negotiation_timeout_s: SECONDS = Field(5.0, gt=0)
    max_pending_per_host: int = Field(16, ge=1, le=1000)
    max_associations_per_peer: int | None = Field(None, ge=1, le=1000)
    max_associations_per_host: int | None = Field(None, ge=1, le=1000)
    association_rate_per_peer: float | None = Field(20.0, gt=0)
    max_instance_bytes: BYTES = Field(2 * 1024**3, ge=1024)
    store_commit_timeout_s: SECONDS = Field(5.0, gt=0)
    receiving_processes: int | None = Field(None, ge=0, le=16)  # le: receiving_process.MAX_RECEIVING_PROCESSES
    tls: TLSConfig = TLSConfig()

    @property
    def ae_share(self) -> int:
        """Associations one calling AE title may hold at once: ``max_associations_per_peer``, else a quarter of
        ``max_associations`` and at least 2, so that one peer never takes every slot."""
        share = self.max_associations_per_peer or max(2, self.max_associations // 4)
        return min(share, self.max_associations)

    @property
    def host_share(self) -> int:
        """Associations one calling host may hold at once: ``max_associations_per_host``, else half of
        ``max_associations`` and at least the AE title's share (a PACS may call with several AE titles)."""
        share = self.max_associations_per_host or max(self.ae_share, self.max_associations // 2)
        return min(share, self.max_associations)


class StorageConfig(_Section):
    """Where received instances and the database live."""

    spool_dir: Path = Path("var/spool")
    database: str = "sqlite:///var/gateway.db"
    min_free_bytes: BYTES = Field(1_073_741_824, ge=0)

    @field_validator("database")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgres|postgresql)://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class LoggingConfig(_Section):
    """Structured logs: one JSON object a line in ``file``, a readable rendering on the console."""

    format: Literal["json", "console"] = "json"
    file: Path | None = Path("var/log/routing.jsonl")
    level: Literal["debug", "info", "warning", "error"] = "info"
    max_bytes: BYTES = Field(50_000_000, ge=1024)
    backups: int = Field(10, ge=0)


class PeerTLSConfig(_Section):
    """TLS on the associations the gateway opens to one peer (PS3.15 B.1; TLS 1.2 or later). A peer with
    ``enabled`` is only ever contacted through TLS: its certificate must be signed by ``ca_file`` and name
    ``server_name`` (default: the peer's host); the gateway's own certificate is offered when given."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _files(self) -> PeerTLSConfig:
        if self.enabled and self.ca_file is None:
            raise ValueError("ca_file is required when enabled is true (a peer is never trusted blind)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class DicomPeer(_Section):
    """An application entity the gateway connects to."""

    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    tls: PeerTLSConfig = PeerTLSConfig()


class Hl7ResultsConfig(_Section):
    """Where a source's RIS/EHR takes the report as an HL7 v2 ORU^R01 over MLLP (plain TCP), and how long the
    gateway waits for its ACK (connecting, sending and reading the answer together)."""

    host: str
    port: int = Field(ge=1, le=65535)
    receiving_application: str = Field("", max_length=180)
    receiving_facility: str = Field("", max_length=180)
    timeout_s: SECONDS = Field(30.0, gt=0)


class SourceConfig(_Section):
    """A hospital or imaging centre allowed to send studies, and where its reports go back to (DICOM
    ``return``; and, with ``hl7_results``, as an ORU^R01 to its RIS/EHR)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    ae_title: AETitle
    host: str | None = None
    return_: DicomPeer | None = Field(None, alias="return")
    hl7_results: Hl7ResultsConfig | None = None
    # The source's PACS as a Query/Retrieve SCP (Study Root C-FIND and C-GET): with it, each case's earlier
    # studies of the patient that the ``priors`` rules select go to the reviewer with the case.
    query_retrieve: DicomPeer | None = None
    locale: str = Field("en-GB", pattern=r"^[a-z]{2}-[A-Z]{2}$")
    date_order: Literal["day_first", "month_first"] | None = None
    # The lines at the top of the hospital's copy of a report PDF (its name, department, address); empty: the
    # source's name. The copy also carries the patient's identity, re-identified as the SR is.
    letterhead: list[Annotated[str, StringConstraints(max_length=120)]] = Field(default_factory=list, max_length=6)
    critical_emails: list[str] = Field(default_factory=list)  # told of a critical result of this source's cases
    critical_webhooks: list[str] = Field(default_factory=list)  # POSTed a JSON notice (http:// or https://)

    @property
    def day_first(self) -> bool:
        """How the source's referrals write numeric dates: ``date_order``, else month first for en-US only."""
        if self.date_order is not None:
            return self.date_order == "day_first"
        return self.locale != "en-US"


_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class ReviewerConfig(_Section):
    """A reviewer in the second-opinion pool: its workstation's DICOM address, what it reads and when.

    ``calling_hosts``: the addresses its associations (reports) may come from, as a source's ``host``; empty
    (the default) admits its AE title from any host. ``modalities`` empty means every modality. ``hours`` is
    ``HH:MM-HH:MM`` in ``timezone`` (an IANA name);
    ``00:00-24:00`` is always on, and a range whose end is before its start runs over midnight.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_hosts: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    subspecialties: list[str] = Field(default_factory=list)
    max_open_cases: int = Field(10, ge=1)
    hours: str = "00:00-24:00"
    timezone: str = "UTC"
    urgent: bool = True
    enabled: bool = True
    # How cases reach it: ``push`` (C-STORE to its PACS, as assigned) or ``pull`` (it claims cases from the pool
    # worklist, UPS-RS, and reads them over DICOMweb; nothing is sent to ``host``/``port``).
    mode: Literal["push", "pull"] = "push"
    # The reviewer answers C-FIND (Study Root, IMAGE level): after an interrupted delivery the node asks which
    # objects it already has and sends only the others (exactly once); without it they are sent again.
    query: bool = False
    # The reviewer is a Storage Commitment SCP: a delivery counts as done only once the reviewer has committed
    # every object (N-ACTION after the C-STOREs, its N-EVENT-REPORT back on a new association to the gateway);
    # without its report within ``commitment_wait_s`` the node asks again (an attempt of the study leg).
    storage_commitment: bool = False
    commitment_wait_s: SECONDS = Field(300.0, gt=0)
    tls: PeerTLSConfig = PeerTLSConfig()  # the associations the gateway opens to this reviewer
    # Who signs the reports written in the portal under this reviewer's account: a DICOM person name
    # (Family^Given^Middle^Prefix^Suffix); set, the report is VERIFIED with it; null: UNVERIFIED.
    signing_name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\\=]+$")
    qualification: str | None = Field(None, min_length=1, max_length=64)  # e.g. "FRCR, consultant neuroradiologist"
    organization: str | None = Field(None, min_length=1, max_length=64)  # the reviewing service, as signed

    @field_validator("hours")
    @classmethod
    def _hours_range(cls, value: str) -> str:
        match = _HOURS.match(value)
        if not match or (match.group(3) == "24" and match.group(4) != "00"):
            raise ValueError("must be HH:MM-HH:MM, e.g. 08:00-18:00 (00:00-24:00 = always)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone name, e.g. Europe/London") from None
        return value

    @field_validator("modalities", "subspecialties")
    @classmethod
    def _upper_or_lower(cls, value: list[str]) -> list[str]:
        return [v.strip() for v in value if v.strip()]


class HttpConfig(_Section):
    """The one HTTP server: /healthz, /metrics, POST /referrals and the web portal."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token_env: str = "SPINE_GATEWAY_API_TOKEN"
    portal: bool = True
    dicomweb: bool = True
    session_hours: float = Field(8.0, gt=0, le=24 * 30)
    secure_cookies: bool = False
    login_attempts_per_minute: int = Field(10, ge=1, le=1000)
    login_attempts_per_address_per_minute: int = Field(30, ge=1, le=10000)
    login_attempts_global_per_minute: int = Field(120, ge=1, le=100000)
    password_hash_concurrency: int = Field(2, ge=1, le=16)
    password_hash_wait_s: SECONDS = Field(5.0, gt=0, le=60)
    request_header_timeout_s: SECONDS = Field(10.0, gt=0, le=300)
    request_body_timeout_s: SECONDS = Field(30.0, gt=0, le=3600)
    keep_alive_s: SECONDS = Field(5.0, gt=0, le=300)
    max_body_bytes: BYTES = Field(1_048_576, ge=1024, le=100 * 1024 * 1024)
    max_connections: int = Field(512, ge=1, le=100000)
    max_connections_per_client: int = Field(32, ge=1, le=100000)
    health_probe_timeout_s: SECONDS = Field(5.0, gt=0, le=60)
    health_cache_s: SECONDS = Field(2.0, ge=0, le=60)


class DeidConfig(DeidOptions):
    """De-identification (PS3.15 Annex E): the profile options plus where the pseudonym key comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_env: str = "SPINE_GATEWAY_SECRET"
    secret_file: Path | None = None
    workers: int | None = Field(None, ge=0)
    # Each batch of a case's instances (gateway.stages.deid.CHUNK, 32) is de-identified (OCR included) within this
    # long in the worker processes; past it they are killed and the case quarantined (issue 28). Not with workers 0.
    time_budget_s: SECONDS = Field(300.0, gt=0)

    def options(self) -> DeidOptions:
        return DeidOptions(**self.model_dump(exclude={"secret_env", "secret_file", "workers", "time_budget_s"}))


class ReferralsConfig(_Section):
    """How studies wait for their referral, and whether a person approves the scrubbed notes."""

    wait_s: SECONDS = Field(86400.0, ge=0)
    on_timeout: Literal["route", "hold"] = "route"
    require_approval: bool = False
    # Scrubbing and building one case's notes runs in a worker process for at most this long; past it the
    # worker is killed and the case quarantined ("time budget exceeded"), while other cases go on (issue 28).
    time_budget_s: SECONDS = Field(120.0, gt=0)
    workers: int | None = Field(None, ge=0)  # notes jobs at once; None: one per core; 0: in the stage, no budget


class Hl7Config(_Section):
    """HL7 v2 orders (ORM^O01, OMI^O23) over MLLP. ``facilities`` maps MSH-4 to a source name."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=0, le=65535)
    facilities: dict[str, str] = Field(default_factory=dict)


SPINE_BODY_PARTS = ["SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "CTSPINE", "TLSPINE", "LSSPINE",
                    "WHOLESPINE", "COCCYX", "SACRUM", "LUMBAR", "CERVICAL", "THORACIC", "SPINALCORD"]
SPINE_KEYWORDS = ["SPINE", "SPINAL", "LUMBAR", "CERVICAL", "THORACIC", "SACR", "COCCY", "L-SPINE", "C-SPINE",
                  "T-SPINE", "LWS", "HWS", "BWS", "WIRBELSAEULE", "RACHIS"]


class SlaConfig(_Section):
    """Hours a reviewer has to send the report, counted from the assignment."""

    urgent: float = Field(24.0, gt=0)
    routine: float = Field(120.0, gt=0)


class RetryConfig(_Section):
    """Delivery retries: exponential backoff from ``initial_s`` doubling up to ``max_s``, with jitter."""

    max_attempts: int = Field(12, ge=1)
    initial_s: SECONDS = Field(5.0, gt=0)
    max_s: SECONDS = Field(600.0, gt=0)


class CommitmentConfig(_Section):
    """Storage Commitment (Push Model) as SCP: each report (N-EVENT-REPORT) goes to the requesting source's
    ``return`` address in a new association; one that does not get through is tried again after waits doubling
    from ``initial_s`` up to ``max_s`` (jittered), ``max_attempts`` times in all, then left ``failed`` in
    ``status`` for an operator. ``max_instances``: the most SOP instances one request may name (more: refused)."""

    max_attempts: int = Field(20, ge=1)
    initial_s: SECONDS = Field(5.0, gt=0)
    max_s: SECONDS = Field(600.0, gt=0)
    max_instances: int = Field(10000, ge=1)


class CriticalConfig(_Section):
    """Critical results: a reviewer flags a report critical (and says whom to call); each address of the case's
    source (``sources[].critical_emails``, ``critical_webhooks``) is told at once, by e-mail (SMTP) or an HTTP
    POST (JSON), with no PHI: only the source and a link to the portal. A notice that does not get through is
    tried again after waits doubling from ``initial_s`` up to ``max_s``, ``max_attempts`` times in all. A
    critical result the referrer has not acknowledged in the portal after ``escalate_after_s`` is escalated to
    ``ops_emails`` and ``ops_webhooks``."""

    portal_url: str = Field("http://127.0.0.1:8080", max_length=200)  # the links' base, as the readers reach it
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    sender: str = Field("spine-gateway@localhost", max_length=200)
    timeout_s: SECONDS = Field(10.0, gt=0)
    escalate_after_s: SECONDS = Field(1800.0, gt=0)
    ops_emails: list[str] = Field(default_factory=list)
    ops_webhooks: list[str] = Field(default_factory=list)
    max_attempts: int = Field(20, ge=1)
    initial_s: SECONDS = Field(5.0, gt=0)
    max_s: SECONDS = Field(600.0, gt=0)


class CaseFailuresConfig(_Section):
    """A stage's step that raises on one case: the case backs off (doubling from ``initial_s`` up to ``max_s``)
    and, after ``max_failures``, goes to QUARANTINED, FAILED or REPORT_FAILED with the error as its reason."""

    max_failures: int = Field(5, ge=1)
    initial_s: SECONDS = Field(10.0, gt=0)
    max_s: SECONDS = Field(600.0, gt=0)


class RoutingConfig(_Section):
    """Completion, the spine filter, reviewer assignment, delivery retries, SLAs and peer checks."""

    stable_after_s: SECONDS = Field(60.0, ge=0)
    poll_s: SECONDS = Field(5.0, gt=0)
    wakeups: bool = True
    claim_lease_s: SECONDS = Field(120.0, gt=0)
    body_parts: list[str] = Field(default_factory=lambda: list(SPINE_BODY_PARTS))
    keywords: list[str] = Field(default_factory=lambda: list(SPINE_KEYWORDS))
    sla_h: SlaConfig = SlaConfig()
    reassign_after_sla: bool = False
    retry: RetryConfig = RetryConfig()
    case_failures: CaseFailuresConfig = CaseFailuresConfig()
    echo_interval_s: SECONDS = Field(60.0, gt=0)
    pool_claim_timeout_s: SECONDS = Field(14400.0, gt=0)


PRIOR_MODALITIES = ["MR", "CT", "CR", "DX"]


class PriorsConfig(_Section):
    """Earlier studies of the patient (priors) fetched from a source's ``query_retrieve`` PACS once its case is
    de-identified: at most ``max_priors``, the newest first, no older than ``max_years`` before the case's study,
    with one of ``modalities`` and a series whose Body Part Examined is one of ``body_parts`` (or, with none, a
    study description holding one of them). The case waits for them at most ``wait_s``, then goes without
    (its notes say so)."""

    max_priors: int = Field(3, ge=0, le=20)
    max_years: float = Field(10.0, gt=0)
    modalities: list[str] = Field(default_factory=lambda: list(PRIOR_MODALITIES))
    body_parts: list[str] = Field(default_factory=lambda: list(SPINE_BODY_PARTS))
    wait_s: SECONDS = Field(300.0, gt=0)


class QuarantineConfig(_Section):
    """What is kept of refused C-STOREs, per calling AE title: past either budget, a refusal is answered and
    its bytes dropped, so that a peer sending garbage cannot fill the spool or the table."""

    max_bytes_per_peer: BYTES = Field(1024**3, ge=0)
    max_objects_per_peer: int = Field(1000, ge=0)


class AtnaConfig(_Section):
    """Audit messages (DICOM PS3.15 A.5, IHE ATNA) for the hospital's audit record repository: every row of
    the audit trail, sent as RFC 5424 syslog over TLS (RFC 5425) or UDP (RFC 5426). Rows wait in the database
    while the collector is down and go in order when it is back."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tls", "udp"] = "tls"
    ca_file: Path | None = None  # the collector's CA (TLS: required)
    cert_file: Path | None = None  # the node's client certificate, when the collector asks for one
    key_file: Path | None = None
    audit_source_id: str | None = Field(None, max_length=64)  # default: the node's AE title
    enterprise_site_id: str | None = Field(None, max_length=64)
    interval_s: SECONDS = Field(5.0, gt=0)
    batch: int = Field(200, ge=1, le=10000)
    timeout_s: SECONDS = Field(10.0, gt=0, le=300)
    from_start: bool = False  # first run: send the whole audit trail (default: from the first run on)

    @model_validator(mode="after")
    def _tls_files(self) -> AtnaConfig:
        if self.enabled and self.transport == "tls" and self.ca_file is None:
            raise ValueError("ca_file is required when transport is tls (a collector is never trusted blind)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class RetentionConfig(_Section):
    """How long originals stay in the spool once the report is home."""

    days: int = Field(30, ge=0)


class GatewayConfig(BaseSettings):
    """The whole configuration, handed down whole.

    A pydantic-settings root: ``load_config`` gives it its three sources (flags, environment, file). Built
    directly (``GatewayConfig(...)``, ``model_validate``), it reads only what it is given: no environment, no file.
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=False,
                                      env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False)

    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig = HttpConfig()
    deid: DeidConfig = DeidConfig()
    referrals: ReferralsConfig = ReferralsConfig()
    hl7: Hl7Config = Hl7Config()
    routing: RoutingConfig = RoutingConfig()
    retention: RetentionConfig = RetentionConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    atna: AtnaConfig = AtnaConfig()
    commitment: CommitmentConfig = CommitmentConfig()
    priors: PriorsConfig = PriorsConfig()
    critical: CriticalConfig = CriticalConfig()
    sources: list[SourceConfig] = Field(default_factory=list)
    reviewers: list[ReviewerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_peers(self) -> GatewayConfig:
        for kind, peers in (("sources", self.sources), ("reviewers", self.reviewers)):
            names = [p.name for p in peers]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name {dupes[0]!r}")
        titles = [p.ae_title for p in self.sources] + [p.ae_title for p in self.reviewers]
        dupes = sorted({t for t in titles if titles.count(t) > 1})
        if dupes:
            raise ValueError(f"AE title {dupes[0]!r} is used by more than one source or reviewer")
        unknown = sorted(set(self.hl7.facilities.values()) - {s.name for s in self.sources})
        if unknown:
            raise ValueError(f"hl7.facilities: {unknown[0]!r} is not a configured source")
        if not self.sources and not self.reviewers:
            raise ValueError("sources: at least one source or reviewer is required "
                             "(an empty allowlist would accept anyone)")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed: the environment and the file are ``load_config``'s to add, so that a test
        or a tool building a config from a dict never picks up a developer's ``SPINE_GATEWAY__*``."""
        return (init_settings,)

    def secret_path(self) -> Path:
        """Where the pseudonym key is kept when the environment does not give it: beside the SQLite database,
        or, with PostgreSQL, in the spool directory (which several nodes share)."""
        if self.deid.secret_file is not None:
            return Path(self.deid.secret_file)
        if self.storage.database.startswith("sqlite:///"):
            return Path(self.storage.database[len("sqlite:///"):]).parent / "secret.key"
        return Path(self.storage.spool_dir) / "secret.key"

    def source_by_ae(self, ae_title: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.ae_title == ae_title), None)

    def reviewer_by_ae(self, ae_title: str) -> ReviewerConfig | None:
        return next((r for r in self.reviewers if r.ae_title == ae_title), None)


def find_config(path: Path | str | None, environ: Mapping[str, str]) -> Path:
    """The configuration file: ``path`` (``--config``), else ``$SPINE_GATEWAY_CONFIG``, else
    ``/etc/spine-gateway/gateway.yaml``, else the repository's ``config/gateway.yaml`` (beside the package, so
    that the CLI finds it from any directory), else ``config/gateway.yaml`` of the working directory."""
    if path or environ.get(CONFIG_PATH_ENV):
        return Path(path or environ[CONFIG_PATH_ENV])
    for candidate in (SYSTEM_CONFIG_PATH, REPOSITORY_CONFIG_PATH):
        if candidate.is_file():
            return candidate
    return DEFAULT_CONFIG_PATH


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Read, merge and validate the configuration: ``overrides`` (the flags passed), then ``environ`` (the
    process environment when None; a test's dict is read as it is, ``os.environ`` untouched), then the file.

    Raises:
        ConfigError: the file is missing or unreadable, or a key, type or value is wrong. Its message is
            one line naming the file and the key (and the environment variable, when one set it).
    """
    environ = os.environ if environ is None else environ
    config_path = find_config(path, environ)
    sources = (
        InitSettingsSource(GatewayConfig, init_kwargs=overrides or {}),
        _EnvironmentSource(GatewayConfig, environ),
        _YamlFileSource(GatewayConfig, config_path),
    )
    try:
        return GatewayConfig(_build_sources=(sources, {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, environ, config_path)) from None
    except SettingsError as exc:  # an environment value that must be JSON (a list, a section) is not
        raise ConfigError(f"environment: {exc.__cause__ or exc}") from None


class _YamlFileSource(YamlConfigSettingsSource):
    """The YAML file, read by ``_read_yaml``: unlike pydantic-settings' own reading, a missing file, a YAML
    syntax error or a top level that is no mapping is a ConfigError naming the file, and keys keep their case
    (``Node:`` is an unknown key, as every nested key is)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, yaml_file=path)
        self.init_kwargs = dict(self.yaml_data)

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        return _read_yaml(Path(files))


class _EnvironmentSource(EnvSettingsSource):
    """``SPINE_GATEWAY__<SECTION>__<KEY>`` from the given mapping instead of ``os.environ``.

    pydantic-settings drops a prefixed variable that names no section; this source hands it on as an extra key,
    so that ``SPINE_GATEWAY__NOED__PORT`` is refused like any unknown key rather than silently ignored.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        prefix = self.env_prefix.lower()
        for name, value in self.env_vars.items():
            section = name[len(prefix):].split(self.env_nested_delimiter or "__")[0] if name.startswith(prefix) else ""
            if section and section not in self.settings_cls.model_fields:
                data[section] = value
        return data

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            raise ValueError(f"{_variable_named(field_name, value, self._environ)}: not valid JSON "
                             "(a list or a section is written as JSON, e.g. '[\"SPINE\", \"LUMBAR\"]')") from None


def _variable_named(key: str, value: str, environ: Mapping[str, str]) -> str:
    """The prefixed environment variable that gave ``key`` its ``value`` (for error messages)."""
    suffix = key.upper()
    for name, given in environ.items():
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and (upper == ENV_PREFIX + suffix or upper.endswith("__" + suffix)):
            if given == value:
                return name
    return ENV_PREFIX + suffix


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _variables_under(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> list[str]:
    """The prefixed environment variables that set the key at ``loc``: the one naming it, else those inside it."""
    if not loc:
        return []
    key = ENV_PREFIX + "__".join(str(p) for p in loc).upper()
    names = sorted(name for name in environ if name.upper() == key or name.upper().startswith(key + "__"))
    return [name for name in names if name.upper() == key] or names


def _describe(exc: ValidationError, environ: Mapping[str, str], config_path: Path) -> str:
    """All problems, each as ``where: key.path: message``, joined on one line: ``where`` is the file, or, for a
    key set from the environment, its variable (``environment SPINE_GATEWAY__NODE__PORT: node.port: ...``),
    since the file does not hold that value."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        variables = _variables_under(error["loc"], environ)
        where = (f"environment {', '.join(variables)}: {where}" if variables else f"{config_path}: {where}")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in error and error["type"] not in ("missing",) and not isinstance(error["input"], dict):
            message += f" (got {error['input']!r})"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
