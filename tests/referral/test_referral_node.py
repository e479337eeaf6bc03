"""Referrals against a running gateway: the three intake paths, the notes in the study, no PHI anywhere, approval.

The gateway runs as a subprocess (``spine-gateway serve``) with its HTTP API and MLLP listener; studies
arrive by DCMTK's storescu; the database is read directly to check what was (not) stored; the outbound
notes objects go to a real Orthanc and through DCMTK's ``dsrdump``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml
from pypdf import PdfReader

from gateway.demo import write_demo_study
from gateway.mllp.server import END_BLOCK, frame
from gateway.storage.models import make_database
from referral_cases import PHI_VALUES, SOURCE_AE, referral_document
from support.peers import GatewayProcess, Orthanc, free_port, storescu, wait_until

TOKEN = "test-token-5f2c"
FIXTURES = Path(__file__).parent / "fixtures"
PHI_PATTERN = re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])" for v in PHI_VALUES),
                         re.IGNORECASE)


@pytest.fixture(scope="module")
def study_files(tmp_path_factory):
    return write_demo_study(tmp_path_factory.mktemp("node-notes-study"), 4, seed=5, rows=64, cols=64)


def start_gateway(workdir: Path, database_url: str, monkeypatch, routing: dict | None = None,
                  **referrals) -> GatewayProcess:
    monkeypatch.setenv("SPINE_GATEWAY_API_TOKEN", TOKEN)
    node = GatewayProcess(workdir, database_url, extra={
        "http": {"host": "127.0.0.1", "port": free_port()},
        "hl7": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "facilities": {"STMARYS": "st-marys"}},
        "routing": {"stable_after_s": 0.5, "poll_s": 0.2, **(routing or {})},
        "referrals": {"wait_s": 600, **referrals},
    })
    return node.start()


@pytest.fixture
def node_factory(tmp_path, monkeypatch):
    started = []

    def make(database_url: str, routing: dict | None = None, **referrals) -> GatewayProcess:
        node = start_gateway(tmp_path / f"gw{len(started)}", database_url, monkeypatch, routing, **referrals)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def query(database_url: str, sql: str, *params) -> list[tuple]:
    database = make_database(database_url, max_connections=1)
    with database.connection_context():
        return list(database.execute_sql(sql.replace("?", database.param), params).fetchall())


def referral_count(node: GatewayProcess) -> int:
    return query(node.config["storage"]["database"], "SELECT COUNT(*) FROM referral")[0][0]


def post(node: GatewayProcess, body: bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{node.config['http']['port']}/referrals", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def send_hl7(node: GatewayProcess, message: bytes) -> str:
    with socket.create_connection(("127.0.0.1", node.config["hl7"]["port"]), timeout=30) as connection:
        connection.sendall(frame(message))
        answer = b""
        while not answer.endswith(END_BLOCK):
            chunk = connection.recv(65536)
            assert chunk, "the MLLP connection closed without an answer"
            answer += chunk
    return answer.decode()


def case_row(node: GatewayProcess) -> tuple | None:
    rows = query(node.config["storage"]["database"],
                 "SELECT id, key, state, hold_reason, pseudo_study_uid, urgency FROM study")
    return rows[0] if rows else None


def notes_paths(node: GatewayProcess, study_id: int) -> dict[str, list[Path]]:
    rows = query(node.config["storage"]["database"],
                 "SELECT kind, spool_path FROM outbound_object WHERE study_id = ?", study_id)
    paths: dict[str, list[Path]] = {}
    for kind, relative in rows:
        paths.setdefault(kind, []).append(node.spool_dir / relative)
    return paths


def send_study(node: GatewayProcess, files: list[Path]) -> None:
    result = storescu("127.0.0.1", node.port, files, calling=SOURCE_AE)
    assert result.returncode == 0, result.stderr


def wait_for_notes(node: GatewayProcess, timeout: float = 60) -> tuple[tuple, dict[str, list[Path]]]:
    def ready():
        case = case_row(node)
        if case is None:
            return None
        paths = notes_paths(node, case[0])
        # the case row is read again: it may have been read before the notes stage's transaction committed
        return (case_row(node), paths) if "notes_sr" in paths else None

    return wait_until(ready, timeout, "the notes SR to be attached")


BAD_REFERRALS = {
    "missing accession": ({k: v for k, v in referral_document().items() if k != "accession_number"},
                          "accession_number: required"),
    "pain intensity 14": (referral_document(clinical={**referral_document()["clinical"],
                                                      "pain": {"intensity": 14}}),
                          "clinical.pain.intensity: must be between 0 and 10"),
    "unknown red flag": (referral_document(clinical={**referral_document()["clinical"],
                                                     "red_flags": ["sore_toe"]}),
                         "clinical.red_flags.0: must be one of"),
}


def test_intake_refuses_bad_referrals_and_stores_nothing(node_factory, tmp_path):
    node = node_factory(f"sqlite:///{tmp_path}/gateway.db")
    for name, (document, problem) in BAD_REFERRALS.items():
        status, body = post(node, json.dumps(document).encode())
        assert status == 422, name
        assert any(line.startswith(problem) for line in body["problems"]), (name, body)
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(document))
        result = node.cli("referral", "add", str(path), check=False)
        assert result.returncode == 2, name
        assert any(problem in line for line in result.stderr.splitlines()), (name, result.stderr)
        assert "Traceback" not in result.stderr
    assert post(node, b"{not json")[0] == 400
    assert post(node, json.dumps(referral_document()).encode(), token="wrong")[0] == 401
    assert post(node, json.dumps(referral_document()).encode(), token=None)[0] == 401
    assert post(node, json.dumps(referral_document(source="nowhere")).encode()) == (
        422, {"problems": ["source: not a configured source"]})
    malformed = send_hl7(node, b"this is not HL7 at all")
    assert "MSA|AR" in malformed
    orm = (FIXTURES / "orm_o01.hl7").read_bytes()
    no_accession = orm.replace(b"|A1234567|", b"||").replace(b"FIL456^PACS", b"")  # OBR-18, OBR-3, ORC-3
    answer = send_hl7(node, no_accession)
    assert "MSA|AE|MSG00001" in answer
    unknown_facility = orm.replace(b"|STMARYS^", b"|ELSEWHERE^", 1)
    assert "MSA|AE|MSG00001" in send_hl7(node, unknown_facility)
    assert referral_count(node) == 0


def test_each_intake_path_stores_a_valid_referral(node_factory, tmp_path):
    node = node_factory(f"sqlite:///{tmp_path}/gateway.db")
    status, body = post(node, json.dumps(referral_document()).encode())
    assert status == 201 and body["id"] == 1 and body["state"] == "waiting"
    assert "MSA|AA|MSG00001" in send_hl7(node, (FIXTURES / "orm_o01.hl7").read_bytes())
    path = tmp_path / "referral.yaml"
    path.write_text(yaml.safe_dump(referral_document(accession_number="B7654321")))
    result = node.cli("referral", "add", str(path))
    assert result.stdout.startswith("referral 3 stored")
    vias = query(node.config["storage"]["database"], "SELECT received_via FROM referral ORDER BY id")
    assert [v for (v,) in vias] == ["http", "hl7", "cli"]
    received = [e for e in node.log_events() if e["event"] == "referral_received"]
    assert [e["reason"] for e in received] == ["http", "hl7", "cli"]  # the CLI logs to the same file
    assert all(e["source"] == "st-marys" for e in received)


def test_hl7_in_its_own_separators_is_stored_over_mllp(node_factory, tmp_path):
    """MSH#*%!$: every separator other than the default, read from MSH-1/MSH-2, with escapes in a text field."""
    node = node_factory(f"sqlite:///{tmp_path}/gateway.db")
    orm = (FIXTURES / "orm_o01.hl7").read_bytes().decode()
    custom = orm.translate(str.maketrans("|^~\\&", "#*%!$")).replace(
        "Reduced ankle reflex on the left, EHL power 4/5.", "EHL power 4!S!5 !F! ankle!.br!reflex a^b|c !E!F!E!")
    assert custom.startswith("MSH#*%!$#RIS#STMARYS*")
    answer = send_hl7(node, custom.encode())
    assert "\rMSA|AA|MSG00001" in answer and "|SPINEGW|SPINEGW|RIS|STMARYS^2.16.840.1.113883.19.4.1^ISO|" in answer
    rows = query(node.config["storage"]["database"],
                 "SELECT accession_number, patient_id, patient_name, birth_date, received_via, document FROM referral")
    assert [row[:5] for row in rows] == [("A1234567", "MRN0012345", "Doe^Jane", "1971-04-12", "hl7")]
    clinical = json.loads(rows[0][5])["clinical"]
    assert clinical["examination"] == "EHL power 4*5 # ankle\nreflex a^b|c !F!"
    assert clinical["question"] == "Exclude nerve root compression at L4-L5 or L5/S1"


