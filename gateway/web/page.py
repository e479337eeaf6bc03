"""What a page handler receives and may raise: :class:`Page`, :class:`Refused`, and where each role starts (HOME).

Its own module so that the application (``app.py``, which routes to the pages) and the pages (signin, referrer,
reviewer, ops) both import it, and no page imports the application back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse

from gateway.accounts.users import PasswordChecks
from gateway.config import GatewayConfig
from gateway.ops import audit
from gateway.stages.context import NodeContext
from gateway.storage.spool import Spool
from gateway.web import auth

HOME = {"referrer": "/referrer", "reviewer": "/reviewer", "ops": "/ops"}
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                     "Referrer-Policy": "same-origin",
                     "Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; "
                                                "frame-ancestors 'none'; form-action 'self'"}


class Refused(Exception):
    """Answer with this status and a short page (403, 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Portal:
    """What the pages need: the configuration, the spool, the templates, the login limiter, the bounded
    password checks, and the node's context (its database; the stages a page runs take it)."""

    config: GatewayConfig
    spool: Spool
    templates: jinja2.Environment
    limiter: auth.LoginLimiter
    passwords: PasswordChecks
    context: NodeContext


@dataclass
class Page:
    portal: Portal
    request: Request
    signed_in: auth.SignedIn | None
    form: FormData | None
    anonymous_csrf: str = ""

    @property
    def user(self) -> Any:
        return self.signed_in.user if self.signed_in else None

    @property
    def posted(self) -> FormData:
        """The form of a POST handler (the application reads it before the handler runs: ``form`` is None only on
        a GET); empty on a GET, so that a handler reading it needs no None check."""
        return self.form if self.form is not None else FormData()

    @property
    def pulls(self) -> bool:
        """The signed-in account is a reviewer in ``mode: pull`` (its menu offers "Cases to claim")."""
        user = self.user
        return user is not None and user.role == "reviewer" and any(
            r.name == user.reviewer and r.mode == "pull" for r in self.portal.config.reviewers)

    @property
    def address(self) -> str:
        return self.request.client.host if self.request.client else "-"

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.portal.templates.get_template(template).render(
            user=self.user, csrf=self.signed_in.csrf_token if self.signed_in else self.anonymous_csrf,
            path=self.request.url.path, pool_link=self.pulls, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def audit(self, action: str, study_key: str | None = None, outcome: str = "success", detail: str = "") -> None:
        """An audit row naming the portal user (``actor_host``: ``web:<name>``) and their address."""
        who = self.user.name if self.user is not None else "-"
        audit.record(action, actor_ae=None, actor_host=f"web:{who}"[:64], study_key=study_key, outcome=outcome,
                     detail=f"by {who} from {self.address}" + (f"; {detail}" if detail else ""))
