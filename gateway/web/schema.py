"""``GET /referrals/schema``: the JSON Schema of the referral document, generated from its pydantic model."""

from __future__ import annotations

import functools
from http import HTTPStatus
from typing import Any

from gateway.ops.http import Request, Response
from gateway.referral.document import Referral

SCHEMA_PATH = "/referrals/schema"


@functools.cache
def referral_schema() -> dict[str, Any]:
    schema = Referral.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "spine-gateway referral"
    schema["description"] = ("A referral for a second opinion on spine imaging, as POST /referrals, "
                             "`spine-gateway referral add` and the portal's form take it (docs/referrals.md). "
                             "patient.name is in DICOM form, Family^Given. Unknown keys are refused.")
    return schema


def handle_schema(_request: Request) -> Response:
    return Response.json(HTTPStatus.OK, referral_schema(), {"Content-Type": "application/schema+json"})
