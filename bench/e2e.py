"""End-to-end benchmark (not a test): first instance sent by storescu → whole study at a storescp reviewer,
and the report's way back. Medians of interleaved runs, in one run of the script.

Paths for the same study (``--instances``, 300 by default), each run with fresh processes and storage:

(plain)      DCMTK storescu → storescp (the floor);
(forward)    storescu → Orthanc, then ``POST /modalities/reviewer/store`` to a storescp (untouched copy);
(anonymize)  storescu → Orthanc, ``POST /studies/{id}/anonymize``, then the anonymized study forwarded to a
             storescp through ``POST /modalities/reviewer/store`` (each POST issued the moment the step before
             has finished: a script that knows when the study is complete);
(gateway)    storescu → spine-gateway with the SHIPPED configuration (config/gateway.yaml: routing, deid,
             referrals, node limits; only addresses, paths and peers are set here): completion, spine check,
             de-identification, notes from the referral added beforehand, assignment, delivery to a storescp
             reviewer. The stability wait (``routing.stable_after_s``, 60 s shipped) is subtracted: it is a
             configured pause (the gateway cannot know a study is complete), not work.

Then, on each gateway run, the report's way back: a report SR (built once by ``report create --no-send``) is
sent by storescu as the reviewer; timed from the storescu call to the re-identified report written by the
source's storescp (playing the PACS), and from the gateway's ``report_received`` log event to its
``report_delivered`` event.

TCP_NODELAY=1 for the DCMTK tools and Orthanc; the gateway sets it on its own sockets. Run as root through
``scripts/in-private-net.sh`` (servers in a network namespace with only loopback):

    scripts/in-private-net.sh .venv/bin/python bench/e2e.py [--runs 5] [--instances 300] [--stable-s 2] [--poll-only]
    scripts/in-private-net.sh .venv/bin/python bench/e2e.py --sustained --stable-s 2 --runs 1

``--stable-s S`` sets the gateway's ``routing.stable_after_s`` (subtracted as before): with the shipped 60 s, the
de-identification runs during the wait and does not show; with 2 s it does. ``--deid-workers N`` sets ``deid.workers``.

``--sustained`` times, instead, 10 different 300-instance studies (``--instances``) sent by 5 storescu senders at once,
each sending its two studies back to back: until every case (with its notes) is at the reviewer, against Orthanc
receiving the same studies, each anonymized (``/anonymize``) and forwarded the moment its sender is done; the
gateway's stability wait is subtracted once (the last study's).

``--poll-only`` also times the gateway with ``routing.wakeups: false`` (the shipped poll alone), for comparison.
``--priors N`` also times the gateway with priors: an Orthanc of its own plays the source's PACS (``query_retrieve``)
holding N earlier lumbar MR studies of the patient (``--prior-instances`` each, default ``--instances``); the
study is complete at the reviewer once the priors are there too. The delay priors add is the difference of the
two medians (and the ``priors_finished`` log event's duration: de-identification to priors done).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pydicom
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's process helpers: real peers started and stopped by PID
sys.path.insert(0, str(REPO / "bench"))

from ingest import cached_study, study  # noqa: E402

from gateway.demo import DemoPatient, write_demo_study  # noqa: E402
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, storescu, wait_until  # noqa: E402

SHIPPED = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
REFERRAL = {"source": "st-marys", "accession_number": DemoPatient().accession, "urgency": "routine",
            "patient": {"id": DemoPatient().patient_id, "name": "Doe^Jane"},
            "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"}}
FINDINGS = "findings: [{text: L4-L5 disc extrusion.}]\nimpressions: [L4-L5 disc extrusion.]\n"
POLL_INTERVAL = 0.01  # how often the script looks at the reviewer's folder


def received(scp: DcmtkStoreSCP) -> int:
    return sum(1 for p in scp.out_dir.iterdir() if p.is_file())


def send(port: int, files: list[Path], calling: str, called: str) -> None:
    result = storescu("127.0.0.1", port, files, calling=calling, called=called, timeout=3600)
    if result.returncode != 0 or "E:" in result.stderr:
        raise SystemExit(f"storescu failed: {result.stderr[-500:]}")


def plain(files: list[Path], work: Path) -> float:
    scp = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEWER").start()
    try:
        started = time.perf_counter()
        send(scp.port, files, "BENCH", "REVIEWER")
        wait_until(lambda: received(scp) >= len(files), 600, "storescp to write every file", POLL_INTERVAL)
        return time.perf_counter() - started
    finally:
        scp.stop()


def orthanc(files: list[Path], work: Path, anonymize: bool) -> float:
    scp = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEWER").start()
    peer = Orthanc(work / "orthanc", "ORTHANC", modalities={"reviewer": ["REVIEWER", "127.0.0.1", scp.port]})
    peer.start()
    try:
        started = time.perf_counter()
        send(peer.dicom_port, files, "BENCH", "ORTHANC")
        study_id, = peer.get("/studies")
        if anonymize:
            study_id = peer.post(f"/studies/{study_id}/anonymize", {"Force": False})["ID"]
        peer.post("/modalities/reviewer/store", {"Resources": [study_id], "Synchronous": True})
        wait_until(lambda: received(scp) >= len(files), 600, "the forwarded study", POLL_INTERVAL)
        return time.perf_counter() - started
    finally:
        peer.stop()
        scp.stop()


def _ts(event: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))


def prior_studies(count: int, instances: int, work: Path) -> list[list[Path]]:
    """``count`` earlier lumbar MR studies of the demo patient, a year apart (rules: within 10 years, spine, MR)."""
    return [write_demo_study(work / f"prior-{number}", instances, seed=100 + number,
                             patient=DemoPatient(study_date=f"{2025 - number}0601", accession=f"A90000{number:02d}"))
            for number in range(count)]


PRIORS_LOG: list[float] = []  # the priors_finished events' durations (de-identified -> priors done), seconds


def gateway_node(work: Path, reviewer: DcmtkStoreSCP, source: DcmtkStoreSCP, pacs: Orthanc | None = None,
                 wakeups: bool = True) -> GatewayProcess:
    """The node with the shipped configuration (only addresses, paths and peers set here), not started."""
    node_shipped = {k: v for k, v in SHIPPED["node"].items() if k not in ("host", "port", "ae_title")}
    routing = {**SHIPPED["routing"], "wakeups": wakeups and SHIPPED["routing"].get("wakeups", True)}
    return GatewayProcess(
        work / "gw", f"sqlite:///{work}/gw/gateway.db", node=node_shipped,
        sources=[{"name": "st-marys", "ae_title": "STMARYS_PACS",
                  "return": {"ae_title": "STMARYS_PACS", "host": "127.0.0.1", "port": source.port},
                  **({"query_retrieve": {"ae_title": "STMARYS_QR", "host": "127.0.0.1", "port": pacs.dicom_port}}
                     if pacs is not None else {})}],
        reviewers=[{"name": "dr-a", "ae_title": "REVIEWER", "host": "127.0.0.1", "port": reviewer.port}],
        extra={"routing": routing, "deid": SHIPPED["deid"], "referrals": SHIPPED["referrals"],
               "http": {"enabled": False}})


def gateway(files: list[Path], work: Path, report: Path | None, wakeups: bool = True,
            priors: list[list[Path]] | None = None) -> tuple[float, float | None, float | None, Path | None]:
    """(study seconds minus the stability wait, report wall seconds, report seconds in the log, built report)."""
    reviewer = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEWER").start()
    source = DcmtkStoreSCP(work / "source", ae_title="STMARYS_PACS").start()
    pacs = Orthanc(work / "pacs", "STMARYS_QR") if priors else None
    node = gateway_node(work, reviewer, source, pacs, wakeups)
    stable_after = float(SHIPPED["routing"]["stable_after_s"])
    try:
        if pacs is not None:
            pacs.modalities = {"gateway": ["SPINEGW", "127.0.0.1", node.port]}
            pacs.start()
            for paths in priors or []:
                pacs.upload(paths)
        node.start()
        (work / "referral.json").write_text(json.dumps(REFERRAL))
        node.cli("referral", "add", str(work / "referral.json"))
        expected = len(files) + 2 + sum(map(len, priors or []))  # the images, the notes SR and PDF, the priors
        started = time.perf_counter()
        send(node.port, files, "STMARYS_PACS", "SPINEGW")
        wait_until(lambda: received(reviewer) >= expected, 900, "the gateway to deliver the study", POLL_INTERVAL)
        study_s = time.perf_counter() - started - stable_after
        wait_until(lambda: any(e["event"] == "case_state_changed" and e.get("state") == "delivered"
                               for e in node.log_events()), 60, "the delivery to be committed")
        if pacs is not None:
            PRIORS_LOG.extend(e["duration_ms"] / 1000 for e in node.log_events() if e["event"] == "priors_finished")
        report_wall = report_log = None
        if report is None:
            case_key = node.status()["recent_studies"][0]["study"]
            (work / "findings.yaml").write_text(FINDINGS)
            node.cli("report", "create", case_key, "--findings", str(work / "findings.yaml"), "--no-send",
                     "--out", str(work / "report"))
            report = next((work / "report").glob("*.dcm"))
        else:
            started = time.perf_counter()
            send(node.port, [report], "REVIEWER", "SPINEGW")
            wait_until(lambda: received(source) >= 1, 120, "the report at the source", POLL_INTERVAL)
            report_wall = time.perf_counter() - started
            events = wait_until(lambda: _report_events(node), 60, "the report delivery logged")
            report_log = (_ts(events[1]) - _ts(events[0])).total_seconds()
        return study_s, report_wall, report_log, report
    finally:
        node.stop()
        if pacs is not None:
            pacs.stop()
        source.stop()
        reviewer.stop()


SUSTAINED_STUDIES = 10
SUSTAINED_SENDERS = 5


def sustained_studies(instances: int) -> list[list[Path]]:
    """``SUSTAINED_STUDIES`` different studies (patients, accessions, UIDs, pixels), cached beside ``study``'s."""
    return [cached_study(f"sustained-{instances}-{number}", instances, 200 + number,
                         DemoPatient(patient_id=f"MRN{7000000 + number}", accession=f"A8{number:06d}"))
            for number in range(SUSTAINED_STUDIES)]


