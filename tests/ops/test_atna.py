"""ATNA: the audit trail as DICOM audit messages (PS3.15 A.5) in RFC 5424 syslog over TLS (RFC 5425) or UDP.

Unit tests check each action's message against the DICOM audit schema (tests/ops/dicom_audit.rng, PS3.15
A.5.1.1 written out in RELAX NG's XML syntax). The node tests run a real node, DCMTK's storescu as the source and
a TLS syslog collector made with Python's ssl and a PKI made by openssl: every message arrives and validates; the
collector down for a while loses nothing; a collector with a certificate of another CA gets nothing; the
patient's original ID reaches the collector and never the node's log.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
from pathlib import Path

import pytest
from lxml import etree

from gateway.config import AtnaConfig
from gateway.demo import DemoPatient, write_demo_study
from gateway.ops import atna
from gateway.ops.atna import AuditRow, Collector, Source, StudyFacts, build_message, octet_counted, syslog_message
from support.peers import GatewayProcess, free_port, storescu, wait_until
from support.pki import make_pki
from support.syslog import SyslogCollector

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).with_name("dicom_audit.rng"))))
SOURCE = Source(audit_source_id="SPINEGW", ae_title="SPINEGW", hostname="gw01.example", enterprise_site_id="NHS-X")
STUDY = StudyFacts(study_uid="1.2.826.0.1.3680043.8.498.1", patient_id="MRN0012345", patient_name="DOE^JANE",
                   accession_number="A1234567")
AT = dt.datetime(2026, 12, 7, 4, 30, 0)
SYSLOG_HEADER = re.compile(rb"^<85>1 2026-12-07T04:30:00\.000Z gw01\.example spine-gateway \d+ IHE\+RFC-3881 - "
                           rb"\xef\xbb\xbf<AuditMessage>")


def _row(action: str, outcome: str = "success", *, ae: str | None = "STMARYS_PACS",
         host: str | None = "127.0.0.1", key: str | None = "k3y0fcase") -> AuditRow:
    return AuditRow(id=1, at=AT, action=action, actor_ae=ae, actor_host=host, study_key=key, outcome=outcome)


def _valid(xml: bytes) -> etree._Element:
    document = etree.fromstring(xml)
    assert SCHEMA.validate(document), SCHEMA.error_log.last_error
    return document


@pytest.mark.parametrize("action", [*atna.EVENTS, "quarantined", "instance_refused", "notes_release", "given_up"])
@pytest.mark.parametrize("outcome", ["success", "refused", "failed"])
def test_every_action_of_the_trail_makes_a_message_the_dicom_audit_schema_accepts(action, outcome):
    _valid(build_message(_row(action, outcome), SOURCE, STUDY))
    _valid(build_message(_row(action, outcome, ae=None, host="web:alice", key=None), SOURCE, None))


def test_the_schema_refuses_a_message_it_should():
    document = etree.fromstring(build_message(_row("received"), SOURCE, STUDY))
    document.remove(document.find("AuditSourceIdentification"))
    assert not SCHEMA.validate(document)


def test_a_received_study_is_instances_transferred_from_the_source_with_the_patients_original_id():
    document = _valid(build_message(_row("received"), SOURCE, STUDY))
    event = document.find("EventIdentification")
    assert (event.get("EventActionCode"), event.get("EventOutcomeIndicator")) == ("C", "0")
    assert event.find("EventID").get("csd-code") == "110104"
    source, destination = document.findall("ActiveParticipant")
    assert (source.get("UserID"), source.get("UserIsRequestor"), source.get("NetworkAccessPointID")) == (
        "STMARYS_PACS", "true", "127.0.0.1")
    assert source.find("RoleIDCode").get("csd-code") == "110153"
    assert (destination.get("UserID"), destination.find("RoleIDCode").get("csd-code")) == ("SPINEGW", "110152")
    study, patient = document.findall("ParticipantObjectIdentification")
    assert (study.get("ParticipantObjectID"), study.find("ParticipantObjectName").text) == (
        STUDY.study_uid, "k3y0fcase")
    assert study.find("ParticipantObjectDescription/Accession").get("Number") == "A1234567"
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCodeRole")) == ("MRN0012345", "1")


def test_a_refused_sign_in_is_a_user_authentication_failure_of_a_login():
    document = _valid(build_message(_row("web_login", "refused", ae=None, host="web:alice", key=None), SOURCE, None))
    event = document.find("EventIdentification")
    assert event.find("EventID").get("csd-code") == "110114"
    assert [code.get("csd-code") for code in event.findall("EventTypeCode")] == ["110122", "web_login"]
    assert event.get("EventOutcomeIndicator") == "4"
    assert document.find("ActiveParticipant").get("UserID") == "web:alice"


def test_a_case_sent_to_a_reviewer_is_marked_anonymized_and_the_gateway_is_the_requestor():
    document = _valid(build_message(_row("sent", ae="REVIEW_A", host="10.1.2.3"), SOURCE, STUDY))
    source, destination = document.findall("ActiveParticipant")
    assert (source.get("UserID"), source.get("UserIsRequestor")) == ("SPINEGW", "true")
    assert (destination.get("UserID"), destination.get("NetworkAccessPointID")) == ("REVIEW_A", "10.1.2.3")
    assert document.find("ParticipantObjectIdentification/ParticipantObjectDescription/Anonymized").text == "true"


def test_refused_associations_and_quarantines_are_security_alerts():
    for action in ("association_refused", "quarantined"):
        document = _valid(build_message(_row(action, "refused"), SOURCE, None))
        assert document.find("EventIdentification/EventID").get("csd-code") == "110113"


def test_the_syslog_message_is_rfc_5424_and_its_tls_frame_is_octet_counted():
    message = syslog_message(b"<AuditMessage></AuditMessage>", "gw01.example", AT)
    assert SYSLOG_HEADER.match(message)
    assert octet_counted(message) == str(len(message)).encode() + b" " + message


def test_udp_carries_one_message_a_datagram():
    port = free_port()
    collector = SyslogCollector(port, transport="udp").start()
    try:
        with Collector(AtnaConfig(enabled=True, transport="udp", port=port)) as sender:
            for n in range(3):
                sender.send(syslog_message(f"<AuditMessage n='{n}'/>".encode(), "gw", AT))
        wait_until(lambda: len(collector.received()) == 3, 10, "three datagrams")
    finally:
        collector.stop()
    assert [SYSLOG_HEADER.sub(b"", m)[-20:] for m in collector.received()][0].endswith(b"n='0'/>")


# --- a real node ----------------------------------------------------------------------------------------------

FAST = {"routing": {"stable_after_s": 30, "poll_s": 0.2}}


def _atna(pki, port: int, **extra) -> dict:
    return {"atna": {"enabled": True, "port": port, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
                     "key_file": str(pki.client_key), "interval_s": 0.3, **extra}}


def _messages(collector: SyslogCollector) -> list[etree._Element]:
    return [etree.fromstring(m.split(b"\xef\xbb\xbf", 1)[1]) for m in collector.received()]


def _type_codes(documents: list[etree._Element]) -> list[str]:
    return [d.findall("EventIdentification/EventTypeCode")[-1].get("csd-code") for d in documents]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def study(tmp_path):
    return write_demo_study(tmp_path / "study", instances=3, rows=64, cols=64)


@pytest.mark.slow
def test_a_node_sends_every_audit_row_over_mutual_tls_and_the_patient_id_stays_out_of_its_log(tmp_path, pki, study):
    port = free_port()
    collector = SyslogCollector(port, cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert).start()
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db", extra={**FAST, **_atna(pki, port)})
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: "received" in _type_codes(_messages(collector)), 60, "the 'received' audit message")
    finally:
        node.stop()
        collector.stop()
    documents = _messages(collector)
    for document in documents:
        assert SCHEMA.validate(document), SCHEMA.error_log.last_error
    codes = _type_codes(documents)
    assert codes[0] == "node_started" and "received" in codes
    received = documents[codes.index("received")]
    patient = received.findall("ParticipantObjectIdentification")[1]
    assert patient.get("ParticipantObjectID") == DemoPatient().patient_id
    assert DemoPatient().patient_id not in node.log_file.read_text()


@pytest.mark.slow
def test_a_collector_down_for_a_while_gets_every_message_in_order_when_it_is_back(tmp_path, pki, study):
    port = free_port()
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db", extra={**FAST, **_atna(pki, port)})
    collector = SyslogCollector(port, cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert)
    try:
        node.start()
        for n in range(3):
            copy = tmp_path / f"copy{n}"
            paths = write_demo_study(copy, instances=2, rows=64, cols=64, seed=n + 1)
            assert storescu("127.0.0.1", node.port, paths, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: _audit_rows(node) >= 4 and _cursor_error(node), 30, "a failed send recorded")
        down = node.status()["audit_export"]
        assert down["waiting"] >= 4 and "Connection refused" in down["last_error"]
        collector.start()
        wait_until(lambda: len(collector.received()) >= _audit_rows(node), 60, "every waiting message")
        wait_until(lambda: node.status()["audit_export"]["last_error"] is None, 30, "the export's error cleared")
    finally:
        node.stop()
        collector.stop()
    codes = _type_codes(_messages(collector))
    assert codes[:4] == ["node_started", "received", "received", "received"]
    assert len(codes) == len(set(m for m in collector.received()))  # none twice


@pytest.mark.slow
def test_a_collector_whose_certificate_another_ca_signed_gets_nothing(tmp_path, pki, study):
    other = make_pki(tmp_path / "other-pki", name="other")
    port = free_port()
    collector = SyslogCollector(port, cert=other.server_cert, key=other.server_key).start()
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db", extra={**FAST, **_atna(pki, port)})
    try:
        node.start()
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in (_cursor_error(node) or ""), 30, "the refused handshake")
    finally:
        node.stop()
        collector.stop()
    assert collector.received() == []


def _audit_rows(node: GatewayProcess) -> int:
    return _scalar(node, "SELECT COUNT(*) FROM audit_event") or 0


def _cursor_error(node: GatewayProcess) -> str | None:
    return _scalar(node, "SELECT last_error FROM export_cursor WHERE name = 'atna'")


def _scalar(node: GatewayProcess, sql: str):
    import sqlite3
    with sqlite3.connect(node.config["storage"]["database"][len("sqlite:///"):], timeout=10) as connection:
        try:
            row = connection.execute(sql).fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


def test_a_node_never_speaks_clear_text_to_a_tls_collector(pki):
    """The sender's only TCP path is the TLS context: a plain listener sees a ClientHello, not a message."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        config = AtnaConfig(enabled=True, port=port, ca_file=pki.ca_cert, timeout_s=2)
        import threading
        seen: list[bytes] = []

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(3)
                seen.append(conn.recv(5))

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        with pytest.raises(atna.AuditSendError), Collector(config) as sender:
            sender.send(syslog_message(b"<AuditMessage/>", "gw", AT))
        thread.join(5)
    assert seen and seen[0][:1] == b"\x16"  # a TLS handshake record, never the syslog frame


def test_a_study_is_named_by_what_arrived_until_its_identity_is_recorded(tmp_path):
    from gateway.stages.atna import studies_by_key
    from gateway.storage.models import Study, StudyIdentity, StudyMatchKeys, db, open_database

    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=2)
    try:
        with db.connection_context():
            arrived = Study.create(study_uid="1.2.3", calling_ae="STMARYS_PACS")
            StudyMatchKeys.create(study=arrived, patient_id="MRN-ARRIVAL", accession_number="ACC1")
            known = Study.create(study_uid="1.2.4", calling_ae="STMARYS_PACS")
            StudyMatchKeys.create(study=known, patient_id="MRN-ARRIVAL-2", accession_number="ACC2")
            StudyIdentity.create(study=known, patient_id="MRN-IDENTITY", patient_name="DOE^JANE",
                                 accession_number="ACC2")
            facts = studies_by_key({arrived.key, known.key, "purged-case"})
    finally:
        database.close_all()
    assert facts[arrived.key] == StudyFacts("1.2.3", "MRN-ARRIVAL", "", "ACC1")
    assert facts[known.key] == StudyFacts("1.2.4", "MRN-IDENTITY", "DOE^JANE", "ACC2")
    assert "purged-case" not in facts
