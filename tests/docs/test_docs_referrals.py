"""docs/referrals.md documents every field of the referral schema: the test walks the pydantic model (so a field
added to ``gateway.referral.document.Referral`` fails here until its row is written)."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from gateway.referral.document import Referral

DOC = Path(__file__).resolve().parents[2] / "docs" / "referrals.md"


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``X | None``, ``list[X]``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]
    return []


def schema_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field of ``model`` as a dotted path (``patient.address.street``)."""
    paths = []
    for name, field in model.model_fields.items():
        nested = _models_in(field.annotation)
        if nested:
            paths += [path for inner in nested for path in schema_fields(inner, f"{prefix}{name}.")]
        else:
            paths.append(f"{prefix}{name}")
    return paths


def documented_fields() -> set[str]:
    """The backticked paths in the first column of the "Fields" table of docs/referrals.md."""
    section = DOC.read_text().split("## Fields", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_.]+)`", row.split("|")[1])}


def test_the_walk_sees_nested_fields():
    fields = schema_fields(Referral)
    assert {"patient.address.postcode", "clinical.pain.intensity", "referrer.contact", "study_date"} <= set(fields)
    assert "patient.address" not in fields


def test_every_field_of_the_referral_schema_is_documented():
    missing = [path for path in schema_fields(Referral) if path not in documented_fields()]
    assert not missing, f"docs/referrals.md does not document: {', '.join(missing)}"
