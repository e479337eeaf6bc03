"""Delivery exactly once where the peer allows it (issue 28): kill -9 of the node mid-delivery, then a restart.

The reviewer is Orthanc, which answers C-FIND; a Lua filter appends the SOP Instance UID of every C-STORE it
receives to a file, so that an object received twice shows twice (Orthanc itself keeps one copy). With
``query: true`` the restarted node asks the reviewer what it holds of the case and sends only the rest: every
object arrives, none twice. Without it the objects of the last unwritten ledger batch are sent again, and the
node counts them in ``spine_gateway_delivery_resent_after_recovery_total``.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from gateway.storage.models import CaseState, Delivery, Study
from routing_db import add_outbound, make_case, open_db
from support.peers import GatewayProcess, Orthanc, free_port, wait_until

LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  local f = io.open("{path}", "a")
  f:write(dicom.SOPInstanceUID .. "\\n")
  f:close()
  return true
end
"""


def _reviewer(workdir: Path) -> tuple[Orthanc, Path]:
    received = workdir / "received.txt"
    script = workdir / "count.lua"
    workdir.mkdir(parents=True, exist_ok=True)
    script.write_text(LUA.replace("{path}", str(received)))
    return Orthanc(workdir, "REVIEW_A", extra={"LuaScripts": [str(script)], "DicomAlwaysAllowFind": True}), received


def _metric(node: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.config['http']['port']}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("query", [True, False], ids=["reviewer answers C-FIND", "no query"])
def test_kill_9_mid_delivery_then_restart(tmp_path, big_study, query):
    study_files = big_study[:200]
    orthanc, received = _reviewer(tmp_path / "orthanc")
    url = f"sqlite:///{tmp_path}/gw.db"
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": orthanc.dicom_port, "query": query}],
        extra={"http": {"host": "127.0.0.1", "port": free_port()},
               "routing": {"poll_s": 0.2, "stable_after_s": 0.5,
                           "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 12}}})
    database = open_db(url)
    with database.connection_context():
        study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
        pseudo_uid = str(pydicom.dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
        Study.update(pseudo_study_uid=pseudo_uid).where(Study.id == study.id).execute()
        add_outbound(study, node.spool_dir, study_files)
    database.close()

    def arrived() -> list[str]:
        return received.read_text().split() if received.exists() else []

    try:
        orthanc.start()
        node.start()
        wait_until(lambda: len(arrived()) >= 40, 120, "part of the study at the reviewer")
        node.kill()
        part = len(arrived())
        assert part < len(study_files), "killed mid-delivery"
        node.start()
        with database.connection_context():
            wait_until(lambda: Study.get_by_id(study.id).state == CaseState.DELIVERED, 180, "the case delivered")
            assert Delivery.select().where(Delivery.state == "sent").count() == len(study_files)
        copies = Counter(arrived())
        assert set(copies) == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study_files}
        twice = sum(n - 1 for n in copies.values())
        recovered = [e for e in node.log_events() if e["event"] == "delivery_recovered"]
        assert len(recovered) == 1
        if query:
            assert twice == 0, f"{twice} object(s) received twice"
            assert recovered[0]["status"] == "queried" and recovered[0]["count"] == 0
            assert _metric(node, "spine_gateway_delivery_resent_after_recovery_total") == 0
            assert _metric(node, "spine_gateway_delivery_found_after_recovery_total") == recovered[0]["instances"]
        else:
            assert recovered[0]["status"] == "not_queried"
            resent = _metric(node, "spine_gateway_delivery_resent_after_recovery_total")
            assert resent == recovered[0]["count"] and twice <= resent, "every duplicate was counted"
    finally:
        node.stop()
        orthanc.stop()
