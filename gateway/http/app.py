"""The node's one HTTP application: the API's routes and the portal's, on one Starlette router.

API (JSON): ``GET /healthz`` and ``GET /metrics`` (open, on their own threads: :mod:`gateway.http.health`),
``POST /referrals`` (bearer token) and ``GET /referrals/schema`` (open) (:mod:`gateway.http.referrals`).
DICOMweb for the reviewers (``/dicomweb/...``: :mod:`gateway.dicomweb`, handed in by the node) comes next.
The portal's routes (:func:`gateway.web.app.portal_routes`) follow them on the same router, so that a wrong
method on any path answers 405 with ``Allow``, and an unknown path 404: as JSON on the API's paths or without
the portal, as the portal's page otherwise. Both refusals are decided from the request line alone; the
connection is closed when a body was announced (it is never read).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.config import HttpConfig
from gateway.http.api import BearerToken, answer, closing
from gateway.http.health import HealthEndpoints
from gateway.http.referrals import referral_routes
from gateway.ops.health import HealthCheck
from gateway.stages.context import NodeContext

DICOMWEB_PREFIX = "/dicomweb/"
ErrorPage = Callable[[Request, HTTPException], Awaitable[Response]]


def build_application(config: HttpConfig, health_checks: Mapping[str, HealthCheck], *, context: NodeContext,
                      environ: Mapping[str, str] | None = None,
                      max_body_bytes: int | None = None, portal: Sequence[BaseRoute] = (),
                      portal_error_page: ErrorPage | None = None, dicomweb: Sequence[BaseRoute] = ()) -> Starlette:
    """The application the node serves (built once, by :mod:`gateway.node`).

    Args:
        config: the API token's environment variable, the body limit, the health verdict's cache time.
        health_checks: name → check, run for ``GET /healthz`` (:mod:`gateway.ops.health`).
        context: the node's: the database ``POST /referrals`` stores in, the metrics ``GET /metrics`` renders.
        environ: where the API token is read, at each request (default: ``os.environ``).
        max_body_bytes: the largest request body an API route reads (default: ``http.max_body_bytes``).
        portal: the portal's routes (none: no portal).
        portal_error_page: the portal's 404 and 405 page, for paths that are not the API's.
        dicomweb: the DICOMweb routes, all under ``/dicomweb`` (none: no DICOMweb); a 404 or 405 there is JSON.

    Raises:
        ValueError: a portal route takes a path of the API's.
    """
    health = HealthEndpoints(health_checks, context.metrics, config.health_cache_s)
    token = BearerToken(config.token_env, environ)
    body_limit = config.max_body_bytes if max_body_bytes is None else max_body_bytes
    api: list[BaseRoute] = [*health.routes(), *referral_routes(token, body_limit, context.database)]
    api_paths = frozenset(route.path for route in api if isinstance(route, Route))
    taken = sorted(api_paths & {getattr(route, "path", "") for route in portal})
    if taken:
        raise ValueError(f"portal routes take the API's paths: {', '.join(taken)}")
    refused = _refusals(api_paths, portal_error_page)
    return Starlette(routes=[*api, *dicomweb, *portal], exception_handlers={404: refused, 405: refused})


def _refusals(api_paths: frozenset[str],
              portal_error_page: ErrorPage | None) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def refused(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for 404 and 405 only: Starlette's HTTPException
            raise exc
        path = request.scope["path"]
        if portal_error_page is not None and path not in api_paths and not path.startswith(DICOMWEB_PREFIX):
            return closing(await portal_error_page(request, exc), request)
        reason = HTTPStatus(exc.status_code).phrase.lower()
        return closing(answer({"error": reason}, exc.status_code, exc.headers), request)

    return refused
