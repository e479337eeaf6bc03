"""UPS-RS (PS3.18 §11, the Worklist Service) over the pool worklist, under ``/dicomweb/workitems``.

Same callers as the rest of DICOMweb (:func:`gateway.dicomweb.access.caller_of`: a reviewer's portal session, with
its CSRF token for PUT, POST and DELETE, or its bearer token). A reviewer sees the workitems it is eligible for and
those it claimed (:func:`gateway.routing.pool.visible`); any other workitem does not exist for it (404).

* ``GET /workitems`` (search: ProcedureStepState, ScheduledProcedureStepPriority, the three date-times as ranges,
  limit, offset), ``GET /workitems/{uid}`` (retrieve);
* ``PUT /workitems/{uid}/state`` (change state): IN PROGRESS with a new Transaction UID claims the case; CANCELED
  with it gives the case back to the pool; COMPLETED with it once the report is in (the report completes it anyway);
* ``POST /workitems/{uid}/cancelrequest``: reaches the performer as a Cancel Requested event;
* ``POST``/``DELETE /workitems/{uid}/subscribers/{aet}`` and the global subscription on the well-known UID
  1.2.840.10008.5.1.4.34.5 (with ``/suspend``); events are read by polling
  ``GET /subscribers/{aet}/events?after=N`` (the node's alternative to the standard's WebSocket channel).

* ``POST /workitems/{uid}?transaction=<Transaction UID>`` (update): the claimer says it is still at work, and its
  claim is renewed (:func:`gateway.routing.pool.renew`); the only attribute taken is the UPS Progress Information
  Sequence, which the node does not keep.

Creating a workitem, and updating its other attributes, is the node's alone (405, 400). A refused state change or
update answers 409 (400 for a request without the attributes it needs) with the UPS status in a ``Warning: 299``
header.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.config import GatewayConfig, ReviewerConfig
from gateway.dicomweb import ups
from gateway.dicomweb.access import Caller, caller_of, refusal
from gateway.http.api import BodyRefused, closing, read_body
from gateway.ops import audit
from gateway.routing import pool
from gateway.stages.context import NodeContext
from gateway.storage import workitems
from gateway.storage.models import Study, Workitem, WorkitemEvent, WorkitemSubscription
from gateway.storage.wakeup import WORKLIST
from gateway.storage.workitems import WorkitemRefused

log = structlog.get_logger("dicomweb")
DICOM_JSON = "application/dicom+json"
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_AE_TITLE = re.compile(r"[ -\[\]-~]{1,16}")  # printable ASCII without the backslash
MAX_EVENTS = 500  # events in one polling answer; ask again with ``after`` for the rest

Handler = Callable[[Caller, ReviewerConfig, Request, Any], Response]


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type=DICOM_JSON,
                    headers={**NO_STORE, **(headers or {})})


def _warning(text: str) -> dict[str, str]:
    return {"Warning": f'299 spine-gateway: "{text}"'}


def _refused(refusal_: WorkitemRefused) -> Response:
    text = f"{refusal_.status:04X}: {refusal_}"
    if refusal_.warning:
        return Response(status_code=HTTPStatus.OK, headers={**NO_STORE, **_warning(text)})
    return _json({"error": text}, HTTPStatus.CONFLICT, _warning(text))


def _not_found() -> Response:
    return refusal(HTTPStatus.NOT_FOUND, "no such workitem")


class Worklist:
    """The UPS-RS endpoints (see the module docstring); ``routes()`` hands them to the HTTP application."""

    def __init__(self, config: GatewayConfig, context: NodeContext, prefix: str) -> None:
        self.config = config
        self.context = context
        self.database = context.database
        self.prefix = prefix

    # --- plumbing -------------------------------------------------------------------------------------------

    def _endpoint(self, handler: Handler, template: str, *,
                  with_body: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the caller's authentication; a failure is logged with the route's ``template``, never
        the request's path (as DICOMweb's other routes)."""
        async def endpoint(request: Request) -> Response:
            caller = await caller_of(request, self.config, self.database)
            if isinstance(caller, Response):
                return closing(caller, request)
            reviewer = next((r for r in self.config.reviewers if r.name == caller.reviewer), None)
            if reviewer is None:
                return closing(refusal(HTTPStatus.UNAUTHORIZED, "the reviewer is no longer configured"), request)
            uid = request.path_params.get("workitem")
            if uid is not None and not (_UID.fullmatch(uid) and len(uid) <= 64):
                return closing(_not_found(), request)
            aet = request.path_params.get("aet")
            if aet is not None and not _AE_TITLE.fullmatch(aet.strip() or "-"):
                return closing(refusal(HTTPStatus.BAD_REQUEST, "a subscriber is an AE title of 1 to 16 characters"),
                               request)
            body: Any = None
            if with_body:
                try:
                    raw = await read_body(request, self.config.http.max_body_bytes)
                    body = _dataset(raw)
                except BodyRefused as exc:
                    return closing(refusal(exc.status, "bad or too large body"), request)
                except ClientDisconnect:
                    return refusal(HTTPStatus.REQUEST_TIMEOUT, "the body did not arrive in time")
                except ValueError as exc:
                    return refusal(HTTPStatus.BAD_REQUEST, str(exc))
            try:
                return await run_in_threadpool(self._run, handler, caller, reviewer, request, body)
            except Exception as exc:  # noqa: BLE001 - the edge: one line naming the type only (no PHI)
                log.error("dicomweb_failed", error=type(exc).__name__, reason=template, reviewer=caller.reviewer)
                return refusal(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

        return endpoint

    def _run(self, handler: Handler, caller: Caller, reviewer: ReviewerConfig, request: Request,
             body: Any) -> Response:
        with self.database.connection_context():
            return handler(caller, reviewer, request, body)

    def _retrieve_url(self, request: Request, pseudo_study_uid: str) -> str:
        return f"{str(request.base_url).rstrip('/')}{self.prefix}/studies/{pseudo_study_uid}"

    def _item(self, workitem: Workitem, reviewer: ReviewerConfig, request: Request) -> dict[str, Any]:
        study: Study = workitem.study
        return ups.as_json(workitem, study.key, study.pseudo_study_uid or "", reviewer.name,
                           self._retrieve_url(request, study.pseudo_study_uid or ""))

    @staticmethod
    def _visible(reviewer: ReviewerConfig, uid: str) -> Workitem | None:
        workitem = Workitem.select(Workitem, Study).join(Study).where(Workitem.uid == uid).first()
        return workitem if workitem is not None and pool.visible(reviewer, workitem) else None

    # --- search and retrieve ----------------------------------------------------------------------------------

    def search(self, caller: Caller, reviewer: ReviewerConfig, request: Request, _body: Any) -> Response:
        try:
            search = ups.Search(request.query_params.multi_items())
        except ups.BadSearch as exc:
            return refusal(HTTPStatus.BAD_REQUEST, str(exc))
        # the open workitems and the caller's own: a final workitem is its claimer's business only
        candidates = (Workitem.select(Workitem, Study).join(Study)
                      .where(Workitem.state.in_(workitems.OPEN) | (Workitem.claimed_by == reviewer.name))
                      .order_by(Workitem.priority, Workitem.due_at, Workitem.id))
        items = [self._item(w, reviewer, request) for w in candidates if pool.visible(reviewer, w)]
        chosen = search.keep(items)
        audit.record("worklist_searched", actor_ae=None, actor_host=caller.actor, study_key=None,
                     detail=f"workitems: {len(chosen)} match(es) for reviewer {reviewer.name} from {caller.address}")
        headers = _warning(f"not supported for matching, ignored: {', '.join(search.ignored)}") if search.ignored \
            else None
        if not chosen:
            return Response(status_code=HTTPStatus.NO_CONTENT, headers={**NO_STORE, **(headers or {})})
        return _json(chosen, headers=headers)

    def retrieve(self, caller: Caller, reviewer: ReviewerConfig, request: Request, _body: Any) -> Response:
        workitem = self._visible(reviewer, request.path_params["workitem"])
        if workitem is None:
            return _not_found()
        return _json([self._item(workitem, reviewer, request)])

    # --- change state and cancellation -------------------------------------------------------------------------

    def change_state(self, caller: Caller, reviewer: ReviewerConfig, request: Request, body: Any) -> Response:
        workitem = self._visible(reviewer, request.path_params["workitem"])
        if workitem is None:
            return _not_found()
        target, transaction_uid = _text(body, ups.STATE), _text(body, ups.TRANSACTION_UID)
        if target not in workitems.STATES or not transaction_uid or not _UID.fullmatch(transaction_uid):
            return refusal(HTTPStatus.BAD_REQUEST, "the body needs ProcedureStepState (00741000) and a Transaction "
                                                   "UID (00081195)")
        try:
            if target == workitems.IN_PROGRESS and workitem.state == workitems.SCHEDULED:
                if not pool.eligible(reviewer, workitem):
                    return _not_found()
                expires = pool.claim(workitem, reviewer, transaction_uid, self.config.routing.pool_claim_timeout_s,
                                     caller.actor)
                self.context.wake_at(WORKLIST, expires)  # the pool stage looks at the claim when it ends
                return Response(status_code=HTTPStatus.OK, headers=NO_STORE)
            return self._settle(caller, reviewer, workitem, target, transaction_uid)
        except WorkitemRefused as exc:
            return _refused(exc)

    def _settle(self, caller: Caller, reviewer: ReviewerConfig, workitem: Workitem, target: str,
                transaction_uid: str) -> Response:
        holder = workitem.claimed_by == reviewer.name and workitems.holds(workitem, transaction_uid)
        refused = workitems.change_refused(workitem.state, target, holds_transaction=holder)
        if refused is not None:
            raise WorkitemRefused(refused)
        if target == workitems.CANCELED:
            if not pool.give_back(workitem, pool.GIVEN_BACK, caller.actor):
                raise WorkitemRefused(workitems.MAY_NO_LONGER_BE_UPDATED, "the case has moved on (its report?)")
        elif not pool.complete(workitem, caller.actor):
            raise WorkitemRefused(0xC304, "the report completes the workitem: send it (STOW-RS or C-STORE)")
        return Response(status_code=HTTPStatus.OK, headers=NO_STORE)

    def update(self, caller: Caller, reviewer: ReviewerConfig, request: Request, body: Any) -> Response:
        """Update Workitem (PS3.18 §11.6) by the claimer, with its Transaction UID (``?transaction=``, or (0008,1195)
        in the body): the claim is renewed for ``routing.pool_claim_timeout_s`` from now. The standard has no lease
        to extend; a performer's update is its sign of life, so the node reads it as one."""
        workitem = self._visible(reviewer, request.path_params["workitem"])
        if workitem is None:
            return _not_found()
        others = sorted(set(body) - {ups.PROGRESS, ups.TRANSACTION_UID})
        if others:
            return refusal(HTTPStatus.BAD_REQUEST, "an update takes only the UPS Progress Information Sequence "
                                                   f"(00741002); the node's own: {', '.join(others[:8])[:80]}")
        transaction_uid = request.query_params.get("transaction") or _text(body, ups.TRANSACTION_UID)
        try:
            if workitem.state == workitems.SCHEDULED:
                raise WorkitemRefused(workitems.NOT_IN_PROGRESS, "a SCHEDULED workitem is the node's: claim it")
            if workitem.state in workitems.FINAL:
                raise WorkitemRefused(workitems.MAY_NO_LONGER_BE_UPDATED)
            if workitem.claimed_by != reviewer.name or not workitems.holds(workitem, transaction_uid):
                raise WorkitemRefused(workitems.WRONG_TRANSACTION_UID)
            expires = pool.renew(workitem, reviewer.name, self.config.routing.pool_claim_timeout_s,
                                 transaction_sha256=workitem.transaction_sha256)
            if expires is None:
                raise WorkitemRefused(workitems.MAY_NO_LONGER_BE_UPDATED, "the claim ended meanwhile")
        except WorkitemRefused as exc:
            return _refused(exc)
        audit.record("worklist_claim_renewed", actor_ae=None, actor_host=caller.actor, study_key=workitem.study.key,
                     detail=f"by an update of reviewer {reviewer.name}, claim until {expires:%H:%M:%S}")
        kept = _warning("the progress is not kept; the update renewed the claim") if ups.PROGRESS in body else {}
        return Response(status_code=HTTPStatus.OK, headers={**NO_STORE, **kept})

    def cancel_request(self, caller: Caller, reviewer: ReviewerConfig, request: Request, body: Any) -> Response:
        workitem = self._visible(reviewer, request.path_params["workitem"])
        if workitem is None:
            return _not_found()
        refused = workitems.cancel_request_refused(workitem.state)
        if refused is not None:
            return _refused(WorkitemRefused(refused))
        reason = _text(body, ups.REASON) if body else ""
        workitems.record(workitem, workitems.CANCEL_REQUESTED, f"requested by {reviewer.name}: {reason}"[:64])
        audit.record("worklist_cancel_requested", actor_ae=None, actor_host=caller.actor,
                     study_key=workitem.study.key, detail=f"by reviewer {reviewer.name}, to the performer")
        return Response(status_code=HTTPStatus.ACCEPTED, headers=NO_STORE)

    # --- subscriptions ------------------------------------------------------------------------------------------

    def subscribe(self, caller: Caller, reviewer: ReviewerConfig, request: Request, _body: Any) -> Response:
        uid, aet = request.path_params["workitem"], request.path_params["aet"].strip()
        lock = request.query_params.get("deletionlock", "false").lower() == "true"
        target = None
        if uid != workitems.GLOBAL_SUBSCRIPTION_UID:
            target = self._visible(reviewer, uid)
            if target is None:
                return _not_found()
        WorkitemSubscription.insert(reviewer=reviewer.name, ae_title=aet, workitem=target, deletion_lock=lock,
                                    suspended=False).on_conflict(
            conflict_target=[WorkitemSubscription.reviewer, WorkitemSubscription.ae_title,
                             WorkitemSubscription.workitem],
            update={WorkitemSubscription.suspended: False, WorkitemSubscription.deletion_lock: lock}).execute()
        return Response(status_code=HTTPStatus.CREATED, headers={
            **NO_STORE, "Content-Location": f"{str(request.base_url).rstrip('/')}{self.prefix}/subscribers/{aet}"})

    def unsubscribe(self, caller: Caller, reviewer: ReviewerConfig, request: Request, _body: Any) -> Response:
        uid, aet = request.path_params["workitem"], request.path_params["aet"].strip()
        mine = (WorkitemSubscription.reviewer == reviewer.name) & (WorkitemSubscription.ae_title == aet)
        if uid == workitems.GLOBAL_SUBSCRIPTION_UID:
            WorkitemSubscription.delete().where(mine & WorkitemSubscription.workitem.is_null()).execute()
            WorkitemSubscription.delete().where(mine & (WorkitemSubscription.deletion_lock == False)).execute()  # noqa: E712
        else:
            target = self._visible(reviewer, uid)
            if target is None:
                return _not_found()
            WorkitemSubscription.delete().where(mine & (WorkitemSubscription.workitem == target)).execute()
        return Response(status_code=HTTPStatus.OK, headers=NO_STORE)

    def suspend(self, caller: Caller, reviewer: ReviewerConfig, request: Request, _body: Any) -> Response:
        """Suspend the global subscription: no new workitem joins it; the specific ones stay."""
        if request.path_params["workitem"] != workitems.GLOBAL_SUBSCRIPTION_UID:
            return _not_found()
        (WorkitemSubscription.update(suspended=True)
         .where((WorkitemSubscription.reviewer == reviewer.name)
                & (WorkitemSubscription.ae_title == request.path_params["aet"].strip())
                & WorkitemSubscription.workitem.is_null()).execute())
        return Response(status_code=HTTPStatus.OK, headers=NO_STORE)

    def events(self, caller: Caller, reviewer: ReviewerConfig, request: Request, _body: Any) -> Response:
        """The events of the subscriber's workitems after ``after`` (an event id), oldest first, at most
        :data:`MAX_EVENTS`: ``{"events": [{"id": N, "report": {...}}], "after": <last id>}``."""
        after_text = request.query_params.get("after", "0")
        if not after_text.isdigit():
            return refusal(HTTPStatus.BAD_REQUEST, "after is an event id")
        after = int(after_text)
        reports, last = subscribed_events(reviewer, request.path_params["aet"].strip(), after)
        return _json({"events": reports, "after": last})

    # --- routes -------------------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        p, item = self.prefix, f"{self.prefix}/workitems/{{workitem}}"
        subscriber = f"{item}/subscribers/{{aet}}"
        endpoints: list[tuple[str, str, Handler, bool]] = [  # method, path, handler, with a body
            ("GET", f"{p}/workitems", self.search, False),
            ("GET", item, self.retrieve, False),
            ("POST", item, self.update, True),
            ("PUT", f"{item}/state", self.change_state, True),
            ("POST", f"{item}/cancelrequest", self.cancel_request, True),
            ("POST", subscriber, self.subscribe, False),
            ("DELETE", subscriber, self.unsubscribe, False),
            ("POST", f"{subscriber}/suspend", self.suspend, False),
            ("GET", f"{p}/subscribers/{{aet}}/events", self.events, False),
        ]
        return [Route(path, self._endpoint(handler, path, with_body=body), methods=[method])
                for method, path, handler, body in endpoints]


def subscribed_events(reviewer: ReviewerConfig, aet: str, after: int) -> tuple[list[dict[str, Any]], int]:
    """The events after ``after`` of the workitems ``reviewer`` subscribed to as ``aet`` (those named, and, with a
    global subscription not suspended, every workitem the reviewer may see), and the last event id looked at."""
    subscriptions = list(WorkitemSubscription.select().where((WorkitemSubscription.reviewer == reviewer.name)
                                                             & (WorkitemSubscription.ae_title == aet)))
    named = {s.workitem_id: s.created_at for s in subscriptions if s.workitem_id is not None}
    global_since = next((s.created_at for s in subscriptions if s.workitem_id is None and not s.suspended), None)
    if not named and global_since is None:
        return [], after
    query = (WorkitemEvent.select(WorkitemEvent, Workitem).join(Workitem)
             .where(WorkitemEvent.id > after).order_by(WorkitemEvent.id).limit(MAX_EVENTS * 4))
    reports, last = [], after
    for event in query:
        last = event.id
        workitem = event.workitem
        since = named.get(workitem.id)
        wanted = since is not None or (global_since is not None and pool.visible(reviewer, workitem))
        start = since if since is not None else global_since
        if wanted and start is not None and event.created_at >= start:
            reports.append({"id": event.id, "report": ups.event_report(event, workitem.uid)})
            if len(reports) >= MAX_EVENTS:
                break
    return reports, last


def _dataset(raw: bytes) -> dict[str, Any]:
    """The one DICOM JSON data set of a request body (an object, or an array holding one); empty: ``{}``.

    Raises:
        ValueError: not JSON, or not one data set.
    """
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError("the body is not DICOM JSON") from exc
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        raise ValueError("the body is not one DICOM JSON data set")
    return parsed


def _text(dataset: Any, tag: str) -> str:
    element = dataset.get(tag) if isinstance(dataset, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]).strip() if isinstance(values, list) and values and values[0] is not None else ""
