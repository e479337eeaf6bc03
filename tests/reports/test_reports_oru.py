"""The report as HL7 v2 ORU^R01 to the source's RIS/EHR (issue 25).

Unit tests of the message (read back with hl7apy), of the ACK reading and of the MLLP client against a real
listener; then one site (hospital Orthanc, gateway, reviewer Orthanc) whose source has ``hl7_results`` pointing at
a minimal MLLP listener of this test, which answers AA; then AE and AA (retried); then AR (failed, not retried).
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import threading
from pathlib import Path

import peewee
import pytest
from hl7apy.parser import parse_message
from pydicom.dataset import Dataset
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.demo import write_demo_study
from gateway.errors import MllpError, MllpTimeout
from gateway.mllp.client import END_BLOCK, exchange, frame
from gateway.referral.hl7 import parse_hl7_referral, unescape
from gateway.reports.oru import (
    ENCAPSULATED_PDF,
    AckError,
    OruReport,
    build_oru,
    read_ack,
    report_pdf,
    report_text,
)
from gateway.stages.oru import OruStage
from gateway.stages.reports import ReportStage
from gateway.storage.models import AuditEvent, CaseState, ResultMessage, Study, utcnow
from report_peers import PATIENT, reviewer_images, reviewer_sr, start_site
from support.peers import wait_until
from support.scu import send

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
AWKWARD = "Pipes | carets ^ tildes ~ backslashes \\ and ampersands & stay text: C:\\dir\\F\\"


def _report(**changes) -> OruReport:
    values = dict(control_id="c0ffee", sending_application="SPINEGW", receiving_application="RIS",
                  receiving_facility="ST-MARYS", patient_id="PAT^001", patient_name="O'Brien^Mary Jane^^Dr",
                  birth_date="19710412", sex="F", accession_number="ACC|42", order_number="ORD&7",
                  title=("18748-4", "Diagnostic imaging study", "LN"),
                  text_lines=["Finding: L4-L5 disc extrusion.", "", AWKWARD], pdf=PDF,
                  reported_at=dt.datetime(2026, 12, 7, 5, 40, tzinfo=dt.UTC))
    values.update(changes)
    return OruReport(**values)


def _segments(er7: bytes, name: str) -> list[list[str]]:
    return [line.split("|") for line in er7.decode().split("\r") if line.startswith(name + "|")]


# --- the message --------------------------------------------------------------------------------------------


def test_oru_reads_back_with_hl7apy():
    er7 = build_oru(_report())
    message = parse_message(er7.decode(), find_groups=False)
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_10.to_er7() == "c0ffee" and message.msh.msh_12.to_er7() == "2.5"
    assert message.msh.msh_3.to_er7() == "SPINEGW" and message.msh.msh_5.to_er7() == "RIS"
    assert unescape(message.pid.pid_3.to_er7()) == "PAT^001", "the ORIGINAL patient ID, escaped"
    assert [unescape(c.to_er7()) for c in message.pid.pid_5.children][:2] == ["O'Brien", "Mary Jane"]
    assert message.pid.pid_7.to_er7() == "19710412"
    assert unescape(message.obr.obr_2.to_er7()) == "ORD&7"
    assert unescape(message.obr.obr_3.to_er7()) == "ACC|42" == unescape(message.obr.obr_18.to_er7())
    assert message.obr.obr_25.to_er7() == "F"
    observations = [s for s in message.children if s.name == "OBX"]
    assert [o.obx_2.to_er7() for o in observations] == ["TX", "TX", "TX", "ED"]
    assert [o.obx_1.to_er7() for o in observations] == ["1", "2", "3", "4"]
    assert all(o.obx_11.to_er7() == "F" for o in observations)


def test_oru_is_a_valid_oru_r01_for_hl7apy_strict():
    """The v2.5 ORU_R01 structure and data types, checked by hl7apy at its STRICT level. With a tiny PDF: hl7apy
    1.3.5 holds ED data to 199 characters when strict (HL7 v2.5 itself allows OBX-5 99,999)."""
    from hl7apy.consts import VALIDATION_LEVEL

    message = parse_message(build_oru(_report(pdf=b"%PDF-1.4 tiny")).decode(), find_groups=True,
                            validation_level=VALIDATION_LEVEL.STRICT)
    assert message.name == "ORU_R01" and message.validate()


def test_oru_text_is_escaped_and_comes_back_as_written():
    er7 = build_oru(_report())
    texts = [fields[5] for fields in _segments(er7, "OBX") if fields[2] == "TX"]
    assert all(len(fields) == 12 for fields in _segments(er7, "OBX")), "no separator leaked into a field"
    assert texts[2] == ("Pipes \\F\\ carets \\S\\ tildes \\R\\ backslashes \\E\\ and ampersands \\T\\ stay text: "
                        "C:\\E\\dir\\E\\F\\E\\")
    assert [unescape(text) for text in texts] == ["Finding: L4-L5 disc extrusion.", "", AWKWARD]
    (pid,) = _segments(er7, "PID")
    assert pid[3] == "PAT\\S\\001" and pid[5] == "O'Brien^Mary Jane^^Dr"


def test_oru_pdf_decodes_to_the_same_bytes():
    er7 = build_oru(_report())
    message = parse_message(er7.decode(), find_groups=False)
    (document,) = [s for s in message.children if s.name == "OBX" and s.obx_2.to_er7() == "ED"]
    components = document.obx_5.to_er7().split("^")
    assert components[1:4] == ["application", "pdf", "Base64"]
    assert base64.b64decode(components[4], validate=True) == PDF


def test_oru_line_breaks_cannot_end_a_segment():
    er7 = build_oru(_report(text_lines=["one\rtwo\nthree"]))
    assert [fields[0] for fields in (line.split("|") for line in er7.decode().split("\r") if line)] == \
        ["MSH", "PID", "ORC", "OBR", "OBX", "OBX"]


def test_oru_corrected_report_says_c():
    er7 = build_oru(_report(result_status="C"))
    assert _segments(er7, "OBR")[0][25] == "C" and {f[11] for f in _segments(er7, "OBX")} == {"C"}


@pytest.mark.parametrize(("change", "problem"), [
    ({"patient_id": " "}, "patient ID"), ({"accession_number": ""}, "accession"), ({"pdf": b""}, "PDF"),
    ({"control_id": "x" * 21}, "MSH-10"), ({"result_status": "P"}, "OBR-25")])
def test_oru_refuses_incomplete_content(change, problem):
    with pytest.raises(ValueError, match=problem):
        _report(**change)


def test_oru_is_no_referral_order():
    """The gateway's own HL7 listener must not take its ORU for an order (MSH-9 is refused)."""
    from gateway.referral.errors import HL7ParseError

    with pytest.raises(HL7ParseError, match="MSH-9"):
        parse_hl7_referral(build_oru(_report()), {"SPINEGW": "st-marys"})


