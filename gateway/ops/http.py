"""The gateway's one small HTTP server: ``/healthz``, ``/metrics`` and a route table for the API.

It runs the standard library's :class:`~http.server.ThreadingHTTPServer` in a daemon thread. Other modules
register their endpoints with :meth:`HttpServer.add_route` (the referral endpoint ``POST /referrals`` does);
routes are authenticated by default with a bearer token read from the environment variable that
``http.token_env`` names, compared in constant time. With no token configured, authenticated routes answer
503, so an API is never left open by omission.
"""

from __future__ import annotations

import hmac
import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import peewee
import structlog

from gateway.config import HttpConfig
from gateway.ops.serving import serve_in_thread, stop_serving
from gateway.errors import GatewayError
from gateway.ops.metrics import CONTENT_TYPE, METRICS, GatewayMetrics

log = structlog.get_logger("http")
MAX_BODY_BYTES = 10 * 1024 * 1024
REQUEST_TIMEOUT_S = 30.0
TOKEN_NOT_CONFIGURED = "API token not configured"


class HealthCheckFailed(GatewayError):
    """A health check's finding; its message is shown in ``/healthz`` (it must carry no PHI)."""


class RouteError(GatewayError):
    """A route cannot be registered (bad method or path, or already registered)."""


HealthCheck = Callable[[], None]
"""A health check returns None when healthy and raises (preferably :class:`HealthCheckFailed`) otherwise."""


@dataclass(frozen=True)
class Request:
    """What a route handler receives."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # case-insensitive get()
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: the body is not JSON.
        """
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class Response:
    """What a route handler returns."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(int(status), json.dumps(payload, sort_keys=True).encode() + b"\n", headers=headers or {})


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class _Route:
    handler: Handler
    auth: bool


def database_check(database: peewee.Database | peewee.DatabaseProxy) -> HealthCheck:
    """Healthy when the database answers ``SELECT 1``."""

    def check() -> None:
        try:
            with database.connection_context():
                database.execute_sql("SELECT 1")
        except (peewee.PeeweeException, peewee.DatabaseError, AttributeError, OSError) as exc:
            raise HealthCheckFailed(f"database did not answer ({type(exc).__name__})") from None

    return check


def scp_check(is_accepting: Callable[[], bool]) -> HealthCheck:
    """Healthy when the DICOM SCP reports that it accepts associations."""

    def check() -> None:
        if not is_accepting():
            raise HealthCheckFailed("DICOM SCP is not accepting associations")

    return check


def spool_space_check(spool_dir: Path, min_free_bytes: int) -> HealthCheck:
    """Healthy when the spool's file system has more than ``storage.min_free_bytes`` free."""

    def check() -> None:
        try:
            free = shutil.disk_usage(spool_dir).free
        except OSError as exc:
            raise HealthCheckFailed(f"spool directory unreadable ({type(exc).__name__})") from None
        if free < min_free_bytes:
            raise HealthCheckFailed(f"spool free space {free} bytes is below storage.min_free_bytes "
                                    f"({min_free_bytes})")

    return check


def standard_health_checks(database: peewee.Database | peewee.DatabaseProxy, is_accepting: Callable[[], bool],
                           spool_dir: Path, min_free_bytes: int) -> dict[str, HealthCheck]:
    """The three checks ``/healthz`` runs in a gateway: ``database``, ``scp``, ``spool``."""
    return {"database": database_check(database), "scp": scp_check(is_accepting),
            "spool": spool_space_check(spool_dir, min_free_bytes)}


