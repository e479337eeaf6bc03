"""The HTTP server over real sockets: /healthz, /metrics and bearer-token routes."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.http import (
    HealthCheckFailed,
    HttpConfig,
    HttpServer,
    Request,
    Response,
    RouteError,
    database_check,
    standard_health_checks,
)
from gateway.ops.metrics import GatewayMetrics
from gateway.storage.models import Study, db, make_database, open_database

TOKEN_ENV = "TEST_GATEWAY_TOKEN"
CONFIG = HttpConfig(port=0, token_env=TOKEN_ENV, health_cache_s=0)  # each /healthz runs its checks again


@pytest.fixture
def database(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    yield database
    database.close_all()


@pytest.fixture
def serve():
    servers: list[HttpServer] = []

    def start(server: HttpServer) -> HttpServer:
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _get(server: HttpServer, path: str, method: str = "GET", headers: dict | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


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
    server = serve(HttpServer(CONFIG, checks, metrics=GatewayMetrics(database)))
    code, headers, body = _get(server, "/healthz")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "checks": {"database": {"ok": True}, "scp": {"ok": True},
                                                           "spool": {"ok": True}}}


def test_healthz_503_when_the_database_is_unreachable(tmp_path, serve):
    unreachable = make_database(f"postgresql://gw:secret@127.0.0.1:{_closed_port()}/gateway")
    checks = standard_health_checks(unreachable, lambda: True, tmp_path, min_free_bytes=1)
    server = serve(HttpServer(CONFIG, checks, metrics=GatewayMetrics(unreachable)))
    code, _, body = _get(server, "/healthz")
    assert code == 503
    report = json.loads(body)
    assert report["status"] == "unhealthy" and report["failed"] == ["database"]
    assert report["checks"]["database"] == {"ok": False, "detail": "database did not answer (OperationalError)"}
    assert "secret" not in body.decode()


def test_healthz_503_names_the_scp_and_spool_checks(database, tmp_path, serve):
    accepting = {"value": False}
    checks = standard_health_checks(database, lambda: accepting["value"], tmp_path, min_free_bytes=10**18)
    server = serve(HttpServer(CONFIG, checks, metrics=GatewayMetrics(database)))
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
    server = serve(HttpServer(CONFIG, {}, metrics=metrics))
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
    server = serve(HttpServer(CONFIG, {}, metrics=GatewayMetrics(unreachable)))
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


def _echo(request: Request) -> Response:
    return Response.json(200, {"method": request.method, "body": request.json()})


def test_bearer_token_routes(serve):
    server = HttpServer(CONFIG, {}, metrics=GatewayMetrics(), environ={TOKEN_ENV: "s3cret-token"})
    server.add_route("POST", "/echo", _echo)
    serve(server)
    body = b'{"a": 1}'
    assert _get(server, "/echo", "POST", body=body)[0] == 401
    assert _get(server, "/echo", "POST", {"Authorization": "Bearer wrong"}, body)[0] == 401
    assert _get(server, "/echo", "POST", {"Authorization": "Basic s3cret-token"}, body)[0] == 401
    code, headers, _ = _get(server, "/echo", "POST", {"Authorization": "Bearer s3cret-token-and-more"}, body)
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    code, _, answer = _get(server, "/echo", "POST", {"authorization": "Bearer s3cret-token"}, body)
    assert code == 200 and json.loads(answer) == {"method": "POST", "body": {"a": 1}}
    assert _get(server, "/metrics")[0] == 200  # unauthenticated route needs no token


def test_authenticated_routes_503_without_a_configured_token(serve):
    server = HttpServer(CONFIG, {}, metrics=GatewayMetrics(), environ={})
    server.add_route("POST", "/echo", _echo)
    serve(server)
    code, _, body = _get(server, "/echo", "POST", {"Authorization": "Bearer "}, b"{}")
    assert code == 503 and json.loads(body) == {"error": "API token not configured"}


def test_unknown_path_wrong_method_and_failing_handler(serve):
    def broken(_request: Request) -> Response:
        raise RuntimeError("boom")

    server = HttpServer(CONFIG, {}, metrics=GatewayMetrics())
    server.add_route("GET", "/broken", broken, auth=False)
    serve(server)
    assert _get(server, "/nowhere")[0] == 404
    code, headers, _ = _get(server, "/healthz", "POST", body=b"")
    assert code == 405 and headers["Allow"] == "GET"
    code, _, body = _get(server, "/broken")
    assert code == 500 and b"boom" not in body


def test_routes_cannot_be_registered_twice_or_malformed():
    server = HttpServer(CONFIG, {}, metrics=GatewayMetrics())
    with pytest.raises(RouteError, match="already registered"):
        server.add_route("GET", "/healthz", _echo)
    with pytest.raises(RouteError, match="invalid route"):
        server.add_route("GET", "referrals", _echo)


def test_port_before_start_and_stop_is_idempotent():
    server = HttpServer(CONFIG, {}, metrics=GatewayMetrics())
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    server.start()
    assert server.port > 0
    server.stop()
    server.stop()


def test_a_body_over_the_limit_is_refused_before_the_handler_runs(serve):
    calls = []

    def record(request: Request) -> Response:
        calls.append(request.body)
        return Response.json(200, {})

    server = HttpServer(CONFIG, {}, metrics=GatewayMetrics(), max_body_bytes=10)
    server.add_route("POST", "/small", record, auth=False)
    serve(server)
    assert _get(server, "/small", "POST", body=b"x" * 11)[0] == 413
    assert _get(server, "/small", "POST", body=b"x" * 10)[0] == 200
    assert calls == [b"x" * 10]
