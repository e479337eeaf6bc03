"""Sign in and out, and the home page that sends each role to its own pages."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from gateway.models import WebUser
from gateway.web import auth
from gateway.web.accounts import check_password, record_login
from gateway.web.app import HOME, Page


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
    name = str(page.form.get("name") or "").strip()[:64]
    password = str(page.form.get("password") or "")
    if not page.portal.limiter.allowed(name, page.address):
        page.audit("web_login", outcome="refused", detail=f"user {name}: too many attempts")
        return page.render("login.html", status=429, title="Sign in", name=name, next=_next(page),
                           error="Too many wrong passwords. Wait a minute, then try again.")
    user = WebUser.get_or_none(WebUser.name == name)
    if not check_password(user, password):
        page.portal.limiter.failed(name, page.address)
        page.audit("web_login", outcome="refused", detail=f"user {name}: wrong name or password")
        return page.render("login.html", status=401, title="Sign in", name=name, next=_next(page),
                           error="Wrong user name or password.")
    page.portal.limiter.succeeded(name, page.address)
    token = auth.start_session(user, page.portal.config.http.session_hours)
    record_login(user)
    page.signed_in = auth.SignedIn(user, "")
    page.audit("web_login")
    response = RedirectResponse(_next(page) or HOME[user.role], status_code=303)
    secure = page.portal.config.http.secure_cookies or page.request.url.scheme == "https"
    response.set_cookie(auth.COOKIE, token, max_age=int(page.portal.config.http.session_hours * 3600),
                        httponly=True, samesite="lax", secure=secure, path="/")
    return response


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
