"""``POST /referrals``: the HTTP intake path (JSON body, bearer token, the same validation as the CLI).

Answers: 201 ``{"id": <referral id>}`` when stored; 400 ``{"problems": [...]}`` when the body is not
JSON (or nests deeper than Python's parser goes, or holds a number of more than :data:`MAX_NUMBER_CHARS`
characters, NaN or Infinity: hostile shapes that must answer 4xx, never 500); 413 past ``http.max_body_bytes``
(checked by the server before this handler); 422 ``{"problems": [...]}`` when the document is invalid or names an
unknown source (nothing is
stored then); 401 without the right token (enforced by :class:`gateway.ops.http.HttpServer`).
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus

import structlog

from gateway.ops.http import HttpServer, Request, Response
from gateway.referral.document import validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral
from gateway.storage.models import db

__all__ = ["REFERRALS_PATH", "handle_post_referral", "register_referral_routes"]

REFERRALS_PATH = "/referrals"
MAX_NUMBER_CHARS = 32  # no field of a referral needs a longer number; int() of 5,000 digits raises ValueError
log = structlog.get_logger("referral")


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


def handle_post_referral(request: Request) -> Response:
    """Validate and store the referral in the request body (see the module docstring for the answers)."""
    try:
        data = parse_json_body(request.body)
    except _RefusedNumber as exc:
        return Response.json(HTTPStatus.BAD_REQUEST, {"problems": [f"<document>: {exc}"]})
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return Response.json(HTTPStatus.BAD_REQUEST, {"problems": ["<document>: not valid JSON"]})
    try:
        referral = validate_referral_data(data)
        with db.connection_context():
            row = store_referral(referral, "http")
    except ReferralValidationError as exc:
        log.info("referral_refused", reason="http", count=len(exc.problems))
        return Response.json(HTTPStatus.UNPROCESSABLE_ENTITY, {"problems": exc.problems})
    return Response.json(HTTPStatus.CREATED, {"id": row.id, "state": row.state})


def register_referral_routes(server: HttpServer) -> None:
    """Serve ``POST /referrals`` (authenticated) on ``server``."""
    server.add_route("POST", REFERRALS_PATH, handle_post_referral, auth=True)
