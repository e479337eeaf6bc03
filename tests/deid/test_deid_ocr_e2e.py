"""End to end with DCMTK: a lumbar DX with the patient's name, birth date, ID and hospital burned into its pixels,
sent with storescu in one study with an MR, reaches a storescp reviewer cleaned, with its case."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid

from gateway.deid.guard import identifiers_from_dataset
from gateway.deid.ocr import _Viewer
from gateway.deid.ocr_engine import engine_for
from gateway.deid.ocr_match import identifiers_found, search_terms
from ocr_images import PATIENT, Text, anatomy, burn, dx_dataset
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu, wait_until

FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2}, "referrals": {"wait_s": 0.0, "on_timeout": "route"}}
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lumbar_dx_with_burned_in_identifiers_reaches_the_reviewer_cleaned(tmp_path, database_url):
    texts = [Text("MORGENSTERN HELENA", 8, 8, 22), Text("DOB 14/03/1962", 8, 40, 18),
             Text("ID PID7734521", 8, 66, 18), Text("Riverside General Hospital", 60, 560, 20)]
    dx = dx_dataset(burn(anatomy(600, 480, bits=12), texts, 4095), bits=12)
    mr = dx_dataset(anatomy(64, 64, bits=12), bits=12, modality="MR", sop_class=MR_CLASS)
    mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SeriesDescription = dx.StudyInstanceUID, generate_uid(), "SAG T2"
    paths = []
    for name, dataset in (("dx.dcm", dx), ("mr.dcm", mr)):
        paths.append(tmp_path / name)
        dataset.save_as(paths[-1], enforce_file_format=True)
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = GatewayProcess(tmp_path / "gw", database_url, reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.port}], extra=FAST)
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, paths, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: len(list(reviewer.out_dir.iterdir())) >= 2, 180, "the DX and the MR at the reviewer")
        received = {str(pydicom.dcmread(p).Modality): p for p in reviewer.out_dir.iterdir()}
        assert {"DX", "MR"} <= set(received), "the cleaned X-ray travels with its case"
        out = pydicom.dcmread(received["DX"])
        assert out.BurnedInAnnotation == "NO" and out.PatientIdentityRemoved == "YES"
        assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
        assert out.StudyInstanceUID == pydicom.dcmread(received["MR"]).StudyInstanceUID
        terms = search_terms(identifiers_from_dataset(dx))
        picture = _Viewer(out).window(out.pixel_array)
        for zoom in (1, 2):
            reading = engine_for("eng").read(picture, zoom=zoom)
            assert identifiers_found([w.text for w in reading.words], reading.lines, terms) == set()
        assert subprocess.run(["/usr/bin/dcmdump", "-q", str(received["DX"])], capture_output=True).returncode == 0
        decisions = [e for e in node.log_events() if e["event"] == "burned_in_text"]
        assert [d["verdict"] for d in decisions] == ["cleaned"] and decisions[0]["boxes_blanked"] > 0
        log_text = node.log_file.read_text()
        for value in (*PATIENT.values(), "MORGENSTERN", "HELENA", "14/03/1962"):
            assert value not in log_text
    finally:
        node.stop()
        reviewer.stop()
