"""End to end with DCMTK: a German and a US referral, their studies sent by storescu, the notes at a storescp reviewer.

The node runs as a subprocess (``spine-gateway serve``) with two sources, a German one (de-DE) and a US one
(en-US, month-first dates); the referrals are written the way clinicians write (relatives, GP, employer, town,
phone, insurance numbers) and the study headers hold the patient's identity. The reviewer is DCMTK's storescp.
The notes SR and PDF it receives must contain none of the case's identifiers, known to the node or not.
"""

from __future__ import annotations

import json
import re
import unicodedata
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pypdf import PdfReader

from gateway.demo import DemoPatient, write_demo_study
from notes_corpus import parse
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port, storescu, wait_until

pytestmark = pytest.mark.slow
TOKEN = "test-token-e2e-notes"

GERMAN = parse("e2e-de", "de", (
    "Frau [[name:Anna-Lena]] [[name:Weber]], geb. [[date:24.12.1988]], wohnhaft [[place:Sanderglacisstraße 3]], "
    "[[place:97072]] [[place:Würzburg]]. Versichertennummer [[id:T987654328]]. Arbeitet als Erzieherin im "
    "[[org:Kindergarten St. Josef]]. Ehemann [[name:Thomas]] begleitet sie. Hausarzt Dr. med. "
    "[[name:Ralf Kuhnke]], [[org:Praxis am Dom]], Tel. [[phone:0931 3045678]]. {{LWS-Syndrom}} mit "
    "{{Ischialgie}} {{links}}, {{Lasègue}} bei 30°, {{Kraft 4/5}}, {{Hoffmann-Zeichen}} negativ. "
    "Vorstellung am [[date:5. März 2024]], {{MRT}} {{L5/S1}}."), {})
US = parse("e2e-us", "us", (
    "[[name:Marie Delacroix]], DOB [[date:2/10/1980]], SSN [[id:219-09-9999]]. Injury at work on "
    "[[date:11/3/2023]] lifting boxes at [[org:Amazon]] warehouse in [[place:Bessemer]]. Her husband "
    "[[name:Pierre]] asks for a call at [[phone:(205) 555-0143]]. PCP [[name:Dr. Terrence Oyelaran]], "
    "[[org:Mercy General Hospital]]. {{MRI}} [[date:12/01/2023]]: {{L5-S1}} {{extrusion}}, {{SLR}} positive, "
    "{{power 4/5}} {{EHL}}, {{VAS 8/10}}."), {})
CASES = {
    "de": (GERMAN, "klinikum", "KLINIKUM_PACS",
           DemoPatient(name="WEBER^ANNA-LENA", patient_id="P-0042", birth_date="19881224", sex="F",
                       accession="DE-4711", institution="Universitätsklinikum Würzburg", referring="KUHNKE^RALF")),
    "us": (US, "mercy", "MERCY_PACS",
           DemoPatient(name="DELACROIX^MARIE", patient_id="MRN-55102", birth_date="19800210", sex="F",
                       accession="US-9001", institution="Mercy General Hospital", referring="OYELARAN^TERRENCE")),
}


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def _identifier_words(case) -> list[str]:
    """Every identifier word of the case (2+ letters, titles aside), its numbers as whole digit strings (5+
    digits, separators aside), and dates as written."""
    words: set[str] = set()
    for span in case.spans:
        if span.category == "date":  # "11/3/2023" as written; its parts ("2023") are ordinary numbers
            words.add(span.text)
            continue
        for word in re.findall(r"\w+", span.text):
            if len(word) >= 2 and not word.isdigit() and word.lower() not in {"dr", "med", "st", "am", "im"}:
                words.add(word)
        digits = re.sub(r"\D", "", span.text)
        if len(digits) >= 5:
            words.add(digits)
    return sorted(words)


def _leaks(text: str, words: list[str]) -> list[str]:
    """Identifier words found in ``text``: whole words after folding accents and case; digits also with any
    one or two separators between them ("0931 3045678", "219-09-9999")."""
    folded = _fold(text)
    found = []
    for word in words:
        pattern = (r"[\s\-/.()]{0,2}".join(word) if word.isdigit() else re.escape(_fold(word)))
        if re.search(rf"(?<![\w]){pattern}(?![\w])", folded):
            found.append(word)
    return found


