"""``GET /healthz`` and ``GET /metrics``, on threads of their own.

Both run in a pool of :data:`HEALTH_THREADS` threads that nothing else uses, so a probe never waits behind
portal pages, sign-ins (each a password hash) or referrals, which share Starlette's worker threads (issue 28).
The checks themselves are :mod:`gateway.ops.health`'s; their verdict is kept for ``http.health_cache_s``
(the write probes each cost an fsync).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.api import NO_STORE, answer
from gateway.ops.health import HealthCheck, run_health_checks
from gateway.ops.metrics import CONTENT_TYPE, GatewayMetrics

HEALTH_THREADS = 2
HEALTH_PATHS = ("/healthz", "/metrics")


class HealthEndpoints:
    """The two probes of a node: its health checks' verdict and its Prometheus metrics.

    Args:
        checks: name → check, run in order for a ``GET /healthz`` (unless the cached verdict is fresh).
        metrics: whose registry ``GET /metrics`` renders.
        cache_s: how long a verdict is reused (``http.health_cache_s``; 0 runs the checks for every request).
    """

    def __init__(self, checks: Mapping[str, HealthCheck], metrics: GatewayMetrics, cache_s: float) -> None:
        self.checks = dict(checks)
        self.metrics = metrics
        self.cache_s = cache_s
        self._pool = ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="http-health")
        self._lock = threading.Lock()
        self._cached: tuple[float, int, dict[str, Any]] | None = None

    def routes(self) -> list[Route]:
        return [Route("/healthz", self.healthz, methods=["GET"]), Route("/metrics", self.render, methods=["GET"])]

    async def healthz(self, _request: Request) -> Response:
        status, verdict = await asyncio.get_running_loop().run_in_executor(self._pool, self.verdict)
        return answer(verdict, status)

    async def render(self, _request: Request) -> Response:
        body = await asyncio.get_running_loop().run_in_executor(self._pool, self.metrics.render)
        return Response(body, media_type=CONTENT_TYPE, headers=NO_STORE)

    def verdict(self) -> tuple[int, dict[str, Any]]:
        """200 or 503 and the checks' findings, reused while younger than ``cache_s``."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_s:
                return self._cached[1], self._cached[2]
            verdict = run_health_checks(self.checks)
            status = HTTPStatus.OK if verdict["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            self._cached = (time.monotonic(), int(status), verdict)
            return int(status), verdict
