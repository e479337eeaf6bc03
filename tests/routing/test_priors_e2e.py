"""Priors end to end: Orthanc plays the source's PACS (Query/Retrieve SCP) holding the patient's earlier studies, the
gateway runs as a subprocess, DCMTK's storescu sends the current study and DCMTK's storescp is the reviewer.

The PACS holds two spine priors (an MR 2 years 3 months and a CT 10 months before the case), a head CT and a spine
MR 18 years old: the reviewer gets the case with the two spine priors, all under the case's patient pseudonym and
date shift, and no original UID or name; the notes SR lists the priors with relative dates. With the PACS down,
the case goes after ``priors.wait_s`` and its notes say the priors could not be retrieved.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path

import pydicom
import pytest

from gateway.demo import DemoPatient, write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, free_port, storescu, wait_until

PATIENT = DemoPatient()  # the case: MR LSPINE of 20261120
PACS_AE = "STMARYS_QR"
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 12}},
        "referrals": {"wait_s": 0}}


def _relabel(paths: list[Path], **values: str) -> list[Path]:
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _pacs_studies(tmp_path: Path) -> dict[str, list[Path]]:
    def patient(date: str, accession: str) -> DemoPatient:
        return DemoPatient(study_date=date, accession=accession)

    return {
        "mr_prior": write_demo_study(tmp_path / "mr_prior", 3, patient=patient("20240815", "A2000001"), seed=21,
                                     rows=32, cols=32),
        "ct_prior": _relabel(write_demo_study(tmp_path / "ct_prior", 3, patient=patient("20260120", "A2000002"),
                                              seed=22, rows=32, cols=32), Modality="CT"),
        "head": _relabel(write_demo_study(tmp_path / "head", 2, patient=patient("20251001", "A2000003"), seed=23,
                                          rows=32, cols=32),
                         Modality="CT", BodyPartExamined="HEAD", StudyDescription="CT HEAD WITHOUT CONTRAST",
                         SeriesDescription="AX 5MM", ProtocolName="HEAD ROUTINE"),
        "too_old": write_demo_study(tmp_path / "too_old", 2, patient=patient("20080101", "A2000004"), seed=24,
                                    rows=32, cols=32),
    }


def _uids(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    return found


def _received(storescp: DcmtkStoreSCP) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(storescp.out_dir.iterdir()) if path.is_file()]


def _sr_text(datasets: list[pydicom.Dataset]) -> str:
    def walk(items) -> list[str]:
        texts = []
        for item in items or []:
            texts += [str(item.get("TextValue", ""))] + walk(item.get("ContentSequence"))
        return texts

    sr = [ds for ds in datasets if ds.Modality == "SR"]
    assert len(sr) == 1, "one notes SR"
    return "\n".join(walk(sr[0].ContentSequence))


def _days(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()


def _gateway(tmp_path: Path, reviewer: DcmtkStoreSCP, pacs_port: int, wait_s: float) -> GatewayProcess:
    return GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw/gateway.db", sources=[
        {"name": "st-marys", "ae_title": "STMARYS_PACS",
         "query_retrieve": {"ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}}],
        reviewers=[{"name": "dr-a", "ae_title": reviewer.ae_title, "host": "127.0.0.1", "port": reviewer.port}],
        extra={**FAST, "http": {"host": "127.0.0.1", "port": free_port()}, "priors": {"wait_s": wait_s}})


def _delivered(node: GatewayProcess) -> dict | None:
    states = node.status()["cases_by_state"]
    return states if states == {"delivered": 1} else None


@pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)
def test_the_case_reaches_the_reviewer_with_its_spine_priors_under_the_same_pseudonyms(tmp_path):
    current = write_demo_study(tmp_path / "current", 4, seed=20, rows=32, cols=32)
    pacs_studies = _pacs_studies(tmp_path)
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A")
    orthanc = Orthanc(tmp_path / "pacs", PACS_AE)
    node = _gateway(tmp_path, reviewer, orthanc.dicom_port, wait_s=120)
    orthanc.modalities = {"gateway": ["SPINEGW", "127.0.0.1", node.port]}  # the gateway may C-GET
    try:
        reviewer.start()
        orthanc.start()
        for paths in [current, *pacs_studies.values()]:
            orthanc.upload(paths)  # the PACS holds the case's own study too: it is not its own prior
        node.start()
        assert storescu("127.0.0.1", node.port, current, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: _delivered(node), 180, "the case delivered with its priors")

        received = _received(reviewer)
        by_study: dict[str, list[pydicom.Dataset]] = {}
        for ds in received:
            by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
        assert len(by_study) == 3, "the case's study and its two spine priors"
        assert sorted(len(v) for v in by_study.values()) == [3, 3, 4 + 2], "priors whole; the case with its notes"
        assert {ds.PatientID for ds in received} == {received[0].PatientID} != PATIENT.patient_id
        assert {str(ds.PatientName) for ds in received} == {str(received[0].PatientName)}

        case_images = [ds for ds in received if ds.Modality == "MR" and len(by_study[ds.StudyInstanceUID]) == 6]
        shift = _days(case_images[0].StudyDate) - _days(PATIENT.study_date)
        shifted = {(ds.Modality, ds.StudyDate) for ds in received if ds.Modality in ("MR", "CT")}
        assert shifted == {("MR", str(_days(PATIENT.study_date) + shift).replace("-", "")),
                           ("MR", str(_days("20240815") + shift).replace("-", "")),
                           ("CT", str(_days("20260120") + shift).replace("-", ""))}, "one date shift for all"

        originals = _uids(current) | set().union(*(_uids(paths) for paths in pacs_studies.values()))
        for path in reviewer.out_dir.iterdir():
            data = path.read_bytes()
            leaked = [uid for uid in originals if uid.encode() in data]
            assert not leaked, f"{path.name} holds an original UID"
            for phi in (b"DOE", PATIENT.patient_id.encode(), b"A2000001", b"A2000002", b"20240815", b"20260120"):
                assert phi not in data, f"{path.name} holds {phi!r}"

        notes = _sr_text(received)
        assert "MR LSPINE, 2 years 3 months before this study" in notes
        assert "CT LSPINE, 10 months before this study" in notes
        assert "HEAD" not in notes and "could not" not in notes

        assert node.status()["priors_by_state"] == {"done": 1}
        audit = json.loads(node.cli("audit", "--json").stdout)
        actions = [(event["action"], event["outcome"]) for event in audit]
        assert ("priors_queried", "success") in actions and actions.count(("priors_retrieved", "success")) == 2
        assert not any("MRN0012345" in line or "DOE" in line for line in node.log_file.read_text().splitlines())
    finally:
        node.stop()
        orthanc.stop()
        reviewer.stop()


def test_a_pacs_that_is_down_delays_the_case_at_most_the_wait_and_the_notes_say_so(tmp_path):
    current = write_demo_study(tmp_path / "current", 3, seed=30, rows=32, cols=32)
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A")
    node = _gateway(tmp_path, reviewer, free_port(), wait_s=3)  # nobody listens there
    try:
        reviewer.start()
        node.start()
        assert storescu("127.0.0.1", node.port, current, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: _delivered(node), 120, "the case delivered without priors")
        received = _received(reviewer)
        assert len({ds.StudyInstanceUID for ds in received}) == 1 and len(received) == 3 + 2
        assert "Priors could not be retrieved from the source's PACS; the case went without them." in \
            _sr_text(received)
        assert node.status()["priors_by_state"] == {"unavailable": 1}
        events = [event for event in node.log_events() if event.get("event") == "priors_unavailable"]
        assert len(events) == 1 and events[0]["attempt"] >= 1
    finally:
        node.stop()
        reviewer.stop()


def test_a_node_killed_while_retrieving_resumes_and_delivers_the_priors(tmp_path):
    current = write_demo_study(tmp_path / "current", 3, seed=40, rows=32, cols=32)
    pacs_studies = _pacs_studies(tmp_path)
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A")
    orthanc = Orthanc(tmp_path / "pacs", PACS_AE)
    node = _gateway(tmp_path, reviewer, orthanc.dicom_port, wait_s=120)
    orthanc.modalities = {"gateway": ["SPINEGW", "127.0.0.1", node.port]}
    try:
        reviewer.start()
        orthanc.start()
        for paths in pacs_studies.values():
            orthanc.upload(paths)
        node.start()
        assert storescu("127.0.0.1", node.port, current, calling="STMARYS_PACS").returncode == 0

        def retrieving() -> bool:
            return any(event.get("event") == "prior_retrieved" for event in node.log_events())

        wait_until(retrieving, 120, "a first prior retrieved")
        node.proc.send_signal(signal.SIGKILL)  # kill -9 between the two priors (or just after)
        node.proc.wait(10)
        node.proc = None
        node.stderr.close()
        node.start()
        wait_until(lambda: _delivered(node), 180, "the case delivered with its priors after the restart")
        received = _received(reviewer)
        assert len({ds.StudyInstanceUID for ds in received}) == 3
        assert len({ds.SOPInstanceUID for ds in received}) == 3 + 2 + 3 + 3
    finally:
        node.stop()
        orthanc.stop()
        reviewer.stop()
