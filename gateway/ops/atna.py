"""Audit messages for the hospital's audit record repository (IHE ATNA): DICOM PS3.15 A.5 XML in RFC 5424
syslog, sent over TLS (RFC 5425, octet-counted frames) or UDP (RFC 5426, one message a datagram).

Each row of the gateway's audit trail (:mod:`gateway.ops.audit`) becomes one message. The row holds only the
study's random key; the message names the study and the patient by their original identifiers, read from the
study's identity at the time of sending, because the collector is the hospital's own record of what happened to
its patients' data. Those identifiers go into the message and nowhere else: never into the gateway's log.

The DICOM event of each action (A.5.3) is in :data:`EVENTS`; every message also carries the gateway's own
action name as an event type code (code system ``99SPINEGW``), so the collector can tell a C-STORE received
from a report received.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import AtnaConfig
from gateway.errors import GatewayError

SYSLOG_PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice), as IHE ITI-20 asks
MSGID = "IHE+RFC-3881"
APP_NAME = "spine-gateway"
LOCAL_CODES = "99SPINEGW"
MAX_UDP_BYTES = 65000


class AuditSendError(GatewayError):
    """The collector could not be reached or refused the connection; the rows wait for the next run."""


@dataclass(frozen=True)
class Code:
    code: str
    system: str
    meaning: str

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(parent, tag, {"csd-code": self.code, "codeSystemName": self.system,
                                           "originalText": self.meaning})


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
ACCESSED = _dcm("110103", "DICOM Instances Accessed")
DELETED = _dcm("110105", "DICOM Study Deleted")
IMPORT = _dcm("110107", "Import")
QUERY = _dcm("110112", "Query")
AUTHENTICATION = _dcm("110114", "User Authentication")
SECURITY_ALERT = _dcm("110113", "Security Alert")
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
LOGIN, LOGOUT = _dcm("110122", "Login"), _dcm("110123", "Logout")
START, STOP = _dcm("110120", "Application Start"), _dcm("110121", "Application Stop")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
USER_SECURITY_CHANGED = _dcm("110137", "User Security Attributes Changed")
SOURCE_ROLE, DESTINATION_ROLE = _dcm("110153", "Source Role ID"), _dcm("110152", "Destination Role ID")
APPLICATION_ROLE, LAUNCHER_ROLE = _dcm("110150", "Application"), _dcm("110151", "Application Launcher")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_UID = _dcm("110180", "Study Instance UID")


@dataclass(frozen=True)
class Event:
    """The DICOM audit event of an action, its action code, the standard event type (if any), and who sent
    the data: ``inbound`` the peer to the gateway, ``outbound`` the gateway to the peer, None no transfer."""

    id: Code
    action: str
    type: Code | None = None
    direction: str | None = None


EVENTS: dict[str, Event] = {
    "received": Event(TRANSFERRED, "C", direction="inbound"),
    "report_received": Event(TRANSFERRED, "C", direction="inbound"),
    "sent": Event(TRANSFERRED, "R", direction="outbound"),
    "report_sent": Event(TRANSFERRED, "R", direction="outbound"),
    "oru_sent": Event(TRANSFERRED, "R", direction="outbound"),
    "priors_retrieved": Event(TRANSFERRED, "C", direction="inbound"),  # C-GET: the source's PACS sent a prior
    "priors_queried": Event(QUERY, "E", direction="outbound"),  # C-FIND: the gateway asked the source's PACS
    "deidentified": Event(ACCESSED, "C"),
    "notes_attached": Event(ACCESSED, "C"),
    "report_reidentified": Event(ACCESSED, "U"),
    "web_case_opened": Event(ACCESSED, "R"),
    "web_report_read": Event(ACCESSED, "R"),
    "web_report_pdf": Event(ACCESSED, "R"),
    "web_report_written": Event(ACCESSED, "C"),
    "dicomweb_retrieved": Event(ACCESSED, "R"),
    "dicomweb_searched": Event(QUERY, "E"),
    # the pool worklist (UPS-RS): a claim, its end and the report's completion change who holds the case's data
    "worklist_searched": Event(QUERY, "E"),
    "worklist_claimed": Event(ACCESSED, "U"),
    "worklist_completed": Event(ACCESSED, "U"),
    "worklist_claim_timed_out": Event(ACCESSED, "U"),
    "worklist_claim_given_back": Event(ACCESSED, "U"),
    "worklist_claim_renewed": Event(ACCESSED, "U"),
    "worklist_canceled": Event(ACCESSED, "U"),
    "worklist_cancel_requested": Event(ACCESSED, "E"),
    "dicomweb_token_issued": Event(SECURITY_ALERT, "E", USER_SECURITY_CHANGED),
    "dicomweb_token_revoked": Event(SECURITY_ALERT, "E", USER_SECURITY_CHANGED),
    "purged": Event(DELETED, "D"),
    "referral_received": Event(IMPORT, "C"),
    "web_referral": Event(IMPORT, "C"),
    "web_login": Event(AUTHENTICATION, "E", LOGIN),
    "web_logout": Event(AUTHENTICATION, "E", LOGOUT),
    "association_refused": Event(SECURITY_ALERT, "E", NODE_AUTHENTICATION),
    "user_added": Event(SECURITY_ALERT, "E", USER_SECURITY_CHANGED),
    "user_disabled": Event(SECURITY_ALERT, "E", USER_SECURITY_CHANGED),
    "node_started": Event(APPLICATION_ACTIVITY, "E", START),
    "node_stopped": Event(APPLICATION_ACTIVITY, "E", STOP),
}
QUARANTINE_ACTIONS = ("quarantined", "instance_quarantined", "instance_refused", "refused")
OUTCOMES = {"success": "0", "refused": "4", "failed": "8"}


def event_of(action: str, outcome: str) -> Event:
    """The event of an action; a refusal of data or a quarantine is a security alert, any other action of
    the trail (operators' notes actions, releases, retries) an access to the case's instances."""
    if action in EVENTS:
        return EVENTS[action]
    if action in QUARANTINE_ACTIONS or (outcome == "refused" and action.endswith("_refused")):
        return Event(SECURITY_ALERT, "E")
    return Event(ACCESSED, "U" if action.startswith(("web_", "notes_", "released")) else "E")


@dataclass(frozen=True)
class AuditRow:
    """One row of the trail as the exporter reads it (:class:`gateway.storage.models.AuditEvent`)."""

    id: int
    at: dt.datetime
    action: str
    actor_ae: str | None
    actor_host: str | None
    study_key: str | None
    outcome: str


@dataclass(frozen=True)
class StudyFacts:
    """What the hospital knows the study by: its original identifiers (the collector's, never logged)."""

    study_uid: str
    patient_id: str
    patient_name: str
    accession_number: str


@dataclass(frozen=True)
class Source:
    """The gateway as the audit source and as an active participant."""

    audit_source_id: str
    ae_title: str
    hostname: str
    enterprise_site_id: str | None = None


def build_message(row: AuditRow, source: Source, study: StudyFacts | None) -> bytes:
    """The PS3.15 A.5 ``AuditMessage`` of ``row``, as UTF-8 XML."""
    event = event_of(row.action, row.outcome)
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action, "EventDateTime": _xsd_datetime(row.at),
        "EventOutcomeIndicator": OUTCOMES.get(row.outcome, "4")})
    event.id.element(identification, "EventID")
    if event.type is not None:
        event.type.element(identification, "EventTypeCode")
    Code(row.action, LOCAL_CODES, row.action.replace("_", " ")).element(identification, "EventTypeCode")
    for participant in _participants(row, event, source):
        _active_participant(root, *participant)
    site = {"AuditEnterpriseSiteID": source.enterprise_site_id} if source.enterprise_site_id else {}
    audit_source = ET.SubElement(root, "AuditSourceIdentification", {**site, "AuditSourceID": source.audit_source_id})
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server process
    if study is not None:
        _study_object(root, row, study)
        _patient_object(root, study)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


