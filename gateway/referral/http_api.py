"""``POST /referrals``: the HTTP intake path (JSON body, bearer token, the same validation as the CLI).

Answers: 201 ``{"id": <referral id>}`` when stored; 400 ``{"problems": [...]}`` when the body is not
JSON; 422 ``{"problems": [...]}`` when the document is invalid or names an unknown source (nothing is
stored then); 401 without the right token (enforced by :class:`gateway.ops.http.HttpServer`).
"""

from __future__ import annotations

import json
from http import HTTPStatus

import structlog

from gateway.models import db
from gateway.ops.http import HttpServer, Request, Response
from gateway.referral.document import validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral

__all__ = ["REFERRALS_PATH", "handle_post_referral", "register_referral_routes"]

REFERRALS_PATH = "/referrals"
log = structlog.get_logger("referral")


def handle_post_referral(request: Request) -> Response:
    """Validate and store the referral in the request body (see the module docstring for the answers)."""
    try:
        data = json.loads(request.body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
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