def send_back_to_back(port: int, studies: list[list[Path]], called: str,
                      after_each: Callable[[list[Path]], None] | None = None) -> None:
    """``SUSTAINED_SENDERS`` storescu senders at once, each sending its share of ``studies`` one after the other
    (one association per study); ``after_each`` is called with each study the moment its sender is done."""
    def sender(share: list[list[Path]]) -> None:
        for files in share:
            send(port, files, "STMARYS_PACS", called)
            if after_each is not None:
                after_each(files)

    with ThreadPoolExecutor(SUSTAINED_SENDERS) as senders:
        shares = [studies[number::SUSTAINED_SENDERS] for number in range(SUSTAINED_SENDERS)]
        for finished in [senders.submit(sender, share) for share in shares]:
            finished.result()


def orthanc_sustained(studies: list[list[Path]], work: Path) -> float:
    """Orthanc receiving the studies from the senders; each anonymized and forwarded the moment it is whole."""
    scp = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEWER").start()
    peer = Orthanc(work / "orthanc", "ORTHANC", modalities={"reviewer": ["REVIEWER", "127.0.0.1", scp.port]})
    uids = {id(files): str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in studies}
    peer.start()
    total = sum(map(len, studies))
    try:
        with ThreadPoolExecutor(len(studies)) as forwarders:
            forwarded: list[Future] = []
            started = time.perf_counter()

            def forward(files: list[Path]) -> None:
                study_id, = peer.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": uids[id(files)]}})
                anonymized = peer.post(f"/studies/{study_id}/anonymize", {"Force": False})["ID"]
                peer.post("/modalities/reviewer/store", {"Resources": [anonymized], "Synchronous": True}, timeout=900)

            send_back_to_back(peer.dicom_port, studies, "ORTHANC",
                              lambda files: forwarded.append(forwarders.submit(forward, files)))
            for done in forwarded:
                done.result()
            wait_until(lambda: received(scp) >= total, 900, "every forwarded study", SUSTAINED_POLL)
            return time.perf_counter() - started
    finally:
        peer.stop()
        scp.stop()


