"""What every API endpoint shares: JSON answers, the bearer token, the bounded body, a failure answered 500.

The token and everything else that can be refused from the request line and the headers is refused before a
byte of the body is read: a refused request costs the node its headers only, never its body (issue 28: 200
unauthenticated 9 MB POSTs took the node to 1.8 GB). Such a refusal closes the connection when a body was
announced, so the client stops sending it.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError

log = structlog.get_logger("http")
TOKEN_NOT_CONFIGURED = "API token not configured"
NO_STORE = {"Cache-Control": "no-store"}

Endpoint = Callable[[Request], Awaitable[Response]]


class BodyRefused(GatewayError):
    """The request body is refused: its Content-Length is malformed (400) or it is over the limit (413)."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__("bad or too large body")
        self.status = status


def answer(payload: Any, status: int = HTTPStatus.OK, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON answer that no cache keeps."""
    return JSONResponse(payload, status_code=int(status), headers={**NO_STORE, **(headers or {})})


def closing(response: Response, request: Request) -> Response:
    """``response`` with ``Connection: close`` when the request announced a body that was not read: the
    connection cannot carry another request, and closing it stops the client from sending the rest."""
    headers = request.headers
    if headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers:
        response.headers["Connection"] = "close"
    return response


class BearerToken:
    """The API token, read at each request from the environment variable ``env_name`` of ``environ``.

    With no token configured every authenticated request is answered 503, so that an API is never left open by
    omission. The token is compared in constant time.
    """

    def __init__(self, env_name: str, environ: Mapping[str, str] | None = None) -> None:
        self.env_name = env_name
        self.environ = os.environ if environ is None else environ

    def refusal(self, request: Request) -> Response | None:
        """503 without a configured token, 401 without the right one, else None. Reads the headers only."""
        expected = self.environ.get(self.env_name, "")
        if not expected:
            return answer({"error": TOKEN_NOT_CONFIGURED}, HTTPStatus.SERVICE_UNAVAILABLE)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return answer({"error": "missing or wrong bearer token"}, HTTPStatus.UNAUTHORIZED,
                          {"WWW-Authenticate": 'Bearer realm="spine-gateway"'})
        return None


def authenticated(endpoint: Endpoint, token: BearerToken) -> Endpoint:
    """``endpoint`` behind ``token``: the request is refused from its headers, before its body is read."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        refusal = token.refusal(request)
        if refusal is not None:
            return closing(refusal, request)
        return await endpoint(request)

    return guarded


def logged_failures(endpoint: Endpoint, route: str) -> Endpoint:
    """``endpoint``, served at the path template ``route``, answering 500 when it raises, with one log line
    naming the exception's type and ``route`` only: the exception's message may quote the request, and the
    request's path may hold what a user typed (an original UID, a name). One broken endpoint must not take the
    server down."""

    @functools.wraps(endpoint)
    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - the edge: anything unexpected is a 500 and a log line
            log.error("http_handler_failed", reason=route, error=type(exc).__name__, component="http")
            return answer({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    return answered


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read only up to ``limit`` bytes: a larger Content-Length is refused before reading, a body
    that grows past it while streaming (chunked) as soon as it does.

    Raises:
        BodyRefused: 400 for a malformed Content-Length, 413 over ``limit``.
        starlette.requests.ClientDisconnect: the client went away, or missed the body deadline (answered 408
            by the protocol layer, :mod:`gateway.http.limits`).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyRefused(HTTPStatus.BAD_REQUEST)
        if int(declared) > limit:
            raise BodyRefused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRefused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)
