"""The DICOMweb endpoints under ``/dicomweb``, for the node's one HTTP application.

Every request is authenticated from its headers (:func:`gateway.dicomweb.access.caller_of`) before anything else
and before any body is read; a UID in the path that is not a UID answers 404 at once. The work (database, spool)
runs in a worker thread inside a database connection; what is served is audited (:class:`AccessTrail`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import peewee
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.config import GatewayConfig
from gateway.dicomweb import qido, stow, wado
from gateway.dicomweb.access import (
    AccessTrail,
    Caller,
    caller_of,
    refusal,
    reportable_case,
    visible_case,
    visible_cases,
)
from gateway.dicomweb.objects import CaseObjects, Served
from gateway.dicomweb.worklist import Worklist
from gateway.http.api import BodyRefused, closing, read_body
from gateway.stages.context import NodeContext
from gateway.storage.models import Study
from gateway.storage.spool import Spool

log = structlog.get_logger("dicomweb")
PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_PARAMS = ("study", "series", "instance")

Work = Callable[[Caller, Request], Response]


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type=DICOM_JSON, headers=NO_STORE)


def _not_found(what: str = "no such study, series or instance") -> Response:
    return refusal(HTTPStatus.NOT_FOUND, what)


class DicomWeb:
    """The endpoints (see the module docstring); ``routes()`` hands them to the HTTP application."""

    def __init__(self, config: GatewayConfig, spool: Spool, database: peewee.Database | peewee.DatabaseProxy,
                 trail: AccessTrail | None = None, worklist: Worklist | None = None) -> None:
        self.config = config
        self.database = database
        self.spool = spool
        self.trail = trail or AccessTrail()
        self.worklist = worklist

    # --- plumbing -------------------------------------------------------------------------------------------

    def _endpoint(self, work: Work, template: str) -> Callable[[Request], Awaitable[Response]]:
        """``work`` behind the caller's authentication; a failure is logged with the route's ``template``,
        never the request's path (its UIDs are a user's: possibly an original study's)."""
        @functools.wraps(work)
        async def endpoint(request: Request) -> Response:
            caller = await caller_of(request, self.config, self.database)
            if isinstance(caller, Response):
                return closing(caller, request)
            if not all(_UID.fullmatch(str(request.path_params[name])) and len(str(request.path_params[name])) <= 64
                       for name in UID_PARAMS if name in request.path_params):
                return closing(_not_found(), request)
            try:
                return await run_in_threadpool(self._run, work, caller, request)
            except Exception as exc:  # noqa: BLE001 - the edge: one line naming the type only (no PHI)
                log.error("dicomweb_failed", error=type(exc).__name__, reason=template, reviewer=caller.reviewer)
                return refusal(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

        return endpoint

    def _run(self, work: Work, caller: Caller, request: Request) -> Response:
        with self.database.connection_context():
            return work(caller, request)

    def _case(self, caller: Caller, request: Request, instance: str | None = None) -> CaseObjects | None:
        study = visible_case(caller.reviewer, str(request.path_params["study"]))
        return CaseObjects(study, self.spool, instance) if study is not None else None

    @staticmethod
    def _url(request: Request) -> Callable[..., str]:
        base = str(request.base_url).rstrip("/") + PREFIX

        def url(study: str, series: str | None = None, instance: str | None = None) -> str:
            path = f"{base}/studies/{study}"
            if series is not None:
                path += f"/series/{series}"
            if instance is not None:
                path += f"/instances/{instance}"
            return path

        return url

    @staticmethod
    def _query(request: Request) -> qido.Query | Response:
        try:
            return qido.Query(request.query_params.multi_items())
        except qido.BadQuery as exc:
            return refusal(HTTPStatus.BAD_REQUEST, str(exc))

    def _selected(self, caller: Caller, request: Request) -> tuple[CaseObjects, list[Served]] | Response:
        """The case and the objects a WADO path names (the study, a series, or one instance), or 404."""
        params = request.path_params
        case = self._case(caller, request, str(params["instance"]) if "instance" in params else None)
        if case is None:
            return _not_found()
        if "instance" in params:
            served = case.instance(str(params["series"]), str(params["instance"]))
            return (case, [served]) if served is not None else _not_found()
        objects = case.series(str(params["series"])) if "series" in params else case.objects
        return (case, objects) if objects else _not_found()

    # --- QIDO-RS ----------------------------------------------------------------------------------------------

    def search_studies(self, caller: Caller, request: Request) -> Response:
        query = self._query(request)
        if isinstance(query, Response):
            return query
        url = self._url(request)
        results = [r for r in (qido.study_result(CaseObjects(study, self.spool), query, url)
                               for study in visible_cases(caller.reviewer)) if r is not None]
        chosen = query.keep(results)
        self.trail.searched(caller, "studies", len(chosen))
        return _json(chosen)

    def search_series(self, caller: Caller, request: Request) -> Response:
        query = self._query(request)
        if isinstance(query, Response):
            return query
        url = self._url(request)
        if "study" in request.path_params:
            case = self._case(caller, request)
            if case is None:
                return _not_found()
            chosen = query.keep(qido.series_results(case, query, url))
            self.trail.searched(caller, "series", len(chosen), case.study)
            return _json(chosen)
        results = [r for study in visible_cases(caller.reviewer)
                   for r in qido.series_results(CaseObjects(study, self.spool), query, url)]
        chosen = query.keep(results)
        self.trail.searched(caller, "series", len(chosen))
        return _json(chosen)

    def search_instances(self, caller: Caller, request: Request) -> Response:
        query = self._query(request)
        if isinstance(query, Response):
            return query
        url = self._url(request)
        params = request.path_params
        if "study" not in params:
            results = []
            for study in visible_cases(caller.reviewer):
                case = CaseObjects(study, self.spool)
                results.extend(qido.instance_results(case, case.objects, query, url))
            chosen = query.keep(results)
            self.trail.searched(caller, "instances", len(chosen))
            return _json(chosen)
        found = self._case(caller, request)
        if found is None:
            return _not_found()
        case = found
        members = case.series(str(params["series"])) if "series" in params else case.objects
        if "series" in params and not members:
            return _not_found()
        chosen = query.keep(qido.instance_results(case, members, query, url))
        self.trail.searched(caller, "instances", len(chosen), case.study)
        return _json(chosen)

    # --- WADO-RS ----------------------------------------------------------------------------------------------

    def retrieve(self, caller: Caller, request: Request) -> Response:
        selected = self._selected(caller, request)
        if isinstance(selected, Response):
            return selected
        case, objects = selected
        try:
            wado.check_acceptable(objects, request.headers.get("accept", ""))
        except wado.NotAcceptable as exc:
            return refusal(HTTPStatus.NOT_ACCEPTABLE, str(exc))
        if "instance" in request.path_params and wado.single_part(request.headers.get("accept", "")):
            # a viewer loading a series instance by instance: audited as frames are, once in a while per series
            self.trail.retrieved(caller, case.study, "instances one at a time", 1,
                                 repeat_key=f"instance:{objects[0].series_uid}")
            return Response(case.part10(objects[0]), media_type="application/dicom", headers=NO_STORE)
        self.trail.retrieved(caller, case.study, _level(request), len(objects))
        mark = wado.boundary()
        return StreamingResponse(wado.multipart_instances(case, objects, mark), headers=NO_STORE,
                                 media_type=f'multipart/related; type="application/dicom"; boundary={mark}')

    def metadata(self, caller: Caller, request: Request) -> Response:
        selected = self._selected(caller, request)
        if isinstance(selected, Response):
            return selected
        case, objects = selected
        self.trail.retrieved(caller, case.study, f"{_level(request)} metadata", len(objects))
        return _json(wado.metadata(case, objects))

    def frames(self, caller: Caller, request: Request) -> Response:
        selected = self._selected(caller, request)
        if isinstance(selected, Response):
            return selected
        case, (served,) = selected
        try:
            numbers = wado.frame_numbers(str(request.path_params["frames"]))
            frames = wado.frames_of(case.dataset(served), numbers)
        except wado.BadFrames as exc:
            return refusal(exc.status, str(exc))
        self.trail.retrieved(caller, case.study, "frames", 1, repeat_key=f"frames:{served.series_uid}")
        mark = wado.boundary()
        return Response(wado.multipart_frames(frames, mark), headers=NO_STORE,
                        media_type=f'multipart/related; type="application/octet-stream"; boundary={mark}')

    def rendered(self, caller: Caller, request: Request) -> Response:
        selected = self._selected(caller, request)
        if isinstance(selected, Response):
            return selected
        case, (served,) = selected
        try:
            media_type = wado.rendered_type(request.headers.get("accept", ""))
            frame = wado.frame_numbers(str(request.path_params.get("frames", "1")))
            quality = request.query_params.get("quality")
            if quality is not None and (not quality.isdigit() or not 1 <= int(quality) <= 100):
                raise wado.BadFrames("quality is 1 to 100", 400)
            image = wado.rendered(case.dataset(served), frame[0], media_type, request.query_params.get("window"),
                                  int(quality) if quality else None)
        except wado.NotAcceptable as exc:
            return refusal(HTTPStatus.NOT_ACCEPTABLE, str(exc))
        except wado.BadFrames as exc:
            return refusal(exc.status, str(exc))
        self.trail.retrieved(caller, case.study, "rendered", 1, repeat_key=f"rendered:{served.series_uid}")
        return Response(image, media_type=media_type, headers=NO_STORE)

    # --- STOW-RS ----------------------------------------------------------------------------------------------

    async def stow(self, request: Request) -> Response:
        """Authenticated and the study (if named) checked before the body is read; then the parts are C-STOREd
        to the node's own SCP as the caller's reviewer (:mod:`gateway.dicomweb.stow`)."""
        caller = await caller_of(request, self.config, self.database)
        if isinstance(caller, Response):
            return closing(caller, request)
        study_uid = request.path_params.get("study")
        if study_uid is not None:
            if await run_in_threadpool(self._visible, caller, str(study_uid)) is None:
                return closing(_not_found(), request)
        try:
            body = await read_body(request, self.config.http.max_body_bytes)
            parts = stow.parts_of(request.headers.get("content-type", ""), body)
        except BodyRefused as exc:
            return closing(refusal(exc.status, "bad or too large body"), request)
        except ClientDisconnect:
            return refusal(HTTPStatus.REQUEST_TIMEOUT, "the body did not arrive in time")
        except stow.BadStow as exc:
            return refusal(exc.status_code, str(exc))
        try:
            return await run_in_threadpool(self._stow, caller, request, parts, study_uid)
        except Exception as exc:  # noqa: BLE001 - the edge: one line naming the type only (no PHI)
            log.error("dicomweb_failed", error=type(exc).__name__, reason="stow", reviewer=caller.reviewer)
            return refusal(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def _visible(self, caller: Caller, study_uid: str) -> Study | None:
        with self.database.connection_context():
            return reportable_case(caller.reviewer, study_uid) if _UID.fullmatch(study_uid) else None

    def _stow(self, caller: Caller, request: Request, parts: list[bytes], study_uid: str | None) -> Response:
        reviewer = next((r for r in self.config.reviewers if r.name == caller.reviewer), None)
        if reviewer is None:
            return refusal(HTTPStatus.UNAUTHORIZED, "the reviewer is no longer configured")
        try:
            outcomes = stow.store(parts, reviewer.ae_title, self.config, study_uid)
        except stow.ReportBuildError:
            log.error("dicomweb_stow_unreachable", reviewer=caller.reviewer)
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, "the node's DICOM port did not answer; send it again")
        url = self._url(request)(study_uid) if study_uid else str(request.base_url).rstrip("/") + PREFIX + "/studies"
        code, answer = stow.response(outcomes, url)
        log.info("dicomweb_stored", reviewer=caller.reviewer, status=code, instances=len(outcomes))
        return _json(answer, code)

    # --- routes -------------------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        p = PREFIX
        instance = f"{p}/studies/{{study}}/series/{{series}}/instances/{{instance}}"
        get: list[tuple[str, Work]] = [
            (f"{p}/studies", self.search_studies),
            (f"{p}/series", self.search_series),
            (f"{p}/instances", self.search_instances),
            (f"{p}/studies/{{study}}", self.retrieve),
            (f"{p}/studies/{{study}}/metadata", self.metadata),
            (f"{p}/studies/{{study}}/series", self.search_series),
            (f"{p}/studies/{{study}}/instances", self.search_instances),
            (f"{p}/studies/{{study}}/series/{{series}}", self.retrieve),
            (f"{p}/studies/{{study}}/series/{{series}}/metadata", self.metadata),
            (f"{p}/studies/{{study}}/series/{{series}}/instances", self.search_instances),
            (instance, self.retrieve),
            (f"{instance}/metadata", self.metadata),
            (f"{instance}/rendered", self.rendered),
            (f"{instance}/frames/{{frames}}", self.frames),
            (f"{instance}/frames/{{frames}}/rendered", self.rendered),
        ]
        routes: list[BaseRoute] = [Route(path, self._endpoint(work, path), methods=["GET"]) for path, work in get]
        routes += [Route(f"{p}/studies", self.stow, methods=["POST"]),
                   Route(f"{p}/studies/{{study}}", self.stow, methods=["POST"])]
        if self.worklist is not None:
            routes += self.worklist.routes()
        return routes


def _level(request: Request) -> str:
    params = request.path_params
    return "instance" if "instance" in params else "series" if "series" in params else "study"


def dicomweb_routes(config: GatewayConfig, spool: Spool, context: NodeContext) -> list[BaseRoute]:
    """The DICOMweb routes, for :func:`gateway.http.app.build_application`."""
    return DicomWeb(config, spool, context.database, worklist=Worklist(config, context, PREFIX)).routes()