SUSTAINED_POLL = 0.05  # the reviewer's folder holds thousands of files: looked at less often


def gateway_sustained(studies: list[list[Path]], work: Path) -> float:
    """The node receiving the studies from the senders (referrals added beforehand) until every case, with its
    notes, is at the reviewer; the stability wait subtracted once (the last study's)."""
    reviewer = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEWER").start()
    source = DcmtkStoreSCP(work / "source", ae_title="STMARYS_PACS").start()
    node = gateway_node(work, reviewer, source)
    expected = sum(map(len, studies)) + 2 * len(studies)  # the images, each case's notes SR and PDF
    try:
        node.start()
        for number, files in enumerate(studies):
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            referral = {**REFERRAL, "accession_number": str(first.AccessionNumber),
                        "patient": {"id": str(first.PatientID), "name": "Doe^Jane"}}
            (work / f"referral-{number}.json").write_text(json.dumps(referral))
            node.cli("referral", "add", str(work / f"referral-{number}.json"))
        started = time.perf_counter()
        send_back_to_back(node.port, studies, "SPINEGW")
        wait_until(lambda: received(reviewer) >= expected, 1800, "the gateway to deliver every case", SUSTAINED_POLL)
        return time.perf_counter() - started - float(SHIPPED["routing"]["stable_after_s"])
    finally:
        node.stop()
        source.stop()
        reviewer.stop()


