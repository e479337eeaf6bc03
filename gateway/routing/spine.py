"""The spine filter: is a complete study spine imaging, judged from its ORIGINAL headers?

A study is spine when any header read says so, checked in this order:

1. BodyPartExamined (0018,0015) is one of ``routing.body_parts``;
2. an AnatomicRegionSequence (0008,2218) item carries a spine region code (SNOMED CT, or its legacy SRT
   form; PS3.16 CID 4031 "Common Anatomic Region");
3. a word of StudyDescription, SeriesDescription or ProtocolName starts with one of ``routing.keywords``.

One header per series is read (``stop_before_pixels``): descriptions and body part are series-level. The
decision's ``reason`` names the rule and the configured word that matched, never a header's value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from gateway.config import SPINE_BODY_PARTS, SPINE_KEYWORDS, RoutingConfig
from gateway.storage import cases
from gateway.storage.models import CaseState, Instance, Study, tuple_rows

log = structlog.get_logger("routing.spine")

# (coding scheme designator, code value) of spine regions: PS3.16 CID 4031 members, SNOMED CT and SRT.
SPINE_REGION_CODES: frozenset[tuple[str, str]] = frozenset({
    ("SCT", "421060004"),   # Spine
    ("SCT", "737561001"),   # Spine and/or cord
    ("SCT", "122494005"),   # Cervical spine
    ("SCT", "1217257000"),  # Cervico-thoracic spine
    ("SCT", "122495006"),   # Thoracic spine
    ("SCT", "1217256009"),  # Thoraco-lumbar spine
    ("SCT", "122496007"),   # Lumbar spine
    ("SCT", "1217253001"),  # Lumbo-sacral spine
    ("SCT", "1217254007"),  # Sacro-coccygeal spine
    ("SCT", "54735007"),    # Sacrum
    ("SCT", "64688005"),    # Coccyx
    ("SRT", "T-D04FF"),     # Spine
    ("SRT", "T-11501"),     # Cervical spine
    ("SRT", "T-11502"),     # Thoracic spine
    ("SRT", "T-11503"),     # Lumbar spine
    ("SRT", "T-11AD0"),     # Sacrum
    ("SRT", "T-11BF0"),     # Coccyx
})
_SNOMED_SCHEMES = {"SCT": "SCT", "SNM3": "SRT", "SRT": "SRT", "99SDM": "SRT"}
DESCRIPTION_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName")


@dataclass(frozen=True)
class SpineDecision:
    """Whether a study is spine, and which rule decided (``body_part:LSPINE``, ``anatomic_region:SCT``,
    ``keyword:LUMBAR``, or ``no_spine_attribute``)."""

    spine: bool
    reason: str


class SpineRules:
    """The configured body parts and keywords, compiled once."""

    def __init__(self, body_parts: Iterable[str] = SPINE_BODY_PARTS, keywords: Iterable[str] = SPINE_KEYWORDS):
        self.body_parts = frozenset(part.strip().upper() for part in body_parts if part.strip())
        words = sorted({word.strip().upper() for word in keywords if word.strip()}, key=len, reverse=True)
        self.keywords = tuple(words)
        # A keyword must start a word: "LWS" matches "LWS SAG", not "FLOWS".
        self._keyword_re = (re.compile(r"(?<![A-Z0-9])(" + "|".join(map(re.escape, words)) + ")")
                            if words else None)

    @classmethod
    def from_config(cls, routing: RoutingConfig) -> SpineRules:
        return cls(routing.body_parts, routing.keywords)

    def keyword_in(self, text: str) -> str | None:
        """The configured keyword that starts a word of ``text`` (case-insensitive), if any."""
        if self._keyword_re is None or not text:
            return None
        match = self._keyword_re.search(text.upper())
        return match.group(1) if match else None


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element counts as absent; hostile input never stops the filter
        return ""
    return "" if value is None else str(value)


def _region_codes(ds: Dataset) -> Iterable[tuple[str, str]]:
    try:
        items = ds.get("AnatomicRegionSequence") or []
        for item in items:
            scheme = _SNOMED_SCHEMES.get(str(item.get("CodingSchemeDesignator", "")).strip().upper())
            code = str(item.get("CodeValue", "") or item.get("LongCodeValue", "")).strip().upper()
            if scheme and code:
                yield scheme, code
    except Exception:  # noqa: BLE001 - see _text
        return


def is_spine(headers: Iterable[Dataset], rules: SpineRules | None = None) -> SpineDecision:
    """Decide from the headers of a study's instances (any number, any order)."""
    rules = rules or SpineRules()
    keyword_hit: str | None = None
    region_hit: str | None = None
    for ds in headers:
        body_part = _text(ds, "BodyPartExamined").strip().upper()
        if body_part and body_part in rules.body_parts:
            return SpineDecision(True, f"body_part:{body_part}")
        for scheme, code in _region_codes(ds):
            if (scheme, code) in SPINE_REGION_CODES:
                region_hit = region_hit or f"anatomic_region:{scheme}"
        for keyword in DESCRIPTION_KEYWORDS:
            keyword_hit = keyword_hit or rules.keyword_in(_text(ds, keyword))
    if region_hit:
        return SpineDecision(True, region_hit)
    if keyword_hit:
        return SpineDecision(True, f"keyword:{keyword_hit}")
    return SpineDecision(False, "no_spine_attribute")


def read_study_headers(study: Study, spool_dir: Path, per_series: int = 1) -> list[Dataset]:
    """The headers (no pixel data) of ``per_series`` original instances of each of the study's series.

    Unreadable files are skipped: the decision then rests on the others.
    """
    headers: list[Dataset] = []
    seen: dict[int, int] = {}
    query = Instance.select(Instance.series, Instance.spool_path).where(Instance.study == study).order_by(Instance.id)
    for series_id, spool_path in tuple_rows(query):
        if seen.get(series_id, 0) >= per_series:
            continue
        try:
            headers.append(pydicom.dcmread(Path(spool_dir) / spool_path, stop_before_pixels=True))
        except (OSError, InvalidDicomError, ValueError, EOFError):
            log.warning("spine_header_unreadable", case=study.key, path=spool_path)
            continue
        seen[series_id] = seen.get(series_id, 0) + 1
    return headers


class SpineFilter:
    """Moves a case that is not spine to REJECTED_NOT_SPINE; spine cases are left where they are.

    The completion stage calls :meth:`reject_if_not_spine` on each quiet RECEIVING case before it moves it
    to COMPLETE, so every COMPLETE case is spine by construction and the de-identification stage (which
    takes COMPLETE cases) never sees another: no race between two stages on one state. An operator who
    moves a rejected case back to COMPLETE overrides the filter on purpose; it is not checked again.
    """

    def __init__(self, routing: RoutingConfig, spool_dir: Path) -> None:
        self.rules = SpineRules.from_config(routing)
        self.spool_dir = Path(spool_dir)

    def decide(self, study: Study) -> SpineDecision:
        return is_spine(read_study_headers(study, self.spool_dir), self.rules)

    def reject_if_not_spine(self, study: Study) -> bool:
        """True when ``study`` was not spine and has been moved to REJECTED_NOT_SPINE."""
        decision = self.decide(study)
        if decision.spine:
            return False
        moved = cases.move(study, CaseState.REJECTED_NOT_SPINE, reason=decision.reason)
        if moved:
            log.info("case_not_spine", case=study.key, reason=decision.reason,
                     source=study.source.name if study.source is not None else None)
        return moved
