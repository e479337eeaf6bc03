"""Portal benchmark (not a test): page and form latencies of the web portal, in process, over real HTTP.

Starts the node's HTTP server with the portal on a fresh SQLite database (no DICOM, no pipeline), creates a
referrer, then times: a sign-in (argon2id verification included), the case list with N referrals of the
source, and the referral form posted (validation + intake in one transaction). Prints the median and the 95th
percentile of each.

    python bench/portal.py [--referrals 500] [--repeat 50]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gateway.accounts.users import add_user
from gateway.config import GatewayConfig
from gateway.http.app import build_application
from gateway.http.server import HttpServer
from gateway.stages.context import NodeContext
from gateway.storage.models import db, open_database, sync_sources
from gateway.storage.spool import Spool
from gateway.web.app import error_page, portal_routes

PASSWORD = "a long bench password"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - the base class's signature
        return None


OPENER = urllib.request.build_opener(_NoRedirect)


def call(url: str, data: dict | None = None, cookie: str = "") -> tuple[int, dict, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Cookie": cookie} if cookie else {})
    try:
        with OPENER.open(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def timed(action, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(f"{name:40} median {statistics.median(times):7.1f} ms   p95 {p95:7.1f} ms   (n={len(times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    config = GatewayConfig.model_validate({
        "storage": {"database": f"sqlite:///{work}/gw.db", "spool_dir": str(work / "spool")},
        "http": {"port": 0, "login_attempts_per_minute": 1000},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}]})
    open_database(config.storage.database, max_connections=16)
    with db.connection_context():
        sync_sources([("st-marys", "HOSP_PACS")])
        add_user(config, "desk", "referrer", PASSWORD, source="st-marys")
    context = NodeContext.of_process()
    portal = portal_routes(config, Spool(config.storage.spool_dir), context)
    server = HttpServer(config.http, build_application(config.http, {}, context=context, portal=portal,
                                                       portal_error_page=error_page))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        _, headers, page = call(base + "/login")
        anonymous = headers["set-cookie"].split(";")[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        sign_in = {"name": "desk", "password": PASSWORD, "csrf_token": token}
        sessions: list[str] = []

        def login() -> None:
            status, headers, _ = call(base + "/login", sign_in, anonymous)
            assert status == 303, status
            sessions.append(headers["set-cookie"].split(";")[0])

        report("sign-in (argon2id verify)", timed(login, min(args.repeat, 20)))
        cookie = sessions[-1]
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', call(base + "/referrer/new", cookie=cookie)[2]).group(1)
        counter = iter(range(10**9))

        def submit() -> None:
            n = next(counter)
            status, _, _ = call(base + "/referrer/new", {
                "csrf_token": csrf, "patient.family": "Bench", "patient.given": "Pat", "patient.id": f"P{n}",
                "accession_number": f"ACC{n}", "clinical.history": "Low back pain for 10 weeks.",
                "clinical.pain.intensity": "6", "clinical.red_flags": "no_improvement_6_weeks"}, cookie)
            assert status == 303, status

        for _ in range(max(0, args.referrals - args.repeat)):
            submit()
        report("referral form posted (stored)", timed(submit, args.repeat))

        def cases() -> None:
            assert call(base + "/referrer", cookie=cookie)[0] == 200

        report(f"case list ({args.referrals} referrals)", timed(cases, args.repeat))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