def sustained(instances: int, runs: int) -> None:
    studies = sustained_studies(instances)
    total = sum(map(len, studies))
    times: dict[str, list[float]] = {"anonymize": [], "gateway": []}
    with tempfile.TemporaryDirectory(prefix="spinegw-e2e-", dir="/var/tmp") as tmp:
        key = Path(tmp) / "secret.key"
        key.write_text("ab" * 32 + "\n")
        SHIPPED["deid"]["secret_file"] = str(key)
        for run in range(runs):
            for name, values in times.items():
                work = Path(tmp) / f"sustained-{name}-{run}"
                seconds = orthanc_sustained(studies, work) if name == "anonymize" else gateway_sustained(studies, work)
                values.append(seconds)
                print(f"  run {run + 1} {name:10s} {seconds:7.2f} s  {total / seconds:6.1f} instances/s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nsustained: {len(studies)} studies of {instances} instances from {SUSTAINED_SENDERS} senders back to "
          f"back; medians of {runs} interleaved run(s); stable_after_s {SHIPPED['routing']['stable_after_s']} "
          f"subtracted once")
    print(f"Orthanc receive + anonymize + forward   {median['anonymize']:7.2f} s  {total / median['anonymize']:6.1f} "
          f"instances/s")
    print(f"spine-gateway to the reviewer           {median['gateway']:7.2f} s  {total / median['gateway']:6.1f} "
          f"instances/s")
    print(f"gateway throughput / Orthanc's: {median['anonymize'] / median['gateway']:5.2f}  (target >= 1.20)")


