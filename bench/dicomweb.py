"""DICOMweb benchmark (not a test): what a reviewer's viewer waits for, in process, over real HTTP.

Starts the node's HTTP server with the DICOMweb routes on a fresh SQLite database (no DICOM, no pipeline), puts a
synthetic study (``--instances`` MR images of 512x512, about 525 KB each) in the spool as the outbound objects of a
case delivered to dr-a (with a reason for the procedure, which the node writes into each image as it serves it),
issues dr-a a token, and an Orthanc of our own with Debian's DICOMweb plugin (``orthanc-dicomweb``) holding the same
files; then times, with ``requests``, their rounds interleaved: a warm QIDO search of the study's instances, WADO-RS
of the whole study (multipart/related, every byte), every image's first frame asked one at a time (as a viewer
scrolls), and a rendered JPEG. Prints medians, the ratio Orthanc / gateway (above 1: the gateway is faster), and the
gateway's throughput. Run it in the loopback-only namespace (Orthanc binds every interface):

    scripts/in-private-net.sh .venv/bin/python bench/dicomweb.py [--instances 300] [--repeat 5] [--no-orthanc]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests

from gateway.accounts import tokens
from gateway.config import GatewayConfig
from gateway.demo import write_demo_study
from gateway.dicomweb.routes import dicomweb_routes
from gateway.http.app import build_application
from gateway.http.server import HttpServer
from gateway.ops.metrics import GatewayMetrics
from gateway.stages.context import NodeContext
from gateway.storage.cases import LeaseOwner
from gateway.storage.models import CaseState, OutboundObject, Study, db, open_database, sync_sources
from gateway.storage.spool import Spool

REASON = "Low back pain radiating to the left leg; L5 root compression?"


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def put_case(config: GatewayConfig, spool: Spool, files: list[Path]) -> str:
    """The files as the outbound objects of a case delivered to dr-a; returns its (pseudonymous) study UID."""
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    with db.connection_context():
        sync_sources([("st-marys", "HOSP_PACS")])
        study = Study.create(study_uid="1.2.3.4.5", pseudo_study_uid=str(first.StudyInstanceUID), calling_ae="HOSP",
                             state=CaseState.DELIVERED, reviewer="dr-a", notes_reason=REASON)
        for path in files:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            data = path.read_bytes()
            written = spool.write_outbound(study.key, path.name, data)
            OutboundObject.create(study=study, kind="image", sop_instance_uid=str(header.SOPInstanceUID),
                                  sop_class_uid=str(header.SOPClassUID),
                                  transfer_syntax=str(header.file_meta.TransferSyntaxUID),
                                  spool_path=spool.relative(written), sha256=str(hash(data)), size=len(data))
    return str(first.StudyInstanceUID)


def bench_case(work: Path, instances: int, size: int = 512) -> tuple[GatewayConfig, Spool, list[Path], str]:
    """A fresh SQLite node in ``work`` with a demo study of ``instances`` images delivered to dr-a: its config, spool,
    files and pseudonymous study UID."""
    config = GatewayConfig.model_validate({
        "storage": {"database": f"sqlite:///{work}/gw.db", "spool_dir": str(work / "spool"), "min_free_bytes": 0},
        "http": {"port": 0}, "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}]})
    open_database(config.storage.database, max_connections=16)
    spool = Spool(config.storage.spool_dir)
    spool.prepare()
    files = write_demo_study(work / "study", instances, seed=3, rows=size, cols=size)
    return config, spool, files, put_case(config, spool, files)


ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-orthanc", action="store_true", help="time the node alone")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    config, spool, files, study_uid = bench_case(work, args.instances)
    with db.connection_context():
        token = tokens.issue(config, "dr-a")
    context = NodeContext(db, LeaseOwner("bench"), None, GatewayMetrics())
    server = HttpServer(config.http, build_application(config.http, {}, context=context,
                                                       dicomweb=dicomweb_routes(config, spool, context)))
    server.start()
    gateway = requests.Session()
    gateway.headers["Authorization"] = f"Bearer {token}"
    peers = {"spine-gateway": (gateway, f"http://127.0.0.1:{server.port}/dicomweb")}
    orthanc = None
    try:
        if not args.no_orthanc and ORTHANC_PLUGIN.exists():
            orthanc = _orthanc(work, files)
            peers["Orthanc"] = (requests.Session(), orthanc.url("/dicom-web"))
        elif not args.no_orthanc:
            print(f"(no {ORTHANC_PLUGIN}: apt-get install orthanc-dicomweb to compare with Orthanc)")
        run(peers, study_uid, args.repeat)
    finally:
        server.stop()
        if orthanc is not None:
            orthanc.stop()


def _orthanc(work: Path, files: list[Path]):
    """An Orthanc of our own with Debian's DICOMweb plugin, holding the same files."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.peers import Orthanc

    orthanc = Orthanc(work / "orthanc", "ORTHANC", extra={
        "Plugins": [str(ORTHANC_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}).start()
    try:
        orthanc.upload(files)
    except BaseException:
        orthanc.stop()
        raise
    return orthanc


def run(peers: dict, study_uid: str, repeat: int) -> None:
    """Each measure on every peer, their rounds interleaved; prints medians and the ratio to Orthanc."""
    results: dict[str, dict[str, float]] = {name: {} for name in peers}
    instances: dict[str, list] = {}
    for name, (session, base) in peers.items():
        started = time.perf_counter()
        instances[name] = _get(session, f"{base}/studies/{study_uid}/instances").json()
        print(f"{name}: first QIDO of the study's instances {(time.perf_counter() - started) * 1000:.0f} ms")
    measures = {
        "QIDO instances (warm), ms": lambda s, b, i: _get(s, f"{b}/studies/{study_uid}/instances"),
        "WADO-RS whole study, s": lambda s, b, i: _get(s, f"{b}/studies/{study_uid}", DICOM_ACCEPT),
        "frames one at a time, s": lambda s, b, i: [_get(s, _instance_url(b, study_uid, item) + "/frames/1")
                                                     for item in i],
        "rendered JPEG, ms": lambda s, b, i: _get(s, _instance_url(b, study_uid, i[len(i) // 2]) + "/rendered",
                                                  "image/jpeg"),
    }
    size = len(_get(peers["spine-gateway"][0], f"{peers['spine-gateway'][1]}/studies/{study_uid}",
                    DICOM_ACCEPT).content)
    for label, measure in measures.items():
        times: dict[str, list[float]] = {name: [] for name in peers}
        for _ in range(repeat * (5 if label.endswith("ms") else 1)):  # the quick ones: more rounds
            for name, (session, base) in peers.items():
                times[name].append(seconds(lambda m=measure, s=session, b=base, n=name: m(s, b, instances[n])))
        for name in peers:
            results[name][label] = statistics.median(times[name]) * (1000 if label.endswith("ms") else 1)
    count = len(instances["spine-gateway"])
    print(f"{count} objects, {size / 1e6:.0f} MB; medians of {repeat} interleaved rounds")
    for label in measures:
        row = "  ".join(f"{name} {results[name][label]:8.2f}" for name in peers)
        ratio = (f"   Orthanc / gateway {results['Orthanc'][label] / results['spine-gateway'][label]:5.2f}"
                 if "Orthanc" in results else "")
        print(f"{label:28} {row}{ratio}")
    whole = results["spine-gateway"]["WADO-RS whole study, s"]
    scroll = results["spine-gateway"]["frames one at a time, s"]
    print(f"spine-gateway: WADO-RS {size / 1e6 / whole:.1f} MB/s, {count / whole:.1f} objects/s; "
          f"frames {count / scroll:.1f}/s")


def _get(session: requests.Session, url: str, accept: str | None = None) -> requests.Response:
    answer = session.get(url, headers={"Accept": accept} if accept else {}, timeout=600)
    assert answer.status_code == 200, (url, answer.status_code)
    return answer


def _instance_url(base: str, study_uid: str, item: dict) -> str:
    series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
    return f"{base}/studies/{study_uid}/series/{series}/instances/{sop}"


if __name__ == "__main__":
    main()
