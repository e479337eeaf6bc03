"""End to end through a running gateway: storescu → de-identified, with notes, in an Orthanc reviewer; no PHI.

The gateway runs as a subprocess; DCMTK's storescu sends a synthetic lumbar MR study (and a CT of the head),
a referral is added with ``spine-gateway referral add``, and every tag of every instance Orthanc received is
scanned through its REST API for the demo patient's identifiers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest

from gateway.demo import DemoPatient, write_demo_study
from routing_db import write_head_ct
from support.peers import GatewayProcess, Orthanc, free_port, storescu, wait_until

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)

PATIENT = DemoPatient()
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 12}},
        "referrals": {"wait_s": 600}, "http": {"host": "127.0.0.1", "port": 0}}
REFERRAL = {
    "source": "st-marys", "accession_number": PATIENT.accession, "urgency": "routine",
    "patient": {"id": PATIENT.patient_id, "name": "Doe^Jane", "birth_date": "1971-04-12"},
    "referrer": {"name": "Dr Alan Smith"},
    "clinical": {"history": "Jane Doe (MRN0012345) has had low back pain for 10 weeks.",
                 "question": "L4-L5 disc herniation with root compression?"},
}


def _identifiers(originals: list[Path]) -> list[str]:
    values = ["DOE", "JANE", "MARIE", PATIENT.patient_id, PATIENT.accession, PATIENT.birth_date, "SMITH",
              "ALAN", "St Mary", "Hospital Road", "JONES", "MRI-3T-01", PATIENT.study_date]
    for path in originals:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID]
    return values


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [str(key), *_strings(item)]]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [str(value)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lumbar_mr_reaches_the_reviewer_deidentified_with_notes_and_head_ct_does_not(tmp_path, database_url):
    lumbar = write_demo_study(tmp_path / "lumbar", 6, seed=11, rows=64, cols=64)
    head = write_head_ct(tmp_path / "head", 3)
    orthanc = Orthanc(tmp_path / "orthanc", "REVIEW_A").start()
    node = GatewayProcess(tmp_path / "gw", database_url, reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        extra={**FAST, "http": {"host": "127.0.0.1", "port": free_port()}})
    try:
        node.start()
        referral = tmp_path / "referral.json"
        referral.write_text(json.dumps(REFERRAL))
        node.cli("referral", "add", str(referral))
        assert storescu("127.0.0.1", node.port, lumbar, calling="STMARYS_PACS").returncode == 0
        assert storescu("127.0.0.1", node.port, head, calling="STMARYS_PACS").returncode == 0

        def settled():
            states = node.status()["cases_by_state"]
            return states if states == {"delivered": 1, "rejected_not_spine": 1} else None

        wait_until(settled, 120, "the lumbar case delivered and the head CT rejected")
        studies = orthanc.get("/studies")
        assert len(studies) == 1, "only the spine study reached the reviewer"
        instances = orthanc.get(f"/studies/{studies[0]}/instances")
        modalities = {orthanc.get(f"/instances/{i['ID']}/tags?simplify")["Modality"] for i in instances}
        assert len(instances) > len(lumbar) and "SR" in modalities, "the images and the notes objects"
        pattern = re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])"
                                      for v in _identifiers(lumbar)), re.IGNORECASE)
        for instance in instances:
            tags = orthanc.get(f"/instances/{instance['ID']}/tags?simplify")
            leaks = sorted({m.group(0) for s in _strings(tags) for m in pattern.finditer(s)})
            assert not leaks, f"identifying values in instance {instance['ID']}: {len(leaks)} found"
            assert tags["PatientIdentityRemoved"] == "YES"
        status = node.status()
        reviewer, = status["reviewers"]
        assert reviewer["reviewer"] == "dr-a" and reviewer["open_cases"] == 1 and reviewer["echo_ok"] is True
        assert status["queue"] == {"waiting_assignment": 0, "waiting_delivery": 0}
        events = node.log_events()
        assigned = [e for e in events if e["event"] == "case_assigned"]
        assert len(assigned) == 1 and assigned[0]["reviewer"] == "dr-a"
        assert any(e["event"] == "case_not_spine" for e in events)
        assert [e["status"] for e in events if e["event"] == "delivery_attempt"][-1] == "delivered"
        log_text = node.log_file.read_text()
        assert not pattern.search(log_text), "no identifier in the log"
    finally:
        node.stop()
        orthanc.stop()
