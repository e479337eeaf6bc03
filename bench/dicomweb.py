"""DICOMweb benchmark (not a test): what a reviewer's viewer waits for, in process, over real HTTP.

Starts the node's HTTP server with the DICOMweb routes on a fresh SQLite database (no DICOM, no pipeline), puts a
synthetic study (``--instances`` MR images of 512x512, about 525 KB each) in the spool as the outbound objects of a
case delivered to dr-a (with a reason for the procedure, which the node writes into each image as it serves it),
issues dr-a a token, then times with ``requests``: the first QIDO search of the study (every header read from the
spool), a warm one, WADO-RS of the whole study (multipart/related, every byte), every image's first frame asked one
at a time (as a viewer scrolls), and rendered JPEGs. Prints medians; throughput in MB/s and objects/s.

    python -P bench/dicomweb.py [--instances 300] [--repeat 5]   # -P: bench/concurrent.py hides the stdlib's
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
import requests

from gateway.config import GatewayConfig
from gateway.demo import write_demo_study
from gateway.dicomweb import tokens
from gateway.dicomweb.routes import dicomweb_routes
from gateway.http.app import build_application
from gateway.http.server import HttpServer
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    config = GatewayConfig.model_validate({
        "storage": {"database": f"sqlite:///{work}/gw.db", "spool_dir": str(work / "spool"), "min_free_bytes": 0},
        "http": {"port": 0}, "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}]})
    open_database(config.storage.database, max_connections=16)
    spool = Spool(config.storage.spool_dir)
    spool.prepare()
    files = write_demo_study(work / "study", args.instances, seed=3)
    study_uid = put_case(config, spool, files)
    with db.connection_context():
        token = tokens.issue(config, "dr-a")
    server = HttpServer(config.http, build_application(config.http, {}, dicomweb=dicomweb_routes(config, spool)))
    server.start()
    base = f"http://127.0.0.1:{server.port}/dicomweb"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    try:
        run(session, base, study_uid, args.repeat)
    finally:
        server.stop()


def run(session: requests.Session, base: str, study_uid: str, repeat: int) -> None:
    def search() -> list:
        answer = session.get(f"{base}/studies/{study_uid}/instances", timeout=300)
        assert answer.status_code == 200, answer.status_code
        return answer.json()

    print(f"QIDO instances, first (headers read)   {seconds(search) * 1000:8.1f} ms")
    warm = statistics.median(seconds(search) for _ in range(repeat))
    print(f"QIDO instances, warm (median)          {warm * 1000:8.1f} ms")
    instances = search()
    size = [0]

    def retrieve() -> None:
        answer = session.get(f"{base}/studies/{study_uid}", timeout=600,
                             headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert answer.status_code == 200, answer.status_code
        size[0] = len(answer.content)

    whole = statistics.median(seconds(retrieve) for _ in range(repeat))
    print(f"WADO-RS study ({len(instances)} objects, {size[0] / 1e6:.0f} MB)  {whole:8.2f} s   "
          f"{size[0] / 1e6 / whole:6.1f} MB/s   {len(instances) / whole:6.1f} objects/s")

    def frames() -> None:
        for item in instances:
            series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
            answer = session.get(f"{base}/studies/{study_uid}/series/{series}/instances/{sop}/frames/1", timeout=60)
            assert answer.status_code == 200, answer.status_code

    scroll = seconds(frames)
    print(f"WADO-RS frames, one image at a time    {scroll:8.2f} s   {len(instances) / scroll:6.1f} frames/s")

    def rendered() -> None:
        item = instances[len(instances) // 2]
        series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
        answer = session.get(f"{base}/studies/{study_uid}/series/{series}/instances/{sop}/rendered", timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"

    one = statistics.median(seconds(rendered) for _ in range(repeat * 4))
    print(f"WADO-RS rendered JPEG (median)         {one * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