def _sr_text(path: Path) -> str:
    dump = subprocess.run(["/usr/bin/dsrdump", "-Ee", "+Pc", str(path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "E:" not in dump.stderr and "error" not in dump.stderr.lower(), dump.stderr
    return dump.stdout


def _strings(dataset: pydicom.Dataset) -> list[str]:
    found = []
    for element in dataset.iterall():
        if element.VR in ("SQ", "OB", "OW", "UN") or element.value is None:
            continue
        found.append(str(element.value))
    return found


def test_notes_reach_the_study_without_phi(node_factory, study_files, tmp_path, database_url):
    node = node_factory(database_url)
    status, _ = post(node, json.dumps(referral_document()).encode())
    assert status == 201
    send_study(node, study_files)
    case, paths = wait_for_notes(node)
    study_id, key, _state, _hold, pseudo_study_uid, urgency = case
    assert urgency == "urgent"
    sr_path, pdf_path = paths["notes_sr"][0], paths["notes_pdf"][0]

    sr_text = _sr_text(sr_path)
    assert "Clinical Information" in sr_text and "Suspected cauda equina syndrome" in sr_text
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == pseudo_study_uid
    assert PHI_PATTERN.findall(sr_text + "\n".join(_strings(sr))) == []

    pdf = pydicom.dcmread(pdf_path)
    document = pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength]
    (tmp_path / "notes.pdf").write_bytes(document)
    pdf_text = "\n".join(page.extract_text() for page in PdfReader(tmp_path / "notes.pdf").pages)
    assert "Clinical question" in pdf_text or "question" in pdf_text.lower()
    assert PHI_PATTERN.findall(pdf_text + "\n".join(_strings(pdf))) == []

    # The reason goes into (0040,1002) as each image leaves (tests/referral/test_notes_e2e.py checks what the
    # reviewer receives); the images in the spool stay as the de-identification wrote them.
    (reason,), = query(node.config["storage"]["database"], "SELECT notes_reason FROM study WHERE id = ?", study_id)
    assert reason.startswith("URGENT: ") and PHI_PATTERN.findall(reason) == []
    for image in paths["image"]:
        assert "ReasonForTheRequestedProcedure" not in pydicom.dcmread(image, stop_before_pixels=True)

    log_text = node.log_file.read_text()
    events = node.log_events()
    assert any(e["event"] == "referral_matched" and e["case"] == key for e in events)
    assert {e["reason"] for e in events if e["event"] == "red_flag"} >= {"cauda_equina", "cancer_history"}
    node.stop()
    stderr = (node.workdir / "gateway.stderr").read_text()
    assert PHI_PATTERN.findall(log_text) == [] and PHI_PATTERN.findall(stderr) == []
    assert "Traceback" not in stderr

    orthanc = Orthanc(tmp_path / "orthanc", "ORTHANC").start()
    try:
        objects = [*paths["image"], sr_path, pdf_path]
        result = storescu("127.0.0.1", orthanc.dicom_port, objects, calling="SPINEGW", called="ORTHANC")
        assert result.returncode == 0, result.stderr
        found = orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": pseudo_study_uid}})
        assert len(found) == 1
        series = orthanc.get(f"/studies/{found[0]}/series")
        modalities = [s["MainDicomTags"].get("Modality") for s in series]
        assert sorted(set(modalities)) == ["DOC", "MR", "SR"] and modalities.count("SR") == 1
        original = pydicom.dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID
        assert orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": original}}) == []
    finally:
        orthanc.stop()


def test_require_approval_waits_in_held_until_approved(node_factory, study_files, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich's tables in a pipe: wide enough that no cell wraps
    node = node_factory(f"sqlite:///{tmp_path}/gateway.db", require_approval=True)
    assert post(node, json.dumps(referral_document()).encode())[0] == 201
    send_study(node, study_files)

    def held():
        case = case_row(node)
        return case if case is not None and case[3] == "awaiting_approval" else None

    case = wait_until(held, 60, "the case to wait for approval")
    assert "notes_sr" not in notes_paths(node, case[0])
    shown = node.cli("notes", "show", case[1])
    assert "MRN0012345" in shown.stdout  # the original, on the operator's terminal only
    assert "[ID]" in shown.stdout
    as_json = json.loads(node.cli("notes", "show", case[1], "--json").stdout)
    assert (as_json["case"], as_json["state"], as_json["source_of_notes"]) == (case[1], "held", "referral")
    fields = {row["field"]: row for row in as_json["fields"]}
    assert "MRN0012345" in fields["history"]["original"] and "[ID]" in fields["history"]["scrubbed"]
    assert all(name in shown.stdout for name in fields), "the same fields as the table"
    assert as_json["approved"] is False and as_json["urgency"] in ("routine", "soon", "urgent")
    approved = node.cli("notes", "approve", case[1])
    assert f"notes of case {case[1]} approved" in approved.stdout
    wait_for_notes(node)
    assert query(node.config["storage"]["database"], "SELECT approved_by FROM referral")[0][0]
    assert node.cli("notes", "approve", "nosuchcase", check=False).returncode == 2


def test_a_referral_is_matched_on_arrival_when_the_study_takes_longer_than_wait_s(node_factory, study_files, tmp_path,
                                                                                  monkeypatch):
    """The issue's failure: ``referrals.wait_s`` (1 s) shorter than the study's time between receipt and the
    notes stage (``stable_after_s`` 4 s). The referral used to expire (``no_study_within_wait_s``) and the case
    went out with "No referral received" notes; now it is matched when the study arrives."""
    monkeypatch.setenv("COLUMNS", "250")  # rich's tables in a pipe: wide enough that no cell wraps
    node = node_factory(f"sqlite:///{tmp_path}/gateway.db", routing={"stable_after_s": 4}, wait_s=1,
                        on_timeout="route")
    status, body = post(node, json.dumps(referral_document()).encode())
    assert status == 201
    send_study(node, study_files)
    database = node.config["storage"]["database"]
    matched = query(database, "SELECT r.state, s.state FROM referral r JOIN study s ON s.id = r.study_id")
    for _ in range(20):  # matched by the receiving process's matching thread, just after the first answer
        if matched and matched[0][0] == "matched":
            break
        time.sleep(0.1)
        matched = query(database, "SELECT r.state, s.state FROM referral r JOIN study s ON s.id = r.study_id")
    assert matched == [("matched", "receiving")], "matched when the study arrived, before it completed"
    case, paths = wait_for_notes(node, timeout=90)
    found = json.loads(node.cli("status", "--accession", "A1234567", "--json").stdout)["cases"]
    assert [(e["case"], e["source"], e["referral"]["id"], e["referral"]["state"]) for e in found] == [
        (case[1], "st-marys", body["id"], "matched")]
    assert found[0]["state"] != "quarantined" and found[0]["reason"] not in ("awaiting_referral", "no_referral")
    assert found[0]["first_received_at"] and found[0]["state_changed_at"]
    table = node.cli("status", "--accession", "A1234567").stdout
    assert case[1] in table and "st-marys" in table
    text = _sr_text(paths["notes_sr"][0])
    assert "No referral received" not in text
    assert query(database, "SELECT state FROM referral") == [("matched",)]
    assert query(database, "SELECT detail FROM audit_event WHERE action = 'notes_attached'")[0][0].startswith(
        "referral;")
