"""Storage Commitment (Push Model) with the gateway as SCP and Orthanc as the requester (its SCU).

Orthanc stores instances into the running gateway (``POST /modalities/gateway/store``), then asks for their
commitment (``POST /modalities/gateway/storage-commitment``); the gateway answers the N-ACTION, checks the
instances and sends the N-EVENT-REPORT in a new association to the source's ``return`` address, Orthanc's DICOM
port, where Orthanc records the report (``GET /storage-commitment/{transaction}``). pynetdicom plays a
requester only to send the N-ACTIONs Orthanc never would (no return address, a wrong action type).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE

from gateway.demo import write_demo_study
from support.peers import GatewayProcess, Orthanc, free_port, wait_until

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)

PUSH_MODEL = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
# The stages' poll is slow on purpose: a report goes out promptly because the kept request, and each retry when
# due, wake the commitment stage (gateway.storage.wakeup), not because a poll comes by.
FAST = {"routing": {"poll_s": 60, "stable_after_s": 600},
        "commitment": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 50}}
ORTHANC_AE = "ORTHANC_SRC"


def _source(orthanc: Orthanc, port: int | None = None) -> dict:
    return {"name": "orthanc-src", "ae_title": ORTHANC_AE,
            "return": {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": port or orthanc.dicom_port}}


def _references(paths: list[Path]) -> list[dict]:
    references = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        references.append({"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)})
    return references


def _store_through_orthanc(orthanc: Orthanc, paths: list[Path]) -> None:
    ids = [answer["ID"] for answer in orthanc.upload(paths)]
    answer = orthanc.post("/modalities/gateway/store", {"Resources": ids, "Synchronous": True})
    assert answer.get("FailedInstancesCount", 0) == 0, answer


def _ask_commitment(orthanc: Orthanc, references: list[dict]) -> str:
    answer = orthanc.post("/modalities/gateway/storage-commitment", {"DicomInstances": references, "Timeout": 60})
    return answer["ID"]


def _report(orthanc: Orthanc, transaction: str, timeout: float = 20) -> dict:
    def done():
        report = orthanc.get(f"/storage-commitment/{transaction}")
        return report if report.get("Status") != "Pending" else None

    return wait_until(done, timeout, f"Orthanc's storage commitment report {transaction}", interval=0.2)


def _n_action(port: int, calling: str, action_type: int, information: Dataset) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(PUSH_MODEL)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEGW")
    assert assoc.is_established
    try:
        answer, _ = assoc.send_n_action(information, action_type, PUSH_MODEL, WELL_KNOWN)
    finally:
        assoc.release()
    return int(answer.Status)


def _request(references: list[dict]) -> Dataset:
    information = Dataset()
    information.TransactionUID = generate_uid()
    items = []
    for reference in references:
        item = Dataset()
        item.ReferencedSOPClassUID = reference["SOPClassUID"]
        item.ReferencedSOPInstanceUID = reference["SOPInstanceUID"]
        items.append(item)
    information.ReferencedSOPSequence = DicomSequence(items)
    return information


def _audit_actions(node: GatewayProcess) -> list[tuple[str, str]]:
    path = node.workdir / "gateway.db"
    with sqlite3.connect(path) as connection:
        return [tuple(row) for row in connection.execute(
            "SELECT action, outcome FROM audit_event WHERE action LIKE 'commitment%' ORDER BY id")]


def test_orthanc_gets_committed_for_stored_instances_and_a_failure_for_one_never_sent(tmp_path):
    study = write_demo_study(tmp_path / "study", 3, seed=5, rows=32, cols=32)
    never_sent = write_demo_study(tmp_path / "other", 1, seed=6, rows=32, cols=32)
    gateway_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", ORTHANC_AE,
                      modalities={"gateway": ["SPINEGW", "127.0.0.1", gateway_port]})
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw/gateway.db",
                          sources=[_source(orthanc), {"name": "no-return", "ae_title": "NO_RETURN"}],
                          node={"port": gateway_port}, extra=FAST)
    node.port = gateway_port
    try:
        orthanc.start()
        node.start()
        _store_through_orthanc(orthanc, study)
        stored = _references(study)

        all_stored = _report(orthanc, _ask_commitment(orthanc, stored))
        assert all_stored["Status"] == "Success", all_stored
        assert sorted(i["SOPInstanceUID"] for i in all_stored["Success"]) == sorted(
            r["SOPInstanceUID"] for r in stored)
        assert all_stored["Failures"] == []

        missing = _references(never_sent)
        mixed = _report(orthanc, _ask_commitment(orthanc, stored + missing))
        assert mixed["Status"] == "Failure", mixed
        assert len(mixed["Success"]) == len(stored)
        assert [f["SOPInstanceUID"] for f in mixed["Failures"]] == [missing[0]["SOPInstanceUID"]]
        assert mixed["Failures"][0]["FailureReason"] == 0x0112  # No such object instance

        # what Orthanc never sends: a source without a return address, a wrong action type
        assert _n_action(gateway_port, "NO_RETURN", 1, _request(stored)) == 0x0124
        assert _n_action(gateway_port, ORTHANC_AE, 7, _request(stored)) == 0x0123

        commitments = node.status()["commitments"]
        assert commitments["by_state"] == {"reported": 2} and commitments["open"] == []
        actions = _audit_actions(node)
        assert actions.count(("commitment_requested", "success")) == 2
        assert ("commitment_reported", "success") in actions and ("commitment_reported", "failed") in actions
        assert actions.count(("commitment_refused", "refused")) == 2
    finally:
        node.stop()
        orthanc.stop()


def test_a_report_that_cannot_be_sent_shows_in_status_and_is_sent_after_a_restart(tmp_path):
    study = write_demo_study(tmp_path / "study", 2, seed=7, rows=32, cols=32)
    gateway_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", ORTHANC_AE,
                      modalities={"gateway": ["SPINEGW", "127.0.0.1", gateway_port]})
    nobody = free_port()  # the return address is wrong at first: nothing listens there
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw/gateway.db",
                          sources=[_source(orthanc, port=nobody)], node={"port": gateway_port}, extra=FAST)
    node.port = gateway_port
    try:
        orthanc.start()
        node.start()
        _store_through_orthanc(orthanc, study)
        transaction = _ask_commitment(orthanc, _references(study))

        def retried():
            open_requests = node.status()["commitments"]["open"]
            return open_requests if open_requests and open_requests[0]["attempts"] >= 2 else None

        pending = wait_until(retried, 20, "the report tried twice and still pending")[0]
        assert pending["state"] == "pending" and pending["last_error"] and pending["instances"] == 2
        assert orthanc.get(f"/storage-commitment/{transaction}")["Status"] == "Pending"

        node.stop()
        node.config["sources"] = [_source(orthanc)]  # the operator corrects the return address
        node.start()
        report = _report(orthanc, transaction)
        assert report["Status"] == "Success" and len(report["Success"]) == 2
        status = node.status()["commitments"]
        assert status["by_state"] == {"reported": 1} and status["open"] == []
    finally:
        node.stop()
        orthanc.stop()