ORM = (Path(__file__).parent.parent / "referral" / "fixtures" / "orm_o01.hl7").read_bytes()


def test_the_referral_keeps_the_placer_order_number():
    """ORC-2 (else OBR-2): the number the ORU's OBR-2 sends back."""
    assert parse_hl7_referral(ORM, {"STMARYS": "st-marys"}).order_number == "PLC123"
    without_orc = ORM.replace(b"ORC|NW|PLC123^RIS|", b"ORC|NW||")
    assert parse_hl7_referral(without_orc, {"STMARYS": "st-marys"}).order_number == "PLC123", "from OBR-2"
    neither = without_orc.replace(b"OBR|1|PLC123^RIS|", b"OBR|1||")
    assert parse_hl7_referral(neither, {"STMARYS": "st-marys"}).order_number is None


def test_report_text_and_pdf_of_an_sr_and_of_an_encapsulated_pdf():
    images = [_image(n) for n in (1, 2)]
    sr = reviewer_sr(images, text="Disc extrusion.\nNo fracture.")
    lines = report_text(sr)
    assert lines == ["MRI Spine Report", "Finding: Disc extrusion.", "No fracture."]
    assert report_pdf(sr, lines).startswith(b"%PDF")
    encapsulated = Dataset()
    encapsulated.SOPClassUID = ENCAPSULATED_PDF
    encapsulated.DocumentTitle = "Second opinion"
    encapsulated.EncapsulatedDocument = PDF + b"\0"
    encapsulated.EncapsulatedDocumentLength = len(PDF)
    assert report_text(encapsulated) == ["Second opinion"]
    assert report_pdf(encapsulated, []) == PDF