def _referral(case, source: str, patient: DemoPatient) -> dict:
    birth = patient.birth_date
    return {
        "source": source, "accession_number": patient.accession, "urgency": "routine",
        "patient": {"id": patient.patient_id, "name": patient.name,
                    "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"},
        "referrer": {"name": patient.referring.replace("^", " ")},
        "study_date": f"{patient.study_date[:4]}-{patient.study_date[4:6]}-{patient.study_date[6:]}",
        "clinical": {"history": case.text, "question": "Disc herniation L5/S1 with root compression?"},
    }


def _post(node: GatewayProcess, document: dict) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{node.config['http']['port']}/referrals",
                                     data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


def _texts(path: Path) -> str:
    dataset = pydicom.dcmread(path)
    texts = [str(e.value) for e in dataset.iterall()
             if e.VR not in ("SQ", "OB", "OW", "UN", "UI") and e.value is not None]
    if "EncapsulatedDocument" in dataset:
        pdf = path.with_suffix(".pdf")
        pdf.write_bytes(dataset.EncapsulatedDocument[: dataset.EncapsulatedDocumentLength])
        texts += [page.extract_text() for page in PdfReader(pdf).pages]
    return "\n".join(texts)


def test_german_and_us_referrals_reach_the_reviewer_without_identifiers(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINE_GATEWAY_API_TOKEN", TOKEN)
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = GatewayProcess(
        tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db",
        sources=[{"name": name, "ae_title": ae, "locale": "de-DE" if key == "de" else "en-US"}
                 for key, (_, name, ae, _) in CASES.items()],
        reviewers=[{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.port}],
        extra={"http": {"host": "127.0.0.1", "port": free_port()}, "routing": {"stable_after_s": 0.5, "poll_s": 0.2},
               "referrals": {"wait_s": 600}})
    node.start(timeout=60)
    try:
        for key, (case, source, ae, patient) in CASES.items():
            assert _post(node, _referral(case, source, patient)) == 201
            files = write_demo_study(tmp_path / f"study-{key}", 2, patient=patient, seed=11, rows=16, cols=16)
            result = storescu("127.0.0.1", node.port, files, calling=ae)
            assert result.returncode == 0, result.stderr

        def notes_received() -> list[Path] | None:
            received = {}
            for path in reviewer.out_dir.iterdir():
                try:
                    received[path] = pydicom.dcmread(path, stop_before_pixels=True).Modality
                except Exception:  # noqa: BLE001 - a file storescp is still writing
                    return None
            notes = [p for p, modality in received.items() if modality in ("SR", "DOC")]
            images = [p for p, modality in received.items() if modality == "MR"]
            complete = sorted(received[p] for p in notes) == ["DOC", "DOC", "SR", "SR"] and len(images) == 4
            return [*notes, *images] if complete else None

        received = wait_until(notes_received, 240, "two notes SRs, two notes PDFs and four images at the reviewer")
    finally:
        node.stop()
        reviewer.stop()

    # Every image arrives with the case's short reason in (0040,1002), set as it left the node: the node's own
    # words (urgency, first red flag), never the referral's free text.
    reasons: dict[str, set[str]] = {}
    for path in received:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if dataset.Modality == "MR":
            reasons.setdefault(str(dataset.StudyInstanceUID), set()).add(dataset.ReasonForTheRequestedProcedure)
    assert len(reasons) == 2 and all(len(values) == 1 for values in reasons.values()), reasons
    for (reason,) in reasons.values():
        assert "Disc herniation" not in reason and len(reason) <= 64, reason

    by_accession: dict[str, list[str]] = {}
    for path in received:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        by_accession.setdefault(str(dataset.StudyInstanceUID), []).append(_texts(path))
    assert len(by_accession) == 2
    everything = "\n".join(t for texts in by_accession.values() for t in texts)
    for key, (case, _, _, patient) in CASES.items():
        words = _identifier_words(case) + [patient.patient_id, patient.accession, patient.birth_date]
        assert _leaks(everything, words) == [], key
        for term in case.keep:
            assert _fold(term.text) in _fold(everything), (key, term.text)
    assert "Disc herniation L5/S1" in everything
    for key, (case, _, _, patient) in CASES.items():
        words = _identifier_words(case) + [patient.patient_id, patient.accession, patient.birth_date]
        assert _leaks("\n".join(r for (r,) in reasons.values()), words) == [], key
