"""Viewer benchmark (not a test): from opening a case in the portal to its first image drawn, in Chromium.

Starts the node's HTTP server with the portal and DICOMweb on a fresh SQLite database (no DICOM, no pipeline), puts
a synthetic study (``--instances`` MR images of ``--size`` pixels square, over three series) in the spool as a case
delivered to dr-a (as bench/dicomweb.py does), signs dr-a in in headless Chromium (Debian's, through chromedriver),
then opens the case page ``--repeat`` times and reads what the viewer records from the page's navigation start:
the first image drawn (``data-first-image-ms``) and both panes drawn (``data-all-drawn-ms``). Each pane loads its
series in one WADO-RS request. Prints the median and the worst. Needs the vendored viewer (``make viewer``).

    scripts/in-private-net.sh .venv/bin/python bench/viewer.py [--instances 300] [--size 512] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "web")]

from browser import Browser  # noqa: E402 - tests/web/browser.py: Debian's chromium through chromedriver
from dicomweb import bench_case  # noqa: E402 - bench/dicomweb.py
from gateway.accounts.users import add_user  # noqa: E402
from gateway.dicomweb.routes import dicomweb_routes  # noqa: E402
from gateway.http.app import build_application  # noqa: E402
from gateway.http.server import HttpServer  # noqa: E402
from gateway.ops.metrics import GatewayMetrics  # noqa: E402
from gateway.stages.context import NodeContext  # noqa: E402
from gateway.storage.cases import LeaseOwner  # noqa: E402
from gateway.storage.models import Study, db  # noqa: E402
from gateway.web.app import error_page, portal_routes  # noqa: E402
from gateway.web.reviewer import VIEWER_INSTALLED  # noqa: E402

PASSWORD = "correct horse battery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not VIEWER_INSTALLED.exists():
        sys.exit("bench/viewer.py: the viewer is not installed (make viewer)")
    work = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    config, spool, _, study_uid = bench_case(work, args.instances, args.size)
    with db.connection_context():
        add_user(config, "dr-a", "reviewer", PASSWORD, reviewer="dr-a")
        key = Study.get(Study.pseudo_study_uid == study_uid).key
    context = NodeContext(db, LeaseOwner("bench"), None, GatewayMetrics())
    server = HttpServer(config.http, build_application(
        config.http, {}, context=context, portal=portal_routes(config, spool, context), portal_error_page=error_page,
        dicomweb=dicomweb_routes(config, spool, context)))
    server.start()
    browser = Browser(f"http://127.0.0.1:{server.port}", work / "shots")
    try:
        browser.login("dr-a", PASSWORD)
        first, both = [], []
        for _ in range(args.repeat):
            browser.open(f"/reviewer/cases/{key}")
            drawn = _wait_for(browser, "allDrawnMs", 300)
            first.append(float(browser.driver.execute_script(
                "return document.getElementById('viewer').dataset.firstImageMs")))
            both.append(drawn)
        browser.shot("viewer-bench")
    finally:
        browser.quit()
        server.stop()
    print(f"{args.instances} images of {args.size}x{args.size} in 3 series; {args.repeat} openings of the case page")
    for label, times in (("first image drawn", first), ("both panes drawn", both)):
        print(f"{label:18} median {statistics.median(times):7.0f} ms   worst {max(times):7.0f} ms")


def _wait_for(browser: Browser, name: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.driver.execute_script(f"return document.getElementById('viewer').dataset.{name}")
        if value:
            return float(value)
        time.sleep(0.05)
    raise SystemExit(f"bench/viewer.py: the viewer did not draw within {timeout:.0f} s")


if __name__ == "__main__":
    main()