_Participant = tuple[str, str | None, bool, str | None, Code | None]  # user, alternative, requestor, host, role


def _participants(row: AuditRow, event: Event, source: Source) -> Iterable[_Participant]:
    gateway_id, pid = source.ae_title, str(os.getpid())
    peer = row.actor_ae or (row.actor_host or "unknown")
    if event.direction == "inbound":
        yield peer, None, True, _host(row.actor_host), SOURCE_ROLE
        yield gateway_id, pid, False, source.hostname, DESTINATION_ROLE
    elif event.direction == "outbound":
        yield gateway_id, pid, True, source.hostname, SOURCE_ROLE
        yield peer, None, False, _host(row.actor_host), DESTINATION_ROLE
    elif event.id == APPLICATION_ACTIVITY:
        yield gateway_id, pid, False, source.hostname, APPLICATION_ROLE
        yield row.actor_host or "system", None, True, None, LAUNCHER_ROLE
    else:
        if row.actor_ae or row.actor_host:
            yield peer, None, True, _host(row.actor_host), None
        yield gateway_id, pid, not (row.actor_ae or row.actor_host), source.hostname, None


def _host(actor_host: str | None) -> str | None:
    """A network address; a portal user (``web:<name>``) or an operator's login name is none."""
    if not actor_host or actor_host.startswith("web:") or not any(c in actor_host for c in ".:"):
        return None
    return actor_host


