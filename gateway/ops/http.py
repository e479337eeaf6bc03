"""The gateway's one HTTP server: ``/healthz``, ``/metrics``, a route table for the API, and the web portal.

An ASGI application (Starlette) served by uvicorn in a daemon thread. Other modules register their API
endpoints with :meth:`HttpServer.add_route` (the referral endpoint ``POST /referrals`` does); routes are
authenticated by default with a bearer token read from the environment variable that ``http.token_env``
names, compared in constant time. With no token configured, authenticated routes answer 503, so an API is
never left open by omission. Every other path goes to the application given to :meth:`HttpServer.mount`
(the portal, :mod:`gateway.web`), or answers 404.
"""

from __future__ import annotations

import hmac
import json
import os
import shutil
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import peewee
import structlog
import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import HttpConfig
from gateway.errors import GatewayError
from gateway.ops.metrics import CONTENT_TYPE, METRICS, GatewayMetrics

log = structlog.get_logger("http")
MAX_BODY_BYTES = 10 * 1024 * 1024
REQUEST_TIMEOUT_S = 30
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
    """Health, metrics, API routes and a mounted application over HTTP. ``start()`` returns once serving.

    Args:
        config: where to listen, and which environment variable holds the API token.
        health_checks: name → check, run in order for every ``GET /healthz``.
        metrics: whose registry ``GET /metrics`` renders (default: the process's :data:`METRICS`).
        environ: where the token is read, at each request (default: ``os.environ``).
        max_body_bytes: a larger request body is refused with 413 before any handler runs.
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
        self._mounted: ASGIApp | None = None
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.add_route("GET", "/healthz", self._healthz, auth=False)
        self.add_route("GET", "/metrics", self._metrics, auth=False)

    @property
    def port(self) -> int:
        """The bound port (the real one when ``config.port`` is 0).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._socket is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._socket.getsockname()[1])

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

    def mount(self, app: ASGIApp) -> None:
        """Serve every path that is not a registered route with ``app`` (the portal)."""
        self._mounted = app

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: the server did not start serving.
        """
        if self._server is not None:
            return
        self._socket = _listening_socket(self.config.host, self.config.port)
        server = uvicorn.Server(uvicorn.Config(
            self, log_config=None, access_log=False, lifespan="off", server_header=False, date_header=True,
            timeout_keep_alive=REQUEST_TIMEOUT_S, proxy_headers=False, limit_concurrency=256))
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._socket]}, name="http-server",
                                        daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(200):
            if server.started or not self._thread.is_alive():
                break
            deadline.wait(0.05)
        if not server.started:
            self.stop()
            raise RuntimeError("the HTTP server did not start")
        log.info("http_started", port=self.port, component="http")

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._socket = None
        self._thread = None

    # --- ASGI ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if self._mounted is not None and not any(p == path for _, p in self._routes):
            await self._mounted(scope, receive, send)
            return
        request = StarletteRequest(scope, receive)
        body = await _read_body(request, self.max_body_bytes)
        if isinstance(body, Response):
            answer = body
        else:
            answer = await run_in_threadpool(self.dispatch, Request(
                request.method, path, _query(request), request.headers, body))
        await _send(answer, send, head_only=request.method == "HEAD")

    # --- dispatch (called in a worker thread) ---

    def dispatch(self, request: Request) -> Response:
        route = self._routes.get((request.method, request.path))
        if route is None and request.method == "HEAD":
            route = self._routes.get(("GET", request.path))
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


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _query(request: StarletteRequest) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        query.setdefault(name, []).append(value)
    return query


async def _read_body(request: StarletteRequest, limit: int) -> bytes | Response:
    """The body, or the refusal: 413 over ``limit`` (by Content-Length before reading, or while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return Response.json(HTTPStatus.BAD_REQUEST, {"error": "bad or too large body"})
        if int(declared) > limit:
            return Response.json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "bad or too large body"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return Response.json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "bad or too large body"})
        chunks.append(chunk)
    return b"".join(chunks)


async def _send(response: Response, send: Send, *, head_only: bool) -> None:
    """Send ``response`` with its header names in their usual capitalisation (API clients may match them so)."""
    headers = {"Content-Type": response.content_type, "Content-Length": str(len(response.body)),
               "Cache-Control": "no-store", **response.headers}
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]})
    await send({"type": "http.response.body", "body": b"" if head_only else response.body})
