"""The report goes home over TLS (issue 25): the source's ``return`` is DCMTK's storescp ``+tls`` asking for the
gateway's certificate (mutual TLS), with a PKI made by openssl in the test. The reviewer is a plain storescp; its
report SR comes back by C-STORE and reaches the hospital re-identified, through TLS only.
"""

from __future__ import annotations

import pydicom
import pytest

from gateway.demo import write_demo_study
from gateway.dicom import status
from report_peers import reviewer_sr
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu, wait_until
from support.pki import make_pki
from support.scu import send

pytestmark = pytest.mark.slow
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 50}},
        "referrals": {"wait_s": 0}}  # no referral: the case goes with "No referral received" notes
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"


def test_the_report_reaches_a_tls_only_hospital_re_identified(tmp_path):
    pki = make_pki(tmp_path / "pki", name="hospital")
    study = write_demo_study(tmp_path / "study", 2, rows=64, cols=64)
    original = pydicom.dcmread(study[0])
    hospital = DcmtkStoreSCP(
        tmp_path / "hospital", ae_title="HOSP_RETURN",
        extra_args=["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca_cert)],
        probe_args=["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert)]).start()
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    tls = {"enabled": True, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
           "key_file": str(pki.client_key)}
    node = GatewayProcess(
        tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db",
        sources=[{"name": "st-marys", "ae_title": "STMARYS_PACS",
                  "return": {"ae_title": "HOSP_RETURN", "host": "127.0.0.1", "port": hospital.port, "tls": tls}}],
        reviewers=[{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.port}], extra=FAST)
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: node.status()["cases_by_state"].get("delivered") == 1, 120, "the case delivered")
        images = [ds for ds in map(pydicom.dcmread, sorted(reviewer.out_dir.iterdir())) if ds.Modality == "MR"]
        assert send(node.port, [reviewer_sr(images)], calling="REVIEW_A") == [status.SUCCESS]
        wait_until(lambda: any(hospital.out_dir.iterdir()), 120, "the report at the hospital")
    finally:
        node.stop()
        reviewer.stop()
        hospital.stop()
    (report,) = [pydicom.dcmread(path) for path in hospital.out_dir.iterdir()]
    assert report.SOPClassUID == ENHANCED_SR
    assert (report.PatientID, report.StudyInstanceUID) == (original.PatientID, original.StudyInstanceUID)