def _image(number: int) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "SPINEGW^x", "PSEUDO", "2.25.1"
    ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID = "2.25.2", "1.2.840.10008.5.1.4.1.1.4", f"2.25.3{number}"
    return ds


# --- the ACK ------------------------------------------------------------------------------------------------


def _ack(code: str, control_id: str = "c0ffee", separators: str = "|^~\\&") -> bytes:
    field = separators[0]
    return (f"MSH{separators}{field}RIS{field}H{field}SPINEGW{field}SPINEGW{field}20261207{field}{field}ACK"
            f"{field}A1{field}P{field}2.5\rMSA{field}{code}{field}{control_id}{field}why\r").encode()


@pytest.mark.parametrize(("code", "accepted", "rejected"), [
    ("AA", True, False), ("CA", True, False), ("AE", False, False), ("CE", False, False), ("AR", False, True),
    ("CR", False, True)])
def test_read_ack(code, accepted, rejected):
    ack = read_ack(_ack(code), "c0ffee")
    assert (ack.code, ack.accepted, ack.rejected) == (code, accepted, rejected)


def test_read_ack_uses_the_answers_separators():
    assert read_ack(_ack("AA", separators="#$~\\&"), "c0ffee").accepted


@pytest.mark.parametrize("answer", [b"", b"MSA|AA|c0ffee\r", _ack("AA", "other"), _ack("ZZ"),
                                    b"MSH|^~\\&|RIS\rPID|1\r"])
def test_read_ack_refuses_what_is_not_our_ack(answer):
    with pytest.raises(AckError):
        read_ack(answer, "c0ffee")


# --- a minimal MLLP listener (the RIS) --------------------------------------------------------------------------


