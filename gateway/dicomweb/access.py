"""Who is asking, and which cases they may see.

A request is a reviewer's by one of two credentials, both read from its headers before any body is read:

* ``Authorization: Bearer <token>``: a token ops issued to that reviewer (:mod:`gateway.accounts.tokens`); an
  ``Authorization`` header that is not a live token answers 401, whatever cookie comes with it;
* the portal's session cookie of a signed-in reviewer account; a POST, PUT or DELETE with it must also carry the
  session's CSRF token in ``X-CSRF-Token`` (403 without it), as every portal form carries it.

Neither: 401 with ``WWW-Authenticate: Bearer``. A session of another role (referrer, ops): 403.

A reviewer sees a case when it is assigned to them (``Study.reviewer``, set by the assignment stage with an active
``Assignment`` row) and open for them, the portal's rule (:data:`gateway.web.views.OPEN_FOR_REVIEWER`: DELIVERING,
DELIVERED, REPORTED). Every other study (another reviewer's, unassigned, closed, or an original Study Instance UID,
which is never a pseudonymous one) does not exist for them: 404, never 403, so that its existence does not leak.
A STOW naming a study may also name one of the reviewer's cases whose report went home (an addendum), as the
report intake takes it by C-STORE.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http import HTTPStatus

from peewee import Database, DatabaseProxy
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.accounts import tokens
from gateway.config import GatewayConfig
from gateway.ops import audit
from gateway.scp.report_intake import ACCEPTING_STATES
from gateway.storage.models import Study
from gateway.web import auth
from gateway.web.views import OPEN_FOR_REVIEWER

CSRF_HEADER = "x-csrf-token"
NO_STORE = {"Cache-Control": "no-store"}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="spine-gateway dicomweb"', **NO_STORE}
REPEAT_AUDIT_S = 300.0  # frames and rendered images of one series: one audit row per caller every 5 minutes
MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Caller:
    """A reviewer making a DICOMweb request: the configured reviewer's name, who for the audit trail
    (``web:<account>`` or ``token:<id>``) and from where."""

    reviewer: str
    actor: str
    address: str


def refusal(status: int, message: str) -> Response:
    headers = CHALLENGE if status == HTTPStatus.UNAUTHORIZED else NO_STORE
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def caller_of(request: Request, config: GatewayConfig,
                    database: Database | DatabaseProxy) -> Caller | Response:
    """The reviewer behind ``request``, or the refusal to answer (401, 403). Reads the headers only."""
    address = request.client.host if request.client else "-"
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        reviewer = None
        if scheme.lower() == "bearer" and token.strip():
            reviewer = await run_in_threadpool(_token_reviewer, token.strip(), config, database)
        if reviewer is None:
            return refusal(HTTPStatus.UNAUTHORIZED, "missing, wrong or revoked bearer token")
        return Caller(reviewer, f"token:{token.strip()[:8]}", address)
    signed_in = await run_in_threadpool(_session, request.cookies.get(auth.COOKIE), database)
    if signed_in is None:
        return refusal(HTTPStatus.UNAUTHORIZED, "sign in to the portal, or send a bearer token")
    if signed_in.user.role != "reviewer" or not signed_in.user.reviewer:
        return refusal(HTTPStatus.FORBIDDEN, "DICOMweb is for reviewers")
    unsafe = request.method in ("POST", "PUT", "DELETE")
    if unsafe and not auth.csrf_ok(signed_in.csrf_token, request.headers.get(CSRF_HEADER)):
        return refusal(HTTPStatus.FORBIDDEN,
                       "a POST, PUT or DELETE with the portal's session needs its CSRF token in X-CSRF-Token")
    return Caller(str(signed_in.user.reviewer), f"web:{signed_in.user.name}"[:64], address)


def _token_reviewer(token: str, config: GatewayConfig, database: Database | DatabaseProxy) -> str | None:
    with database.connection_context():
        return tokens.reviewer_of(token, config)


def _session(cookie: str | None, database: Database | DatabaseProxy) -> auth.SignedIn | None:
    with database.connection_context():
        return auth.session_of(cookie)


def visible_cases(reviewer: str):
    """The cases ``reviewer`` may see (a query; call inside a database connection)."""
    return Study.select().where((Study.reviewer == reviewer) & Study.state.in_(OPEN_FOR_REVIEWER)
                                & Study.pseudo_study_uid.is_null(False)).order_by(Study.id)


def reportable_case(reviewer: str, pseudo_study_uid: str) -> Study | None:
    """The case a ``POST /studies/{study}`` of ``reviewer`` may name: one of its own that is open or still takes
    a report (the report intake's states: an addendum after the report went home is taken, as by C-STORE)."""
    states = set(OPEN_FOR_REVIEWER) | set(ACCEPTING_STATES)
    return Study.get_or_none((Study.reviewer == reviewer) & Study.state.in_(sorted(states))
                             & (Study.pseudo_study_uid == pseudo_study_uid))


def visible_case(reviewer: str, pseudo_study_uid: str) -> Study | None:
    """The case whose pseudonymous Study Instance UID is ``pseudo_study_uid`` if ``reviewer`` may see it."""
    return visible_cases(reviewer).where(Study.pseudo_study_uid == pseudo_study_uid).first()


class AccessTrail:
    """Audit rows for what is served (``dicomweb_retrieved``, ``dicomweb_searched``: ATNA Instances Accessed and
    Query). Whole studies, series, instances and metadata get a row per request; frames and rendered images, which
    a viewer asks for one at a time, a row per caller, case and series every :data:`REPEAT_AUDIT_S` seconds."""

    def __init__(self, repeat_s: float = REPEAT_AUDIT_S, clock=time.monotonic) -> None:
        self.repeat_s = repeat_s
        self.clock = clock
        self._last: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def retrieved(self, caller: Caller, study: Study, what: str, count: int, *, repeat_key: str | None = None) -> None:
        if repeat_key is not None and not self._due((caller.actor, study.key, repeat_key)):
            return
        audit.record("dicomweb_retrieved", actor_ae=None, actor_host=caller.actor, study_key=study.key,
                     detail=f"{what}: {count} object(s) to reviewer {caller.reviewer} from {caller.address}")

    @staticmethod
    def searched(caller: Caller, level: str, count: int, study: Study | None = None) -> None:
        audit.record("dicomweb_searched", actor_ae=None, actor_host=caller.actor,
                     study_key=study.key if study is not None else None,
                     detail=f"{level}: {count} match(es) for reviewer {caller.reviewer} from {caller.address}")

    def _due(self, key: tuple[str, str, str]) -> bool:
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.repeat_s:
                return False
            if len(self._last) >= MAX_REMEMBERED:
                self._last.clear()
            self._last[key] = now
            return True

