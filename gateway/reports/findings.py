"""The findings file of ``spine-gateway report create``: what the reviewer writes, validated.

YAML (or JSON, which is YAML)::

    title: mri-spine            # optional: mri-spine (18756-7), mri, ct, imaging; default from the modality
    observer: "Reviewer^Ann"    # optional: the reporting physician (DICOM PN, Family^Given); makes it VERIFIED
    organization: "Spine Review Partners"   # optional, with observer
    clinical_information: "Low back pain radiating to the left leg."          # optional
    findings:                   # at least one
      - text: "L4-L5 left paracentral disc extrusion compressing the L5 root."
        images: [7, "2.25.1234..."]   # key images: Instance Number, or pseudonymous SOP Instance UID
    impressions: ["L4-L5 disc extrusion with left L5 root compression."]     # at least one (or one string)
    recommendations: ["Surgical opinion."]                                    # optional

Instance numbers are looked up among the case's de-identified images; a number that matches more than one
image (several series) must be given as a SOP Instance UID instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from gateway.reports.codes import TITLES
from gateway.reports.errors import FindingsError

_TEXT_MAX = 10000


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


Paragraphs = Annotated[list[Annotated[str, Field(min_length=1, max_length=_TEXT_MAX)]], BeforeValidator(_as_list)]


class Finding(BaseModel):
    """One finding and the key images it is inferred from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=_TEXT_MAX)
    images: list[int | str] = Field(default_factory=list)

    @field_validator("images")
    @classmethod
    def _image_refs(cls, values: list[int | str]) -> list[int | str]:
        for value in values:
            if isinstance(value, int) and value < 1:
                raise ValueError("an instance number must be 1 or more")
            if isinstance(value, str) and not _looks_like_uid(value):
                raise ValueError("must be an instance number or a SOP Instance UID")
        return values


class FindingsDocument(BaseModel):
    """The whole findings file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = None
    observer: str | None = Field(None, min_length=1, max_length=64)
    organization: str | None = Field(None, min_length=1, max_length=64)
    clinical_information: str | None = Field(None, min_length=1, max_length=_TEXT_MAX)
    findings: list[Finding] = Field(min_length=1)
    impressions: Paragraphs = Field(min_length=1)
    recommendations: Paragraphs = Field(default_factory=list)

    @field_validator("title")
    @classmethod
    def _known_title(cls, value: str | None) -> str | None:
        if value is not None and value not in TITLES:
            raise ValueError(f"must be one of {', '.join(TITLES)}")
        return value


def _looks_like_uid(value: str) -> bool:
    parts = value.split(".")
    return 0 < len(value) <= 64 and len(parts) > 1 and all(p.isdigit() and (p == "0" or p[0] != "0") for p in parts)


def parse_findings(text: str, where: str = "findings") -> FindingsDocument:
    """Validate a findings document.

    Raises:
        FindingsError: one line naming the file and every wrong key.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FindingsError(f"{where}: not valid YAML or JSON{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(data, dict):
        raise FindingsError(f"{where}: the top level must be a mapping (findings, impressions, ...)")
    try:
        return FindingsDocument.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = ".".join(str(p) for p in error["loc"]) or "(top level)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{path}: {message}")
        raise FindingsError(f"{where}: {'; '.join(problems)}") from None


def load_findings(path: Path) -> FindingsDocument:
    """Read and validate the findings file at ``path``.

    Raises:
        FindingsError: unreadable or invalid (one line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise FindingsError(f"{path}: cannot read the findings file ({type(exc).__name__})") from None
    return parse_findings(text, str(path))
