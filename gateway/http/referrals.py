"""``POST /referrals`` (the HTTP intake path) and ``GET /referrals/schema`` (the referral's JSON Schema).

``POST /referrals`` takes a JSON body with the bearer token and validates and stores it as the CLI does
(:func:`gateway.referral.document.validate_referral_data`, :func:`gateway.referral.intake.store_referral`).
Answers: 201 ``{"id": <referral id>, "state": ...}`` when stored; 400 ``{"problems": [...]}`` when the body is
not JSON (or nests deeper than Python's parser goes, or holds a number of more than :data:`MAX_NUMBER_CHARS`
characters, NaN or Infinity: hostile shapes that must answer 4xx, never 500); 413 past ``http.max_body_bytes``
(refused by its Content-Length before the body is read, or as soon as a chunked body passes it); 422
``{"problems": [...]}`` when the document is invalid or names an unknown source (nothing is stored then); 401
without the right token and 503 when no token is configured, both decided before the body is read
(:class:`gateway.http.api.BearerToken`).
"""

from __future__ import annotations

import functools
import json
import math
from http import HTTPStatus
from typing import Any

import peewee
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.http.api import (
    NO_STORE,
    BearerToken,
    BodyRefused,
    answer,
    authenticated,
    closing,
    logged_failures,
    read_body,
)
from gateway.referral.document import Referral, validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral

__all__ = ["REFERRALS_PATH", "SCHEMA_PATH", "parse_json_body", "referral_routes", "referral_schema"]

REFERRALS_PATH = "/referrals"
SCHEMA_PATH = "/referrals/schema"
MAX_NUMBER_CHARS = 32  # no field of a referral needs a longer number; int() of 5,000 digits raises ValueError
Database = peewee.Database | peewee.DatabaseProxy
log = structlog.get_logger("referral")


def referral_routes(token: BearerToken, max_body_bytes: int, database: Database) -> list[Route]:
    """``POST /referrals`` behind ``token`` with bodies up to ``max_body_bytes``, stored in ``database``, and
    the schema (open)."""

    async def post_referral(request: Request) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
        except BodyRefused as refused:
            return closing(answer({"error": str(refused)}, refused.status), request)
        except ClientDisconnect:  # gone, or past the body deadline (answered 408 by the protocol layer)
            return answer({"error": "request body not received"}, HTTPStatus.REQUEST_TIMEOUT)
        status, payload = await run_in_threadpool(take_referral, body, database)
        return answer(payload, status)

    guarded = logged_failures(authenticated(post_referral, token), REFERRALS_PATH)
    return [Route(REFERRALS_PATH, guarded, methods=["POST"]),
            Route(SCHEMA_PATH, get_schema, methods=["GET"])]


class _RefusedNumber(ValueError):
    """A JSON number too long to be a referral's, or NaN/Infinity."""


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _RefusedNumber("number too long")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _RefusedNumber("number too long")
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedNumber("number out of range")
    return value


def _no_constant(_text: str) -> float:
    raise _RefusedNumber("NaN and Infinity are not JSON")


def parse_json_body(body: bytes) -> object:
    """The body as JSON, with numbers bounded and nesting bounded by the parser's recursion limit.

    Raises:
        ValueError: not UTF-8 JSON, too deeply nested, or a number refused (:data:`MAX_NUMBER_CHARS`).
    """
    try:
        return json.loads(body.decode("utf-8-sig"), parse_int=_bounded_int, parse_float=_bounded_float,
                          parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def take_referral(body: bytes, database: Database) -> tuple[int, dict[str, Any]]:
    """Parse, validate and store the referral in ``body``: the status and the JSON answer (module docstring).
    Run in a worker thread: it parses and writes to the database."""
    try:
        data = parse_json_body(body)
    except _RefusedNumber as exc:
        return HTTPStatus.BAD_REQUEST, {"problems": [f"<document>: {exc}"]}
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return HTTPStatus.BAD_REQUEST, {"problems": ["<document>: not valid JSON"]}
    try:
        referral = validate_referral_data(data)
        with database.connection_context():
            row = store_referral(referral, "http")
    except ReferralValidationError as exc:
        log.info("referral_refused", reason="http", count=len(exc.problems))
        return HTTPStatus.UNPROCESSABLE_ENTITY, {"problems": exc.problems}
    return HTTPStatus.CREATED, {"id": row.id, "state": row.state}


@functools.cache
def referral_schema() -> dict[str, Any]:
    """The JSON Schema of the referral document, generated from the pydantic model that validates it."""
    schema = Referral.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "spine-gateway referral"
    schema["description"] = ("A referral for a second opinion on spine imaging, as POST /referrals, "
                             "`spine-gateway referral add` and the portal's form take it (docs/referrals.md). "
                             "patient.name is in DICOM form, Family^Given. Unknown keys are refused.")
    return schema


async def get_schema(_request: Request) -> Response:
    return JSONResponse(referral_schema(), media_type="application/schema+json", headers=NO_STORE)
