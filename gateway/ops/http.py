"""The gateway's one HTTP server: ``/healthz``, ``/metrics``, a route table for the API, and the web portal.

An ASGI application (Starlette) served by uvicorn in a daemon thread. Other modules register their API
endpoints with :meth:`HttpServer.add_route` (the referral endpoint ``POST /referrals`` does); routes are
authenticated by default with a bearer token read from the environment variable that ``http.token_env``
names, compared in constant time. With no token configured, authenticated routes answer 503, so an API is
never left open by omission. Every other path goes to the application given to :meth:`HttpServer.mount`
(the portal, :mod:`gateway.web`), or answers 404.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import peewee
import structlog
import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import HttpConfig
from gateway.errors import GatewayError
from gateway.ops.http_limits import ClientConnections, ConnectionLimits, guarded_protocol
from gateway.ops.metrics import CONTENT_TYPE, METRICS, GatewayMetrics

log = structlog.get_logger("http")
MAX_BODY_BYTES = 1024 * 1024
MAX_HEAD_BYTES = 16 * 1024  # request line and headers together (h11 answers 400 beyond)
REQUEST_TIMEOUT_S = 30
HEALTH_THREADS = 2  # /healthz and /metrics run here, never queued behind portal pages or sign-ins
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


PROBE_BYTES = 4096


class _Probe:
    """Runs a blocking write probe in a thread of its own and waits for it at most ``timeout_s``.

    A probe stuck on a hung disk is not started again while it is still running: the check fails at once, so
    that polling ``/healthz`` cannot pile up threads behind it.
    """

    def __init__(self, name: str, probe: Callable[[], None], timeout_s: float) -> None:
        self.name = name
        self.probe = probe
        self.timeout_s = timeout_s
        self._running: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._running is not None and self._running.is_alive():
                raise HealthCheckFailed(f"{self.name} write probe still running after {self.timeout_s:g} s")
            self._error = None
            thread = threading.Thread(target=self._run, name=f"health-{self.name}", daemon=True)
            self._running = thread
            thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            raise HealthCheckFailed(f"{self.name} write probe did not finish within {self.timeout_s:g} s")
        if self._error is not None:
            error = self._error
            if isinstance(error, HealthCheckFailed):
                raise error
            raise HealthCheckFailed(f"{self.name} cannot take a write ({type(error).__name__})")

    def _run(self) -> None:
        try:
            self.probe()
        except BaseException as exc:  # noqa: BLE001 - any failure of the probe is the finding
            self._error = exc


def database_check(database: peewee.Database | peewee.DatabaseProxy, probe_name: str | None = None,
                   timeout_s: float = 2.0) -> HealthCheck:
    """Healthy when the database answers ``SELECT 1`` and, with ``probe_name``, commits a write of the
    ``health_probe`` row of that name (a full disk or a read-only database fails it) within ``timeout_s``."""

    def select_one() -> None:
        try:
            with database.connection_context():
                database.execute_sql("SELECT 1")
        except (peewee.PeeweeException, peewee.DatabaseError, AttributeError, OSError) as exc:
            raise HealthCheckFailed(f"database did not answer ({type(exc).__name__})") from None

    if probe_name is None:
        return select_one
    return _Probe("database", lambda: write_database_probe(database, probe_name), timeout_s)


def write_database_probe(database: peewee.Database | peewee.DatabaseProxy, probe_name: str) -> None:
    """Commit a new ``written_at`` on the ``health_probe`` row ``probe_name`` (created when missing).

    Raises:
        peewee.DatabaseError (or a driver's error): the database refused or could not make the write durable.
    """
    from gateway.storage.models import HealthProbe, utcnow

    with database.connection_context(), database.atomic():
        HealthProbe.insert(name=probe_name[:128], written_at=utcnow()).on_conflict(
            conflict_target=[HealthProbe.name], update={HealthProbe.written_at: utcnow()}).execute()


def scp_check(is_accepting: Callable[[], bool]) -> HealthCheck:
    """Healthy when the DICOM SCP reports that it accepts associations."""

    def check() -> None:
        if not is_accepting():
            raise HealthCheckFailed("DICOM SCP is not accepting associations")

    return check


def spool_space_check(spool_dir: Path, min_free_bytes: int, timeout_s: float | None = None) -> HealthCheck:
    """Healthy when the spool's file system has more than ``storage.min_free_bytes`` free and, with
    ``timeout_s``, takes a small fsynced file within that time (a full, read-only or hung disk fails it)."""

    def free_space() -> None:
        try:
            free = shutil.disk_usage(spool_dir).free
        except OSError as exc:
            raise HealthCheckFailed(f"spool directory unreadable ({type(exc).__name__})") from None
        if free < min_free_bytes:
            raise HealthCheckFailed(f"spool free space {free} bytes is below storage.min_free_bytes "
                                    f"({min_free_bytes})")

    if timeout_s is None:
        return free_space

    def space_and_write() -> None:
        free_space()
        write_spool_probe(Path(spool_dir))

    return _Probe("spool", space_and_write, timeout_s)


def write_spool_probe(spool_dir: Path) -> None:
    """Write, fsync and remove a :data:`PROBE_BYTES` file in the spool directory.

    Raises:
        OSError: the spool cannot take the write (full, read-only, gone).
    """
    path = spool_dir / f".health-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, b"\0" * PROBE_BYTES)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def standard_health_checks(database: peewee.Database | peewee.DatabaseProxy, is_accepting: Callable[[], bool],
                           spool_dir: Path, min_free_bytes: int, *, probe_name: str | None = None,
                           probe_timeout_s: float | None = None) -> dict[str, HealthCheck]:
    """The three checks ``/healthz`` runs in a gateway: ``database``, ``scp``, ``spool``. With ``probe_name``
    and ``probe_timeout_s``, the database and the spool must each take a write within that time."""
    timeout = probe_timeout_s if probe_name is not None else None
    return {"database": database_check(database, probe_name, timeout or 2.0) if timeout else database_check(database),
            "scp": scp_check(is_accepting),
            "spool": spool_space_check(spool_dir, min_free_bytes, timeout)}


def run_health_checks(checks: Mapping[str, HealthCheck]) -> dict[str, Any]:
    """``{"status": "ok"|"unhealthy", "checks": {name: {"ok", "detail"}}, "failed": [...]}`` (no PHI)."""
    results: dict[str, dict[str, Any]] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = {"ok": True}
        except HealthCheckFailed as failure:
            results[name] = {"ok": False, "detail": str(failure)}
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is still an unhealthy check
            results[name] = {"ok": False, "detail": type(exc).__name__}
    failed = sorted(name for name, result in results.items() if not result["ok"])
    if failed:
        return {"status": "unhealthy", "failed": failed, "checks": results}
    return {"status": "ok", "checks": results}


class HttpServer:
    """Health, metrics, API routes and a mounted application over HTTP. ``start()`` returns once serving.

    Args:
        config: where to listen, and which environment variable holds the API token.
        health_checks: name → check, run in order for every ``GET /healthz``.
        metrics: whose registry ``GET /metrics`` renders (default: the process's :data:`METRICS`).
        environ: where the token is read, at each request (default: ``os.environ``).
        max_body_bytes: a larger request body is refused with 413 before any handler runs (default:
            ``http.max_body_bytes``).

    A route's method, path and bearer token are checked before its body is read: a refused request costs the
    node its headers only, never its body (issue 28: 200 unauthenticated 9 MB POSTs took the node to 1.8 GB).
    """

    def __init__(self, config: HttpConfig, health_checks: Mapping[str, HealthCheck], *,
                 metrics: GatewayMetrics | None = None, environ: Mapping[str, str] | None = None,
                 max_body_bytes: int | None = None) -> None:
        if not isinstance(config, HttpConfig):
            raise TypeError("config must be an HttpConfig")
        self.config = config
        self.health_checks = dict(health_checks)
        self.metrics = metrics or METRICS
        self.environ = os.environ if environ is None else environ
        self.max_body_bytes = config.max_body_bytes if max_body_bytes is None else max_body_bytes
        self._health_pool = ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="http-health")
        self._health_lock = threading.Lock()
        self._health_cached: tuple[float, Response] | None = None
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
        limits = ConnectionLimits(self.config.request_header_timeout_s, self.config.request_body_timeout_s,
                                  self.config.max_connections_per_client, MAX_HEAD_BYTES)
        server = uvicorn.Server(uvicorn.Config(
            self, log_config=None, access_log=False, lifespan="off", server_header=False, date_header=True,
            http=guarded_protocol(limits, ClientConnections(limits.max_connections_per_client)),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_keep_alive=self.config.keep_alive_s,
            proxy_headers=False, limit_concurrency=self.config.max_connections))
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
        head = Request(request.method, path, _query(request), request.headers, b"")
        refusal = self.refusal_before_body(head)
        if refusal is not None:
            await _send(_closing(refusal, request), send, head_only=request.method == "HEAD")
            return
        try:
            body = await _read_body(request, self.max_body_bytes)
        except ClientDisconnect:
            return  # the client went away, or missed the body deadline (answered 408 by the protocol layer)
        if isinstance(body, Response):
            answer = _closing(body, request)
        elif path in HEALTH_PATHS:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._health_pool, self.dispatch, Request(request.method, path, head.query, request.headers, body))
        else:
            answer = await run_in_threadpool(self.dispatch, Request(
                request.method, path, head.query, request.headers, body))
        await _send(answer, send, head_only=request.method == "HEAD")

    def refusal_before_body(self, request: Request) -> Response | None:
        """404, 405, 401 or 503 decided from the request line and headers alone, else None (read the body)."""
        route = self._route(request)
        if isinstance(route, Response):
            return route
        return self._authenticate(request) if route.auth else None

    # --- dispatch (called in a worker thread) ---

    def _route(self, request: Request) -> _Route | Response:
        route = self._routes.get((request.method, request.path))
        if route is None and request.method == "HEAD":
            route = self._routes.get(("GET", request.path))
        if route is not None:
            return route
        allowed = sorted(m for m, p in self._routes if p == request.path)
        if allowed:
            return Response.json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"},
                                 {"Allow": ", ".join(allowed)})
        return Response.json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def dispatch(self, request: Request) -> Response:
        route = self._route(request)
        if isinstance(route, Response):
            return route
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
        """The checks' verdict, reused for ``http.health_cache_s`` (write probes each cost an fsync)."""
        with self._health_lock:
            now = time.monotonic()
            if self._health_cached is not None and now - self._health_cached[0] < self.config.health_cache_s:
                return self._health_cached[1]
            verdict = run_health_checks(self.health_checks)
            status = HTTPStatus.OK if verdict["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            answer = Response.json(status, verdict)
            self._health_cached = (time.monotonic(), answer)
            return answer

    def _metrics(self, _request: Request) -> Response:
        return Response(HTTPStatus.OK, self.metrics.render(), content_type=CONTENT_TYPE)


HEALTH_PATHS = frozenset({"/healthz", "/metrics"})


def _closing(response: Response, request: StarletteRequest) -> Response:
    """``response`` with ``Connection: close`` when the request announced a body that was not read: the
    connection cannot carry another request, and closing it stops the client from sending the rest."""
    announced = request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers
    if not announced:
        return response
    return Response(response.status, response.body, response.content_type, {**response.headers, "Connection": "close"})


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