class Listener:
    """A minimal MLLP receiver on a free loopback port: every message is kept and answered with the next code
    of ``script`` (the last one repeats; ``None``: no answer, the connection left open until the sender gives
    up)."""

    def __init__(self, script: list[str | None]) -> None:
        self.script = list(script)
        self.received: list[bytes] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="test-mllp-listener", daemon=True)
        self._thread.start()

    def answer_with(self, script: list[str | None]) -> None:
        with self._lock:
            self.script = list(script)

    def messages(self) -> list[bytes]:
        with self._lock:
            return list(self.received)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed by stop()
            with connection:
                self._one(connection)

    def _one(self, connection: socket.socket) -> None:
        connection.settimeout(10)
        buffer = b""
        try:
            while END_BLOCK not in buffer:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
        except OSError:
            return
        message = buffer[buffer.index(b"\x0b") + 1:buffer.index(END_BLOCK)]
        with self._lock:
            self.received.append(message)
            code = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if code is None:
            try:
                connection.recv(1)  # until the sender closes
            except OSError:
                pass
            return
        control_id = message.split(b"\r")[0].split(b"|")[9].decode()
        connection.sendall(frame(f"MSH|^~\\&|RIS|ST-MARYS|SPINEGW|SPINEGW|20261207||ACK^R01^ACK|A{len(self.received)}"
                                 f"|P|2.5\rMSA|{code}|{control_id}\r"))

    def stop(self) -> None:
        """Stop listening (shutdown wakes the blocked accept; a close alone leaves the kernel accepting)."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the test listener's thread did not end"


@pytest.fixture
def listener():
    listening = Listener(["AA"])
    yield listening
    listening.stop()


def test_client_exchanges_one_message(listener):
    message = build_oru(_report())
    answer = exchange("127.0.0.1", listener.port, message, timeout_s=10)
    assert read_ack(answer, "c0ffee").accepted and listener.messages() == [message]


def test_client_gives_up_at_its_deadline(listener):
    listener.answer_with([None])
    started = dt.datetime.now()
    with pytest.raises(MllpTimeout):
        exchange("127.0.0.1", listener.port, build_oru(_report()), timeout_s=0.5)
    assert (dt.datetime.now() - started).total_seconds() < 5


def test_client_reports_a_refused_connection():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(MllpError):
        exchange("127.0.0.1", port, build_oru(_report()), timeout_s=5)


# --- the node: a case's report to the RIS ---------------------------------------------------------------------


ORDER_NUMBER = "ORD-20261207-1"


@pytest.fixture(scope="module")
def oru_site(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("oru-site")
    ris = Listener(["AA"])
    try:
        study = write_demo_study(workdir / "study", 4, seed=25, rows=64, cols=64)
        site = start_site(workdir, study, f"sqlite:///{workdir}/gateway.db",
                          source={"hl7_results": {"host": "127.0.0.1", "port": ris.port,
                                                  "receiving_application": "RIS", "receiving_facility": "ST-MARYS",
                                                  "timeout_s": 5}},
                          referral_extra={"order_number": ORDER_NUMBER})
    except BaseException:
        ris.stop()
        raise
    yield site, ris
    site.stop()
    ris.stop()


def _events(node, name):
    return [e for e in node.log_events() if e["event"] == name]


def _result_messages(node) -> dict:
    return node.status()["reports"]["result_messages_by_state"]


def _send_report(site, text: str) -> None:
    images = reviewer_images(site.reviewer)
    assert send(site.node.port, [reviewer_sr(images, text=text)], calling="REVIEW_A") == [0]


def _without_msh(message: bytes) -> bytes:
    return message.split(b"\r", 1)[1]


def _parsed(message: bytes):
    return parse_message(message.decode(), find_groups=False)


def test_oru_reaches_the_ris_with_the_original_patient_and_the_pdf(oru_site):
    site, ris = oru_site
    _send_report(site, "L4-L5 | left ^ paracentral & disc ~ extrusion \\ compressing L5.")
    wait_until(lambda: _result_messages(site.node) == {"sent": 1}, 120, "the ORU acknowledged with AA")
    (received,) = ris.messages()
    message = _parsed(received)
    assert unescape(message.pid.pid_3.to_er7()) == PATIENT.patient_id
    assert [unescape(c) for c in message.pid.pid_5.to_er7().split("^")] == PATIENT.name.split("^")
    assert unescape(message.obr.obr_3.to_er7()) == PATIENT.accession
    assert unescape(message.obr.obr_2.to_er7()) == ORDER_NUMBER
    assert message.obr.obr_25.to_er7() == "F"
    observations = [s for s in message.children if s.name == "OBX"]
    texts = [unescape(o.obx_5.to_er7()) for o in observations if o.obx_2.to_er7() == "TX"]
    assert "Finding: L4-L5 | left ^ paracentral & disc ~ extrusion \\ compressing L5." in texts
    (document,) = [o for o in observations if o.obx_2.to_er7() == "ED"]
    pdf = base64.b64decode(document.obx_5.to_er7().split("^")[4], validate=True)
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    pseudonymous = reviewer_images(site.reviewer)[0]
    body = received.split(b"\r", 1)[1]  # after MSH, whose sending application is the gateway's AE title
    leaked = [line[:120] for line in body.split(b"\r")
              if str(pseudonymous.PatientID).encode() in line or str(pseudonymous.PatientName).encode() in line]
    assert leaked == [], "no pseudonym went home"
    attempts = _events(site.node, "oru_attempt")
    assert [(e["status"], e["attempt"]) for e in attempts] == [("AA", 1)]
    assert all(PATIENT.patient_id not in str(e) and PATIENT.accession not in str(e) for e in site.node.log_events())
    audit = site.node.cli("audit", "--json").stdout
    assert audit.count('"oru_sent"') == 1


def test_oru_answered_ae_is_sent_again_until_aa(oru_site):
    site, ris = oru_site
    ris.answer_with(["AE", "AA"])
    before = len(ris.messages())
    _send_report(site, "Corrected: L4-L5 disc extrusion, no sequestration.")
    wait_until(lambda: _result_messages(site.node) == {"sent": 2}, 120, "the corrected ORU: AE, then AA")
    first, second = ris.messages()[before:]
    assert _without_msh(first) == _without_msh(second), "the same message sent again"
    assert _parsed(first).msh.msh_10.to_er7() == _parsed(second).msh.msh_10.to_er7(), "under the same control ID"
    assert _parsed(second).obr.obr_25.to_er7() == "C", "a report after one already sent is a correction"
    attempts = [(e["status"], e["attempt"]) for e in _events(site.node, "oru_attempt")]
    assert attempts[-2:] == [("AE", 1), ("AA", 2)]


def test_oru_answered_ar_fails_and_is_not_sent_again(oru_site):
    site, ris = oru_site
    ris.answer_with(["AR", "AA"])  # a retry would be answered AA: the test would see it
    before = len(ris.messages())
    _send_report(site, "Third report.")
    wait_until(lambda: _result_messages(site.node) == {"sent": 2, "failed": 1}, 120, "the ORU rejected with AR")
    (failed,) = site.node.status()["reports"]["result_messages_not_sent"]
    assert (failed["state"], failed["attempts"], failed["last_ack_code"]) == ("failed", 1, "AR")
    assert len(ris.messages()) == before + 1
    (event,) = _events(site.node, "oru_failed")
    assert event["status"] == "AR" and event["attempt"] == 1
    audit = site.node.cli("audit", "--json").stdout
    assert '"oru_sent"' in audit and audit.count('"failed"') >= 1
    wait_until(lambda: site.node.status()["cases_by_state"] == {"report_delivered": 1}, 120,
               "the SR leg goes on regardless")
    assert len(ris.messages()) == before + 1, "AR is final: no retry"
    shown = site.node.cli("status").stdout
    assert "reports to the RIS/EHR (HL7 ORU^R01): failed 1, sent 2" in shown and "ACK AR" in shown


# --- the stage on its own: no ACK, no listener, the last attempt ------------------------------------------------


def _stage_config(tmp_path, port: int, max_attempts: int) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_bytes": 0},
        "routing": {"retry": {"initial_s": 0.01, "max_s": 0.02, "max_attempts": max_attempts}},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS",
                     "return": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": 104},
                     "hl7_results": {"host": "127.0.0.1", "port": port, "timeout_s": 0.5}}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 104}]})


def test_oru_stage_retries_without_ack_and_fails_after_the_last_attempt(tmp_path, report_spool, reported_case,
                                                                         listener):
    listener.answer_with([None, None])  # keeps the connection and never answers
    spool = report_spool
    config = _stage_config(tmp_path, listener.port, max_attempts=3)
    with capture_logs() as logs:
        case = reported_case()
        assert ReportStage.of(config, spool, case.secret).reidentify_received(case.study) == 1
        stage = OruStage.of(config, spool)
        assert stage.run_once(utcnow()) == 0
        (row,) = ResultMessage.select()
        assert (row.state, row.attempts, row.last_ack_code) == ("pending", 1, None)
        assert row.last_error == "no ACK within 0.5 s" and row.next_attempt_at > utcnow() - dt.timedelta(seconds=1)
        listener.stop()  # the RIS goes away: the next attempt finds the port closed
        assert _run_when_due(stage) == 0
        row = ResultMessage.get_by_id(row.id)
        assert (row.state, row.attempts) == ("pending", 2) and row.last_error.startswith("connection failed")
        assert _run_when_due(stage) == 1
        row = ResultMessage.get_by_id(row.id)
        assert (row.state, row.attempts) == ("failed", 3) and row.last_error.startswith("gave up after 3")
        assert _run_when_due(stage) == 0, "a failed message is never sent again"
        assert Study.get_by_id(case.study.id).state == CaseState.REPORTED, "the HL7 leg moves no case"
        (audit_row,) = AuditEvent.select().where(AuditEvent.action == "oru_sent")
        assert audit_row.outcome == "failed"
    assert [e["status"] for e in logs if e["event"] == "oru_attempt"] == ["none"] * 3
    logged = repr(logs)
    assert PATIENT.patient_id not in logged and PATIENT.accession not in logged and "DOE" not in logged
    assert len(listener.messages()) == 1


def _run_when_due(stage: OruStage) -> int:
    """One run at the time the pending message is due (its back-off is a few hundredths of a second)."""
    due_at = ResultMessage.select(peewee.fn.MAX(ResultMessage.next_attempt_at)).scalar() or utcnow()
    return stage.run_once(max(due_at, utcnow()) + dt.timedelta(milliseconds=1))