def _active_participant(root: ET.Element, user_id: str, alternative: str | None, requestor: bool,
                        host: str | None, role: Code | None) -> None:
    attributes = {"UserID": user_id, "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attributes["AlternativeUserID"] = alternative
    if host:
        attributes["NetworkAccessPointID"] = host
        attributes["NetworkAccessPointTypeCode"] = "2" if _is_address(host) else "1"
    participant = ET.SubElement(root, "ActiveParticipant", attributes)
    if role is not None:
        role.element(participant, "RoleIDCode")


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _study_object(root: ET.Element, row: AuditRow, study: StudyFacts) -> None:
    study_object = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": study.study_uid, "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3"})
    STUDY_UID.element(study_object, "ParticipantObjectIDTypeCode")
    ET.SubElement(study_object, "ParticipantObjectName").text = row.study_key or ""  # the gateway's case key
    description = ET.SubElement(study_object, "ParticipantObjectDescription")
    if study.accession_number:
        ET.SubElement(description, "Accession", {"Number": study.accession_number})
    if row.action == "sent":
        ET.SubElement(description, "Anonymized").text = "true"  # what left for the reviewer was de-identified


def _patient_object(root: ET.Element, study: StudyFacts) -> None:
    patient = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": study.patient_id or "unknown", "ParticipantObjectTypeCode": "1",
        "ParticipantObjectTypeCodeRole": "1"})
    PATIENT_NUMBER.element(patient, "ParticipantObjectIDTypeCode")
    ET.SubElement(patient, "ParticipantObjectName").text = study.patient_name


def _xsd_datetime(at: dt.datetime) -> str:
    when = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def syslog_message(xml: bytes, hostname: str, at: dt.datetime, procid: int | None = None) -> bytes:
    """RFC 5424: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``, no structured data."""
    header = f"<{SYSLOG_PRI}>1 {_xsd_datetime(at)} {_header_field(hostname, 255)} {APP_NAME} " \
             f"{procid or os.getpid()} {MSGID} - "
    return header.encode("ascii") + b"\xef\xbb\xbf" + xml


def _header_field(value: str, limit: int) -> str:
    printable = "".join(c for c in value if 33 <= ord(c) <= 126)
    return printable[:limit] or "-"


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class Collector:
    """The connection to the audit record repository, opened at the first message of a run and closed after."""

    def __init__(self, config: AtnaConfig) -> None:
        self.config = config
        self._sock: socket.socket | None = None

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: bytes) -> None:
        """Hand one syslog message to the collector (written and flushed: syslog has no acknowledgement)."""
        try:
            if self.config.transport == "udp":
                self._send_udp(message)
            else:
                self._connection().sendall(octet_counted(message))
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise AuditSendError(f"audit collector {self.config.host}:{self.config.port}: "
                                 f"{type(exc).__name__}: {exc}"[:250]) from None

    def _send_udp(self, message: bytes) -> None:
        if len(message) > MAX_UDP_BYTES:
            raise OSError(f"message of {len(message)} bytes is too large for UDP")
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET,
                                       socket.SOCK_DGRAM)
        self._sock.sendto(message, (self.config.host, self.config.port))

    def _connection(self) -> socket.socket:
        if self._sock is None:
            raw = socket.create_connection((self.config.host, self.config.port), timeout=self.config.timeout_s)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._sock = tls_context(self.config).wrap_socket(raw, server_hostname=self.config.host)
            except BaseException:
                raw.close()
                raise
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def tls_context(config: AtnaConfig) -> ssl.SSLContext:
    """TLS 1.2 or later, the collector's certificate checked against ``ca_file`` (and its host name), the
    node's certificate offered when one is configured (mutual authentication)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context
