"""The portal's routes, the sign-in guard, CSRF and rendering; served on the node's one HTTP application
(:mod:`gateway.http.app`), beside the API.

Every page handler is a plain function run in a worker thread inside a database connection; it receives a
:class:`Page` (the request, the signed-in user, the posted form) and returns a response. ``guard`` refuses
what the user's role may not see (403), sends an anonymous browser to the sign-in page, and refuses a POST
whose CSRF token is missing or wrong (403).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.accounts.users import PasswordChecks
from gateway.config import GatewayConfig
from gateway.stages.context import NodeContext
from gateway.storage.spool import Spool
from gateway.web import auth
from gateway.web.page import SECURITY_HEADERS, Page, Portal, Refused

log = structlog.get_logger("web")
HERE = Path(__file__).parent
MAX_FORM_FIELDS = 200
MAX_FORM_BYTES = 1024 * 1024


Handler = Callable[[Page], Response]


def guard(portal: Portal, handler: Handler, role: str | None, route: str) -> Callable[[Request], Any]:
    """The Starlette endpoint around ``handler``, served at the path template ``route``: sign-in, role and CSRF
    checks, a database connection. Its log lines name ``route``, never the request's path: a user can type an
    original UID or a patient's name into a URL.

    What can be refused from the request line and headers is refused before the body is read: a path
    parameter that no case or referral can have (404), a POST to a role's page without that role's session
    (redirect to sign-in, or 403), a body larger than the limit (413). Only then is the form read.
    """

    async def endpoint(request: Request) -> Response:
        if not _plausible_path_params(request):
            return _short_page(404, "Not found", "Not found.")
        form = None
        if request.method == "POST":
            refusal = await _refusal_before_body(portal, request, role)
            if refusal is not None:
                refusal.headers["Connection"] = "close"
                return refusal
            try:
                form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
            except ClientDisconnect:
                return _short_page(408, "Too slow", "The form did not arrive in time.")
            except MultiPartException:
                return _short_page(400, "Bad form", "The form could not be read.")
        return await run_in_threadpool(_run, portal, handler, role, route, request, form)

    return endpoint


_PATH_PARAM = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _plausible_path_params(request: Request) -> bool:
    """Every path parameter is a short token (case keys are 16 characters, referral ids a few digits): a NUL, a
    control character or a megabyte would otherwise reach the database (PostgreSQL refuses NUL with an error)."""
    return all(isinstance(value, str) and _PATH_PARAM.fullmatch(value)
               for value in request.path_params.values())


async def _refusal_before_body(portal: Portal, request: Request, role: str | None) -> Response | None:
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > min(MAX_FORM_BYTES, portal.config.http.max_body_bytes):
        return _too_large_page(min(MAX_FORM_BYTES, portal.config.http.max_body_bytes))
    if role is None:
        return None
    signed_in = await run_in_threadpool(_session_of, portal, request)
    if signed_in is None:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    if signed_in.user.role != role:
        return _short_page(403, "Not allowed", "This page is not for your role.")
    return None


def _session_of(portal: Portal, request: Request) -> auth.SignedIn | None:
    with portal.context.database.connection_context():
        return auth.session_of(request.cookies.get(auth.COOKIE))


def _too_large_page(limit: int) -> HTMLResponse:
    """413 for a form over the limit, refused unread: styled as the portal, with the limits and the way back to
    what was typed (the browser's back keeps a form's fields)."""
    from gateway.referral.document import HISTORY_CHARS, NOTE_CHARS, QUESTION_CHARS

    body = (f"<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Too large</title>"
            f"<link rel=\"stylesheet\" href=\"/static/portal.css\"><main><h1>The form is too large</h1>"
            f"<p class=\"error\" role=\"alert\">Nothing was sent: the gateway takes a form of at most "
            f"{limit // 1024} KB. The history takes at most {HISTORY_CHARS:,} characters, the question "
            f"{QUESTION_CHARS:,}, every other note {NOTE_CHARS:,}.</p>"
            f"<p>Go back with your browser's Back button: the form keeps what you typed. Shorten the longest "
            f"field, then send it again.</p></main></html>")
    return HTMLResponse(body, status_code=413, headers=dict(SECURITY_HEADERS))


def _short_page(status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>{title}</title><p>{message}</p>", status_code=status,
                        headers=dict(SECURITY_HEADERS))


def _run(portal: Portal, handler: Handler, role: str | None, route: str, request: Request,
         form: FormData | None) -> Response:
    with portal.context.database.connection_context():
        signed_in = auth.session_of(request.cookies.get(auth.COOKIE))
        anonymous_csrf = request.cookies.get(auth.ANONYMOUS_CSRF_COOKIE) or ""
        page = Page(portal, request, signed_in, form, anonymous_csrf or auth.new_csrf_token())
        try:
            if role is not None:
                if signed_in is None:
                    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
                if signed_in.user.role != role:
                    raise Refused(403, "This page is not for your role.")
            expected = signed_in.csrf_token if signed_in is not None else anonymous_csrf
            if form is not None and not auth.csrf_ok(expected, form.get("csrf_token")):
                raise Refused(403, "The form has expired or did not come from this site. Go back, reload and "
                                   "send it again.")
            response = handler(page)
            if signed_in is None and not anonymous_csrf:
                response.set_cookie(auth.ANONYMOUS_CSRF_COOKIE, page.anonymous_csrf, httponly=True, samesite="lax",
                                    secure=portal.config.http.secure_cookies or request.url.scheme == "https")
            return response
        except Refused as refusal:
            if refusal.status == 403 and signed_in is not None:
                log.warning("web_refused", status=refusal.status, reason=route)
            return page.render("error.html", status=refusal.status, message=refusal.message,
                               title="Not allowed" if refusal.status == 403 else "Not found")
        except Exception as exc:  # noqa: BLE001 - only the type is logged: a message may quote a form (PHI)
            log.error("web_handler_failed", error=type(exc).__name__, reason=route)
            return page.render("error.html", status=500, title="Something went wrong",
                               message="The page could not be shown. The operators find the error in the log "
                                       "(web_handler_failed); try again, or ask them.")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    from gateway.reports.reidentify import readable_name

    env.filters["readable_name"] = readable_name  # Family^Given as "Given Family": no DICOM on a page
    env.filters["uid_names"] = uid_names
    return env


_UID = re.compile(r"\b1\.2\.840\.10008\.[0-9.]+[0-9]\b")


def uid_names(text: str) -> str:
    """Standard UIDs (SOP classes, transfer syntaxes) in a text by their DICOM names: an operator reads
    "Encapsulated PDF Storage", not 1.2.840.10008.5.1.4.1.1.104.1. Unknown UIDs stay as they are."""
    from pydicom.uid import UID

    def name(match: re.Match[str]) -> str:
        uid = UID(match.group(0))
        return uid.name if uid.name != str(uid) else str(uid)

    return _UID.sub(name, text or "")


def portal_routes(config: GatewayConfig, spool: Spool, context: NodeContext) -> list[BaseRoute]:
    """The portal's pages and static files, for the node's one HTTP application
    (:func:`gateway.http.app.build_application`, with :func:`error_page` for its 404 and 405). ``context``: the
    node's (the pages' database connections; the stages a page runs)."""
    from gateway.web import claims, ops, referrer, reviewer, signin

    http = config.http
    limiter = auth.LoginLimiter(http.login_attempts_per_minute, http.login_attempts_per_address_per_minute,
                                http.login_attempts_global_per_minute)
    portal = Portal(config, spool, templates(), limiter,
                    PasswordChecks(http.password_hash_concurrency, http.password_hash_wait_s), context)
    routes: list[BaseRoute] = []
    for module in (signin, referrer, reviewer, claims, ops):
        for method, path, handler, role in module.ROUTES:
            routes.append(Route(path, guard(portal, handler, role, path), methods=[method]))
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    return routes


async def error_page(_request: Request, exc: HTTPException) -> Response:
    """The portal's short page for a path it does not have (404) or a method a page does not take (405)."""
    if exc.status_code == 405:
        return HTMLResponse("<!doctype html><title>Method not allowed</title><p>Method not allowed.</p>",
                            status_code=405, headers={**SECURITY_HEADERS, **(exc.headers or {})})
    return HTMLResponse("<!doctype html><title>Not found</title><p>Not found. <a href=\"/\">Home</a></p>",
                        status_code=404, headers=SECURITY_HEADERS)