def _report_events(node: GatewayProcess) -> tuple[dict, dict] | None:
    events = node.log_events()
    got = next((e for e in events if e["event"] == "report_received"), None)
    done = next((e for e in events if e["event"] == "report_delivered"), None)
    return (got, done) if got and done else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--poll-only", action="store_true", help="also the gateway with routing.wakeups false")
    parser.add_argument("--priors", type=int, default=0, help="also the gateway with this many priors in a PACS")
    parser.add_argument("--prior-instances", type=int, default=None, help="instances of each prior")
    parser.add_argument("--stable-s", type=float, default=None,
                        help="routing.stable_after_s for the gateway (default: the shipped 60 s), so that the work "
                             "done during the wait shows")
    parser.add_argument("--sustained", action="store_true",
                        help=f"instead: {SUSTAINED_STUDIES} different studies from {SUSTAINED_SENDERS} senders back "
                             "to back, gateway against Orthanc anonymizing and forwarding each")
    parser.add_argument("--deid-workers", type=int, default=None, help="deid.workers for the gateway (default: "
                        "the shipped value)")
    args = parser.parse_args()
    if args.stable_s is not None:
        SHIPPED["routing"]["stable_after_s"] = args.stable_s
    if args.deid_workers is not None:
        SHIPPED["deid"]["workers"] = args.deid_workers
    if args.sustained:
        sustained(args.instances, args.runs)
        return 0
    files = study(args.instances)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    times: dict[str, list[float]] = {"plain": [], "forward": [], "anonymize": [], "gateway": []}
    if args.poll_only:
        times["gateway, poll only"] = []
    if args.priors:
        times["gateway, priors"] = []
    report_wall: list[float] = []
    report_log: list[float] = []
    report: Path | None = None
    with tempfile.TemporaryDirectory(prefix="spinegw-e2e-", dir="/var/tmp") as tmp:
        # one unmeasured gateway run builds the report SR (pseudonymous UIDs are stable: same key, same study)
        key = Path(tmp) / "secret.key"
        key.write_text("ab" * 32 + "\n")
        SHIPPED["deid"]["secret_file"] = str(key)
        *_, report = gateway(files, Path(tmp) / "warm-up", None)
        priors = prior_studies(args.priors, args.prior_instances or args.instances, Path(tmp) / "priors")
        for run in range(args.runs):
            for name in times:  # interleaved, so that drifts of the (shared) machine hit every path alike
                work = Path(tmp) / f"{name.replace(', ', '-')}-{run}"
                if name == "plain":
                    seconds = plain(files, work)
                elif name in ("forward", "anonymize"):
                    seconds = orthanc(files, work, anonymize=name == "anonymize")
                else:
                    seconds, wall, logged, _ = gateway(files, work, report, wakeups=name != "gateway, poll only",
                                                       priors=priors if name == "gateway, priors" else None)
                    if name == "gateway":
                        report_wall.append(wall)
                        report_log.append(logged)
                times[name].append(seconds)
                print(f"  run {run + 1} {name:18s} {seconds:7.2f} s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    routing = SHIPPED["routing"]
    print(f"\nstudy: {len(files)} instances, {megabytes:.0f} MB; medians of {args.runs} interleaved runs")
    print(f"gateway: shipped config (poll_s {routing['poll_s']}, stable_after_s {routing['stable_after_s']} "
          f"subtracted, wakeups {routing.get('wakeups', True)})")
    labels = {"plain": "storescu -> storescp", "forward": "storescu -> Orthanc -> forward",
              "anonymize": "storescu -> Orthanc -> anonymize -> forward",
              "gateway": "storescu -> spine-gateway -> reviewer", "gateway, poll only": "  same, wakeups: false",
              "gateway, priors": f"  same, with {args.priors} prior(s) from a PACS"}
    for name, seconds in median.items():
        print(f"{labels[name]:45s} {seconds:7.2f} s   (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"gateway / Orthanc anonymize+forward: {median['gateway'] / median['anonymize']:5.2f}  (target <= 0.70)")
    print(f"gateway / Orthanc forward:           {median['gateway'] / median['forward']:5.2f}")
    print(f"gateway / storescu->storescp:        {median['gateway'] / median['plain']:5.2f}")
    if args.priors:
        print(f"delay priors add: {median['gateway, priors'] - median['gateway']:.2f} s (medians); de-identified -> "
              f"priors done in the log: {statistics.median(PRIORS_LOG):.2f} s")
    print(f"report received -> re-identified report at the source: {statistics.median(report_wall):.3f} s wall "
          f"(storescu call to file), {statistics.median(report_log):.3f} s in the gateway's log (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
