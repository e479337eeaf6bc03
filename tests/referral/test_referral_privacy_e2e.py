"""End to end: a header holding address, phone and maiden name, a referral that mentions them, a storescp reviewer.

DCMTK's storescu sends the study to a running gateway; the referral is added with ``spine-gateway referral
add``; the case is delivered to DCMTK's storescp. Nothing that the header or the referral holds may be in any
delivered file: the tags of every image, the SR's content tree, the PDF's extracted text.
"""

from __future__ import annotations

import io
import json
import re

import pydicom
import pytest
from pypdf import PdfReader

from privacy_cases import HEADER, MENTIONS, referral_document, write_held_study
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port, storescu, wait_until

FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 12}},
        "referrals": {"wait_s": 600}}
NOT_TO_BE_SEEN = [*MENTIONS.values(), "Hargreaves", "Eleanor", "Ashdown", "Okonkwo", "Fairweather", "Kettering",
                  "KGH0048213", "ACC7730914", "OTH-55120", "736415", "1971-03-05", "19710305", "05/03/1971"]
PATTERN = re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])" for v in NOT_TO_BE_SEEN),
                     re.IGNORECASE)


def _readable_text(path) -> tuple[str, str]:
    """(what the file is, every text a reviewer could read in it)."""
    dataset = pydicom.dcmread(path)
    texts = [str(e.value) for e in dataset.iterall() if e.VR not in ("SQ", "OB", "OW", "UN", "UT")]
    texts += [str(e.value) for e in dataset.iterall() if e.VR == "UT"]
    kind = str(dataset.Modality)
    if "EncapsulatedDocument" in dataset:
        reader = PdfReader(io.BytesIO(bytes(dataset.EncapsulatedDocument)))
        texts += [page.extract_text() for page in reader.pages]
    return kind, "\n".join(texts)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_nothing_the_node_holds_reaches_the_reviewer(tmp_path, database_url):
    files = write_held_study(tmp_path / "study", 3)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.PatientAddress == HEADER["PatientAddress"] and header.PatientBirthName == "PEMBERTON^ELEANOR"
    scp = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = GatewayProcess(tmp_path / "gw", database_url, reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": scp.port}],
        extra={**FAST, "http": {"host": "127.0.0.1", "port": free_port()}})
    try:
        node.start()
        referral = tmp_path / "referral.json"
        referral.write_text(json.dumps(referral_document()))
        node.cli("referral", "add", str(referral))
        result = storescu("127.0.0.1", node.port, files, calling="STMARYS_PACS")
        assert result.returncode == 0, result.stderr

        def delivered():
            states = node.status()["cases_by_state"]
            assert "quarantined" not in states, "the case was quarantined"
            return states if states == {"delivered": 1} else None

        wait_until(delivered, 120, "the case delivered to the reviewer")
        received = sorted(p for p in scp.out_dir.iterdir() if p.is_file())
        readable = [_readable_text(path) for path in received]
        assert sorted(kind for kind, _ in readable) == ["DOC", "MR", "MR", "MR", "SR"]
        sr_text = next(text for kind, text in readable if kind == "SR")
        assert "EHL 4/5" in sr_text and "L4-L5" in sr_text
        for path, (kind, text) in zip(received, readable):
            found = sorted({m.group(0).lower() for m in PATTERN.finditer(text + path.name)})
            assert found == [], f"{kind} file {path.name} carries {len(found)} identifier(s)"
        assert not PATTERN.search(node.log_file.read_text())
    finally:
        node.stop()
        scp.stop()
