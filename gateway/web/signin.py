"""Sign in and out, and the home page that sends each role to its own pages."""

from __future__ import annotations

import math

from starlette.responses import RedirectResponse, Response

from gateway.accounts.users import PasswordCheckBusy, record_login, rehash_if_outdated
from gateway.ops import audit
from gateway.storage.models import WebUser
from gateway.web import auth
from gateway.web.page import HOME, Page

MAX_PASSWORD_CHARS = 1024  # a longer password is wrong without being hashed (argon2 takes any length)
BUSY_RETRY_AFTER_S = 2


def home(page: Page) -> Response:
    if page.user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(HOME[page.user.role], status_code=303)


def login_form(page: Page) -> Response:
    return page.render("login.html", title="Sign in", name="", error="", next=_next(page))


def _next(page: Page) -> str:
    target = (page.form.get("next") if page.form else page.request.query_params.get("next")) or ""
    target = str(target)
    return target if target.startswith("/") and not target.startswith("//") else ""


def login(page: Page) -> Response:
    """Sign in. The attempt is counted (and refused past a limit, 429) before the password is hashed, and the
    hash runs in a bounded pool (503 when no slot comes free in time): a flood costs bounded memory and CPU.
    A refused attempt is audited only as its address's first in a minute (:class:`auth.RefusedSignIns`): a flood
    makes no database write per attempt, for DICOM stores to wait behind."""
    name = str(page.posted.get("name") or "").strip()[:64]
    password = str(page.posted.get("password") or "")
    _audit_held_back(page.portal.limiter.refusals)
    retry_after = page.portal.limiter.admit(name, page.address)
    if retry_after is not None:
        _refused(page, name, "too many attempts")
        response: Response = page.render("login.html", status=429, title="Sign in", name=name, next=_next(page),
                               error="Too many sign-in attempts. Wait a minute, then try again.")
        response.headers["Retry-After"] = str(math.ceil(retry_after))
        return response
    user = WebUser.get_or_none(WebUser.name == name)
    try:
        correct = len(password) <= MAX_PASSWORD_CHARS and page.portal.passwords.check(
            user, password, page.address, first=not page.portal.limiter.suspect(page.address))
    except PasswordCheckBusy:
        _refused(page, name, "password checks busy")
        response = page.render("login.html", status=503, title="Sign in", name=name, next=_next(page),
                               error="The portal is busy. Try again in a few seconds.")
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
        return response
    if not correct or user is None:  # check_password is never correct without a user
        page.portal.limiter.wrong_password(page.address)
        _refused(page, name, "wrong name or password")
        return page.render("login.html", status=401, title="Sign in", name=name, next=_next(page),
                           error="Wrong user name or password.")
    page.portal.limiter.succeeded(name, page.address)
    rehash_if_outdated(user, password)  # a hash made with older, costlier parameters: once per user
    token = auth.start_session(user, page.portal.config.http.session_hours)
    record_login(user)
    page.signed_in = auth.SignedIn(user, "")
    page.audit("web_login")
    response = RedirectResponse(_next(page) or HOME[user.role], status_code=303)
    secure = page.portal.config.http.secure_cookies or page.request.url.scheme == "https"
    response.set_cookie(auth.COOKIE, token, max_age=int(page.portal.config.http.session_hours * 3600),
                        httponly=True, samesite="lax", secure=secure, path="/")
    return response


def _refused(page: Page, name: str, reason: str) -> None:
    """Audit a refused sign-in if it is its address's first this minute (else it is counted for a later row)."""
    detail = page.portal.limiter.refusals.note(page.address, reason)
    if detail is not None:
        page.audit("web_login", outcome="refused", detail=f"user {name}: {detail}")


def _audit_held_back(refusals: auth.RefusedSignIns) -> None:
    """The refusals held back for addresses that did not come back: one row each (the actor is unknown)."""
    for address, detail in refusals.due():
        where = "other addresses" if address == auth.OTHER_ADDRESSES else address
        audit.record("web_login", actor_ae=None, actor_host="web:-", study_key=None, outcome="refused",
                     detail=f"from {where}; {detail}")


def logout(page: Page) -> Response:
    if page.signed_in is not None:
        page.audit("web_logout")
    auth.end_session(page.request.cookies.get(auth.COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/")
    return response


def logout_form(page: Page) -> Response:
    return RedirectResponse("/", status_code=303)


ROUTES = [
    ("GET", "/", home, None),
    ("GET", "/login", login_form, None),
    ("POST", "/login", login, None),
    ("POST", "/logout", logout, None),
]
