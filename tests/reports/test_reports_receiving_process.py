"""Reports through a receiving process (``node.receiving_processes``): the same rules as in the node itself.

The node's own process is stopped (SIGSTOP) while the reviewers send, so that its receiving process takes every
association: a report from a reviewer the case is not assigned to is refused there, the assigned reviewer's is
accepted, and once the node runs again the report goes home once, re-identified, to the source that sent the study.
"""

from __future__ import annotations

import io
import os
import signal

import pydicom

from gateway.demo import write_demo_study
from gateway.dicom import status
from report_peers import PATIENT, hospital_instances, reviewer_images, reviewer_sr, start_site
from support.peers import wait_until
from support.scu import send


def test_a_receiving_process_refuses_the_wrong_reviewer_and_takes_the_assigned_ones_report(tmp_path):
    study = write_demo_study(tmp_path / "study", 6, seed=23, rows=64, cols=64)
    site = start_site(tmp_path, study, f"sqlite:///{tmp_path}/gateway.db", node={"receiving_processes": 1})
    try:
        wait_until(lambda: [e for e in site.node.log_events() if e["event"] == "receiver_started"], 60,
                   "the receiving process")
        report = reviewer_sr(reviewer_images(site.reviewer))
        before = len(site.hospital.get("/instances"))
        os.kill(site.node.proc.pid, signal.SIGSTOP)
        try:
            assert send(site.node.port, [report], calling="REVIEW_B") == [status.NOT_AUTHORIZED]
            assert send(site.node.port, [report], calling="REVIEW_A") == [status.SUCCESS]
        finally:
            os.kill(site.node.proc.pid, signal.SIGCONT)
        events = site.node.log_events()
        refused = [e for e in events if e["event"] == "report_refused"]
        received = [e for e in events if e["event"] == "report_received"]
        assert [(e["reason"], e["component"]) for e in refused] == [("not_assigned_to_caller", "receiver-1")]
        assert [(e["reviewer"], e["component"]) for e in received] == [("dr-a", "receiver-1")]
        wait_until(lambda: site.node.status()["cases_by_state"] == {"report_delivered": 1}, 120, "the report home")
        instances = hospital_instances(site.hospital)
        reports = [i for i in instances if i.get("Modality") == "SR"]
        assert len(reports) == 1 and len(instances) == before + 1, "the report arrived exactly once"
        home = pydicom.dcmread(io.BytesIO(site.hospital.get(f"/instances/{reports[0]['ID']}/file")))
        assert home.PatientID == PATIENT.patient_id and str(home.PatientName) == PATIENT.name
    finally:
        site.stop()