class HttpServer:
    """Health, metrics and API routes over HTTP. ``start()`` returns once the socket is bound.

    Args:
        config: where to listen, and which environment variable holds the API token.
        health_checks: name → check, run in order for every ``GET /healthz``.
        metrics: whose registry ``GET /metrics`` renders (default: the process's :data:`METRICS`).
        environ: where the token is read, at each request (default: ``os.environ``).
    """

    def __init__(self, config: HttpConfig, health_checks: Mapping[str, HealthCheck], *,
                 metrics: GatewayMetrics | None = None, environ: Mapping[str, str] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        if not isinstance(config, HttpConfig):
            raise TypeError("config must be an HttpConfig")
        self.config = config
        self.health_checks = dict(health_checks)
        self.metrics = metrics or METRICS
        self.environ = os.environ if environ is None else environ
        self.max_body_bytes = max_body_bytes
        self._routes: dict[tuple[str, str], _Route] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_route("GET", "/healthz", self._healthz, auth=False)
        self.add_route("GET", "/metrics", self._metrics, auth=False)

    @property
    def port(self) -> int:
        """The bound port (the real one when ``config.port`` is 0).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._server is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._server.server_address[1])

    def add_route(self, method: str, path: str, handler: Handler, auth: bool = True) -> None:
        """Serve ``method path`` with ``handler``; with ``auth``, only for a request bearing the API token.

        Raises:
            RouteError: the method is not an HTTP token, the path does not start with ``/``, or the route exists.
        """
        method = method.upper()
        if not method.isalpha() or not path.startswith("/"):
            raise RouteError(f"invalid route {method} {path}")
        if (method, path) in self._routes:
            raise RouteError(f"route {method} {path} is already registered")
        self._routes[(method, path)] = _Route(handler, auth)

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises:
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            return
        server = ThreadingHTTPServer((self.config.host, self.config.port), _make_request_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = serve_in_thread(server, "http-server")
        log.info("http_started", port=self.port, component="http")

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        stop_serving(self._server, self._thread)
        self._server = None
        self._thread = None

    # --- dispatch (called from the request handler's thread) ---

    def dispatch(self, request: Request) -> Response:
        route = self._routes.get((request.method, request.path))
        if route is None:
            allowed = sorted(m for m, p in self._routes if p == request.path)
            if allowed:
                return Response.json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"},
                                     {"Allow": ", ".join(allowed)})
            return Response.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        if route.auth:
            refusal = self._authenticate(request)
            if refusal is not None:
                return refusal
        try:
            return route.handler(request)
        except Exception as exc:  # noqa: BLE001 - one broken handler must not take the server down
            log.error("http_handler_failed", path=request.path, error=type(exc).__name__, component="http")
            return Response.json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def _authenticate(self, request: Request) -> Response | None:
        expected = self.environ.get(self.config.token_env, "")
        if not expected:
            return Response.json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": TOKEN_NOT_CONFIGURED})
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return Response.json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"},
                                 {"WWW-Authenticate": 'Bearer realm="spine-gateway"'})
        return None

    def _healthz(self, _request: Request) -> Response:
        checks: dict[str, dict[str, Any]] = {}
        for name, check in self.health_checks.items():
            try:
                check()
                checks[name] = {"ok": True}
            except HealthCheckFailed as failure:
                checks[name] = {"ok": False, "detail": str(failure)}
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is still an unhealthy check
                checks[name] = {"ok": False, "detail": type(exc).__name__}
        failed = sorted(name for name, result in checks.items() if not result["ok"])
        if failed:
            return Response.json(HTTPStatus.SERVICE_UNAVAILABLE,
                                 {"status": "unhealthy", "failed": failed, "checks": checks})
        return Response.json(HTTPStatus.OK, {"status": "ok", "checks": checks})

    def _metrics(self, _request: Request) -> Response:
        return Response(HTTPStatus.OK, self.metrics.render(), content_type=CONTENT_TYPE)


def _make_request_handler(app: HttpServer) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "spine-gateway"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT_S

        def _handle(self) -> None:
            url = urlsplit(self.path)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > app.max_body_bytes:
                self.close_connection = True
                self._send(Response.json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0 else
                                         HTTPStatus.BAD_REQUEST, {"error": "bad or too large body"}))
                return
            body = self.rfile.read(length) if length else b""
            # the headers object itself: its get() is case-insensitive, as HTTP header names are
            request = Request(self.command, url.path, parse_qs(url.query), self.headers, body)
            self._send(app.dispatch(request))

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            """Silenced: request lines would flood the log with /healthz probes."""

    return RequestHandler
