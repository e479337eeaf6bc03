"""The node's HTTP application over real sockets: /healthz, /metrics, the referral API with its bearer token
(refused before the body is read), 404 and 405, the body limit, and the portal's routes beside the API."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from structlog.testing import capture_logs

from gateway.config import GatewayConfig, HttpConfig
from gateway.http.app import build_application
from gateway.http.server import HttpServer
from gateway.ops.health import HealthCheckFailed, database_check, standard_health_checks
from gateway.ops.metrics import GatewayMetrics
from gateway.stages.context import NodeContext
from gateway.storage.cases import LeaseOwner
from gateway.storage.models import Referral, Study, db, make_database, open_database, sync_sources
from gateway.storage.spool import Spool
from gateway.web.app import error_page, portal_routes

TOKEN_ENV = "TEST_GATEWAY_TOKEN"
TOKEN = "s3cret-token"
CONFIG = HttpConfig(port=0, token_env=TOKEN_ENV, health_cache_s=0)  # each /healthz runs its checks again
def _context(metrics: GatewayMetrics | None = None) -> NodeContext:
    """What the node hands the application: the database (the models' proxy here) and metrics of the test's own."""
    return NodeContext(db, LeaseOwner("test"), None, metrics or GatewayMetrics())


REFERRAL = {"source": "st-marys", "accession_number": "ACC-1", "patient": {"id": "P-1", "name": "DOE^JANE"}}


@pytest.fixture
def database(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    with db.connection_context():
        sync_sources([("st-marys", "HOSP_PACS")])
    yield database
    database.close_all()


@pytest.fixture
def serve():
    """Serve an application (default: no checks, this test's metrics, the token set) until the test ends;
    ``metrics=``: the metrics of its context."""
    servers: list[HttpServer] = []

    def start(app=None, config: HttpConfig = CONFIG, **options) -> HttpServer:
        options["context"] = _context(options.pop("metrics", None))
        options.setdefault("environ", {TOKEN_ENV: TOKEN})
        server = HttpServer(config, app or build_application(config, options.pop("checks", {}), **options))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _get(server: HttpServer, path: str, method: str = "GET", headers: dict | None = None,
         body: bytes | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_config_refuses_unknown_keys():
    with pytest.raises(ValueError, match="extra"):
        HttpConfig.model_validate({"host": "127.0.0.1", "prot": 80})
    assert HttpConfig() == HttpConfig(host="127.0.0.1", port=8080, token_env="SPINE_GATEWAY_API_TOKEN")


def test_healthz_ok_with_a_working_database(database, tmp_path, serve):
    checks = standard_health_checks(database, lambda: True, tmp_path, min_free_bytes=1)
    server = serve(checks=checks, metrics=GatewayMetrics(database))
    code, headers, body = _get(server, "/healthz")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "checks": {"database": {"ok": True}, "scp": {"ok": True},
                                                           "spool": {"ok": True}}}


def test_healthz_503_when_the_database_is_unreachable(tmp_path, serve):
    unreachable = make_database(f"postgresql://gw:secret@127.0.0.1:{_closed_port()}/gateway")
    checks = standard_health_checks(unreachable, lambda: True, tmp_path, min_free_bytes=1)
    server = serve(checks=checks, metrics=GatewayMetrics(unreachable))
    code, _, body = _get(server, "/healthz")
    assert code == 503
    report = json.loads(body)
    assert report["status"] == "unhealthy" and report["failed"] == ["database"]
    assert report["checks"]["database"] == {"ok": False, "detail": "database did not answer (OperationalError)"}
    assert "secret" not in body.decode()


def test_healthz_503_names_the_scp_and_spool_checks(database, tmp_path, serve):
    accepting = {"value": False}
    checks = standard_health_checks(database, lambda: accepting["value"], tmp_path, min_free_bytes=10**18)
    server = serve(checks=checks, metrics=GatewayMetrics(database))
    code, _, body = _get(server, "/healthz")
    assert code == 503
    report = json.loads(body)
    assert report["failed"] == ["scp", "spool"]
    assert "storage.min_free_bytes" in report["checks"]["spool"]["detail"]
    accepting["value"] = True
    assert json.loads(_get(server, "/healthz")[2])["failed"] == ["spool"]


def test_database_check_fails_when_the_database_file_is_gone(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/sub/gw.db")
    database.close_all()
    (tmp_path / "sub" / "gw.db").unlink()
    (tmp_path / "sub").rmdir()  # sqlite cannot create the file again: its directory is gone
    with pytest.raises(HealthCheckFailed, match="database did not answer"):
        database_check(database)()


def test_metrics_text_parses_and_matches_what_was_recorded(database, serve):
    with db.connection_context():
        for i, state in enumerate(["receiving", "receiving", "report_delivered"]):
            Study.create(study_uid=f"2.25.{i + 1}", calling_ae="NORTH", state=state)
    metrics = GatewayMetrics(database)
    metrics.record_instance("stored", 1000, 0.02)
    metrics.record_instance("stored", 500, 0.03)
    metrics.record_instance("duplicate", 500, 0.01)
    metrics.record_instance("refused", 200, 0.001)
    metrics.record_association("accepted")
    metrics.record_association("rejected")
    metrics.record_delivery("delivered", 12.0)
    metrics.record_delivery("failed", 3.0, retry=True)
    metrics.observe_deidentification(1.5)
    server = serve(metrics=metrics)
    code, headers, body = _get(server, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(f"spine_gateway_{name}", tuple(sorted(labels.items())))]

    assert value("instances_received_total", result="stored") == 2
    assert value("instances_received_total", result="duplicate") == 1
    assert value("instances_received_total", result="refused") == 1
    assert value("instances_received_total", result="failed") == 0
    assert value("received_bytes_total") == 2200
    assert value("associations_total", result="accepted") == 1
    assert value("associations_total", result="rejected") == 1
    assert value("associations_total", result="aborted") == 0
    assert value("deliveries_total", result="delivered") == 1
    assert value("delivery_retries_total") == 1
    assert value("store_seconds_count") == 3
    assert value("store_seconds_sum") == pytest.approx(0.06)
    assert value("deidentification_seconds_count") == 1
    assert value("delivery_seconds_count") == 1
    assert value("cases", state="receiving") == 2
    assert value("cases", state="report_delivered") == 1
    assert value("database_up") == 1


def test_metrics_still_scrape_when_the_database_is_down(serve):
    unreachable = make_database(f"postgresql://gw@127.0.0.1:{_closed_port()}/gateway")
    server = serve(metrics=GatewayMetrics(unreachable))
    code, _, body = _get(server, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert code == 200
    assert families["spine_gateway_database_up"].samples[0].value == 0
    assert "spine_gateway_cases" not in families


def test_metrics_refuse_unknown_results():
    metrics = GatewayMetrics()
    with pytest.raises(ValueError, match="instance result must be one of"):
        metrics.record_instance("lost", 1, 0.1)
    with pytest.raises(ValueError, match="association result must be one of"):
        metrics.record_association("maybe")




def _post_referral(server: HttpServer, body: bytes, token: str | None = TOKEN, scheme: str = "Bearer"):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    return _get(server, "/referrals", "POST", headers, body)


def _stored_referrals() -> int:
    with db.connection_context():
        return Referral.select().count()


def test_a_referral_with_the_token_is_stored(database, serve):
    server = serve()
    code, headers, body = _post_referral(server, json.dumps(REFERRAL).encode())
    assert code == 201, body
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    assert json.loads(body)["id"] > 0 and _stored_referrals() == 1
    code, _, body = _post_referral(server, json.dumps({**REFERRAL, "source": "nowhere"}).encode())
    assert code == 422 and json.loads(body)["problems"] and _stored_referrals() == 1


def test_bearer_token_is_checked_in_constant_time_and_by_scheme(database, serve):
    server = serve()
    document = json.dumps(REFERRAL).encode()
    assert _post_referral(server, document, token=None)[0] == 401
    assert _post_referral(server, document, token="wrong")[0] == 401
    assert _post_referral(server, document, scheme="Basic")[0] == 401
    code, headers, _ = _post_referral(server, document, token=TOKEN + "-and-more")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert _stored_referrals() == 0
    assert _post_referral(server, document, scheme="bearer")[0] == 201  # the scheme's case does not matter
    assert _get(server, "/metrics")[0] == 200 and _get(server, "/referrals/schema")[0] == 200  # open routes


def test_authenticated_routes_503_without_a_configured_token(serve):
    server = serve(environ={})
    code, _, body = _post_referral(server, b"{}", token="")
    assert code == 503 and json.loads(body) == {"error": "API token not configured"}


def _head_only(port: int, head: str) -> tuple[str, float]:
    """Send a request head announcing a 5 MB body and none of it: what the node answers, and how fast."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)  # socket.timeout (a test failure) if the node waits for the body
            if not chunk:
                break
            answer += chunk
    return answer.decode("latin-1"), time.monotonic() - started


@pytest.mark.parametrize("environ, authorization, status", [
    ({TOKEN_ENV: TOKEN}, "", "401"),
    ({TOKEN_ENV: TOKEN}, "Authorization: Bearer wrong\r\n", "401"),
    ({}, f"Authorization: Bearer {TOKEN}\r\n", "503"),
])
def test_an_authenticated_route_refuses_without_reading_the_body(serve, environ, authorization, status):
    """The refusal comes from the headers alone, at once, with ``Connection: close``: the node waits for none
    of the announced body (its body deadline is 30 s; the client gives up after 5)."""
    server = serve(environ=environ)
    answer, seconds = _head_only(server.port, f"POST /referrals HTTP/1.1\r\nHost: x\r\n{authorization}")
    assert answer.startswith(f"HTTP/1.1 {status}"), answer
    assert "connection: close" in answer.lower() and seconds < 5


def _allowed(headers: Message) -> set[str]:
    return set(headers["Allow"].split(", "))  # Starlette lists a route's methods in no fixed order


def test_wrong_paths_and_methods_are_refused_before_the_body(serve):
    server = serve()
    for head, status in (("POST /nowhere HTTP/1.1\r\nHost: x\r\n", "404"),
                         ("POST /healthz HTTP/1.1\r\nHost: x\r\n", "405")):
        answer, _ = _head_only(server.port, head)
        assert answer.startswith(f"HTTP/1.1 {status}") and "connection: close" in answer.lower(), answer
    code, _, body = _get(server, "/nowhere")
    assert code == 404 and json.loads(body) == {"error": "not found"}
    code, headers, body = _get(server, "/healthz", "POST", body=b"")
    assert code == 405 and _allowed(headers) == {"GET", "HEAD"} and json.loads(body) == {"error": "method not allowed"}
    code, headers, _ = _get(server, "/referrals")
    assert code == 405 and headers["Allow"] == "POST"


def test_a_body_over_the_limit_is_refused_and_nothing_stored(database, serve):
    server = serve(max_body_bytes=10)
    code, headers, body = _post_referral(server, b"x" * 11)
    assert code == 413 and json.loads(body) == {"error": "bad or too large body"}
    assert _post_referral(server, b'{"a": 1}')[0] == 422  # within the limit: read and validated
    assert _stored_referrals() == 0


def test_a_failing_endpoint_answers_500_naming_no_detail(tmp_path, serve):
    """The database's directory is gone: storing the referral raises; the answer is a bare 500 and the log
    names the exception's type only (its message could quote the request)."""
    database = open_database(f"sqlite:///{tmp_path}/sub/gw.db")
    database.close_all()
    (tmp_path / "sub" / "gw.db").unlink()
    (tmp_path / "sub").rmdir()
    server = serve()
    with capture_logs() as logs:
        code, _, body = _post_referral(server, json.dumps(REFERRAL).encode())
    assert code == 500 and json.loads(body) == {"error": "internal error"}
    failed = [event for event in logs if event["event"] == "http_handler_failed"]
    assert failed and failed[0]["error"] == "OperationalError" and failed[0]["reason"] == "/referrals"


def test_a_failing_endpoint_logs_its_route_never_the_path_a_user_typed():
    """A user can type an original UID or a name into a URL: the failure's line names the route's template."""
    import asyncio

    import httpx
    from starlette.applications import Starlette

    from gateway.http.api import logged_failures

    original_uid, name = "1.2.826.0.1.3680043.2.1125.424242", "Smithers-Jane"

    async def failing(request):
        raise RuntimeError(f"nothing for {request.path_params['patient']}")

    route = "/referrals/{patient}/{study}"
    app = Starlette(routes=[Route(route, logged_failures(failing, route))])

    async def get() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return (await client.get(f"/referrals/{name}/{original_uid}", params={"name": name})).status_code

    with capture_logs() as logs:
        assert asyncio.run(get()) == 500
    assert logs == [{"event": "http_handler_failed", "log_level": "error", "reason": route, "error": "RuntimeError",
                     "component": "http"}]
    assert original_uid not in repr(logs) and name not in repr(logs)


def test_port_before_start_and_stop_is_idempotent():
    server = HttpServer(CONFIG, build_application(CONFIG, {}, context=_context()))
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    server.start()
    assert server.port > 0
    server.stop()
    server.stop()


def _portal(tmp_path: Path) -> list:
    config = GatewayConfig.model_validate({"storage": {"database": f"sqlite:///{tmp_path}/gw.db",
                                                       "spool_dir": str(tmp_path / "spool")},
                                           "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}]})
    return portal_routes(config, Spool(config.storage.spool_dir), _context())


def test_the_portal_shares_the_router_with_the_api(tmp_path, serve):
    """API paths answer JSON (405 included), every other unknown path the portal's page."""
    server = serve(portal=_portal(tmp_path), portal_error_page=error_page)
    code, headers, body = _get(server, "/nowhere")
    assert code == 404 and headers["Content-Type"].startswith("text/html") and b"Not found" in body
    assert _get(server, "/static/missing.css")[0] == 404
    code, headers, body = _get(server, "/healthz", "POST", body=b"")
    assert code == 405 and _allowed(headers) == {"GET", "HEAD"} and json.loads(body)["error"] == "method not allowed"
    code, headers, body = _get(server, "/login", "PUT", body=b"")
    assert code == 405 and headers["Content-Type"].startswith("text/html") and headers["Allow"]
    assert _get(server, "/metrics")[0] == 200


def test_a_portal_route_cannot_take_an_api_path(tmp_path):
    async def elsewhere(_request):
        raise AssertionError("never served")

    with pytest.raises(ValueError, match="/healthz"):
        build_application(CONFIG, {}, context=_context(), portal=[*_portal(tmp_path), Route("/healthz", elsewhere)])


def test_accepted_connections_have_tcp_nodelay(monkeypatch):
    """Without TCP_NODELAY a small answer (written as head, then body) waited for the client's delayed ACK: about
    40 ms more for every DICOMweb metadata answer or rendered image (bench/dicomweb.py)."""
    from gateway.http import limits as http_limits

    seen: list[int] = []
    original = http_limits._no_delay

    def recording(transport):
        original(transport)
        seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(http_limits, "_no_delay", recording)
    config = HttpConfig(port=0)
    server = HttpServer(config, build_application(config, {}, context=_context()))
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/referrals/schema", timeout=30) as answer:
            assert answer.status == 200
    finally:
        server.stop()
    assert seen and all(seen), seen
