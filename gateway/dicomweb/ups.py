"""A pool workitem as DICOM JSON (PS3.18 F.2), the matching of a workitem search, and event reports.

What a workitem carries is pseudonymous by construction: it is built from the ``Workitem`` row alone (the case's
key, its pseudonymous Study Instance UID and Patient ID, what it asks of its reviewer, the SLA deadline), never from
the case's identity. The Transaction UID is never returned (PS3.4 CC.2.5.1.3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from gateway.errors import GatewayError
from gateway.storage import workitems
from gateway.storage.models import Workitem, WorkitemEvent

STATE, PRIORITY, TRANSACTION_UID, REASON = "00741000", "00741200", "00081195", "00741238"
PROGRESS = "00741002"  # UPS Progress Information Sequence: what a performer's update may carry
START, EXPECTED, EXPIRATION = "00404005", "00404011", "00404008"
# Search keys matched (keyword or tag): single values exactly, date-times as ranges (``A-B``, either end open).
MATCHED = {"ProcedureStepState": STATE, "ScheduledProcedureStepPriority": PRIORITY,
           "ScheduledProcedureStepStartDateTime": START, "ExpectedCompletionDateTime": EXPECTED,
           "ScheduledProcedureStepExpirationDateTime": EXPIRATION}
RANGES = frozenset({START, EXPECTED, EXPIRATION})
CONTROLS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
WORKLIST_LABEL = "spine-gateway second-opinion pool"
PRIVATE_SCHEME = "99SPINEGW"


class BadSearch(GatewayError):
    """A search parameter that cannot be understood (400)."""


def _value(vr: str, *values: Any) -> dict[str, Any]:
    present = [v for v in values if v not in (None, "")]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def _code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {"00080100": _value("SH", value), "00080102": _value("SH", scheme), "00080104": _value("LO", meaning)}


def datetime_value(moment: dt.datetime | None) -> str:
    return f"{moment:%Y%m%d%H%M%S}+0000" if moment is not None else ""


def as_json(workitem: Workitem, study_key: str, pseudo_study_uid: str, for_reviewer: str,
            retrieve_url: str) -> dict[str, Any]:
    """The workitem as ``for_reviewer`` sees it (its performer is named only to the reviewer who claimed it)."""
    label = f"Second opinion, spine {workitem.modalities.replace(chr(92), '/') or 'imaging'}"
    if workitem.subspecialty:
        label += f" ({workitem.subspecialty})"
    item: dict[str, Any] = {
        "00080016": _value("UI", workitems.UPS_PUSH_SOP_CLASS),
        "00080018": _value("UI", workitem.uid),
        "00100010": _value("PN"),
        "00100020": _value("LO", workitem.pseudo_patient_id),
        "00380010": _value("LO"),  # Admission ID (type 2): none
        "00404041": _value("CS", "READY"),
        START: _value("DT", datetime_value(workitem.scheduled_at)),
        EXPECTED: _value("DT", datetime_value(workitem.due_at)),
        EXPIRATION: _value("DT", datetime_value(workitem.due_at)),
        "00404018": _value("SQ", _code("SPINE-2ND-OPINION", PRIVATE_SCHEME, "Second opinion on spine imaging")),
        "00404021": _value("SQ", {"0020000D": _value("UI", pseudo_study_uid),
                                  "00081190": _value("UR", retrieve_url)}),
        "0040A370": _value("SQ", {"0020000D": _value("UI", pseudo_study_uid), "00080050": _value("SH"),
                                  "00401001": _value("SH", study_key), "00321060": _value("LO", label)}),
        STATE: _value("CS", workitem.state),
        PRIORITY: _value("CS", workitem.priority),
        "00741202": _value("LO", WORKLIST_LABEL),
        "00741204": _value("LO", label),
    }
    if workitem.state == workitems.CANCELED and workitem.cancel_reason:
        item[REASON] = _value("LT", workitem.cancel_reason)
    if workitem.claimed_by == for_reviewer and workitem.claimed_at is not None:
        performer = {"00404009": _value("SQ", _code(for_reviewer, PRIVATE_SCHEME, "Reviewer")),
                     "00404037": _value("PN")}
        item["00741216"] = _value("SQ", {"00404035": _value("SQ", performer),
                                         "00404050": _value("DT", datetime_value(workitem.claimed_at))})
    return item


class Search:
    """The matching keys, ``limit`` and ``offset`` of ``GET /workitems``; ``ignored``: keys not supported for
    matching (answered in a Warning header, as QIDO-RS asks, and otherwise ignored)."""

    def __init__(self, params: Iterable[tuple[str, str]]) -> None:
        self.match: dict[str, str] = {}
        self.ignored: list[str] = []
        self.limit: int | None = None
        self.offset = 0
        for name, value in params:
            if name in CONTROLS:
                if name in ("limit", "offset"):
                    if not value.isdigit():
                        raise BadSearch(f"{name} must be a whole number")
                    setattr(self, name, int(value))
                continue
            tag = MATCHED.get(name) or (name.upper() if name.upper() in MATCHED.values() else None)
            if tag is None:
                self.ignored.append(name[:64])
                continue
            if tag in RANGES:
                _range(value)
            self.match[tag] = value

    def matches(self, item: dict[str, Any]) -> bool:
        for tag, wanted in self.match.items():
            values = item.get(tag, {}).get("Value", [])
            have = str(values[0]) if values else ""
            if tag in RANGES:
                low, high = _range(wanted)
                if not have or (low and have[:len(low)] < low) or (high and have[:len(high)] > high):
                    return False
            elif have != wanted:
                return False
        return True

    def keep(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chosen = [item for item in items if self.matches(item)][self.offset:]
        return chosen[:self.limit] if self.limit is not None else chosen


def _range(value: str) -> tuple[str, str]:
    """``A-B`` (either end may be empty) or one value (as ``A-A``); each a DICOM DT prefix without its offset."""
    low, dash, high = value.partition("-")
    if not dash:
        high = low
    for end in (low, high):
        if end and not (end.isdigit() and 4 <= len(end) <= 14):
            raise BadSearch(f"a date-time range is YYYYMMDD[HHMMSS]-YYYYMMDD[HHMMSS], not {value[:40]!r}")
    return low, high


def event_report(event: WorkitemEvent, workitem_uid: str) -> dict[str, Any]:
    """One event as the UPS Event SOP Class reports it (PS3.18 §11.10 / PS3.4 CC.2.4.3), in DICOM JSON."""
    report: dict[str, Any] = {
        "00000002": _value("UI", workitems.UPS_EVENT_SOP_CLASS),
        "00001000": _value("UI", workitem_uid),
        "00001002": _value("US", event.event_type),
        STATE: _value("CS", event.state),
    }
    if event.event_type == workitems.STATE_REPORT:
        report["00404041"] = _value("CS", "READY")
    if event.reason:
        report[REASON] = _value("LT", event.reason)
    return report
