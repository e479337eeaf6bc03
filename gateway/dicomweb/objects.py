"""The objects DICOMweb serves of a case: exactly those the delivery stage sends its reviewer, as it sends them.

The de-identified images and the notes SR and PDF (``OutboundObject`` rows of the case, never a re-identified
report, never an original: originals have no outbound row), read from the same spool files the delivery stage
reads, with the notes stage's reason written into each image as the delivery writes it
(:func:`gateway.routing.send.part10_as_sent`). Headers are read once per file and kept (an outbound file is never
rewritten under the same digest).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from gateway.dicom.rawedit import fits_charset
from gateway.routing.send import part10_as_sent
from gateway.storage.models import OutboundObject, Study
from gateway.storage.spool import Spool

REPORT_KIND = "report"  # a re-identified report: PHI, goes to the source only (as in gateway.stages.deliver)
HEADER_CACHE = 20_000   # headers kept (a few kilobytes each: about 100 MB at most)


@dataclass(frozen=True)
class Served:
    """One object of a case as served: its row and its header (as sent: the reason included, no pixel data)."""

    row: OutboundObject
    header: Dataset

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def sop_instance_uid(self) -> str:
        return str(self.row.sop_instance_uid)

    @property
    def transfer_syntax(self) -> str:
        return str(self.row.transfer_syntax)


class CaseObjects:
    """What the reviewer of ``study`` is served of it (call inside a database connection)."""

    def __init__(self, study: Study, spool: Spool, sop_instance_uid: str | None = None) -> None:
        """All the case's objects, or only the one ``sop_instance_uid`` names (a frame, a rendered image: one
        row read, not the whole study's)."""
        self.study = study
        self.spool = spool
        which = (OutboundObject.study == study) & (OutboundObject.kind != REPORT_KIND)
        if sop_instance_uid is not None:
            which &= OutboundObject.sop_instance_uid == sop_instance_uid
        rows = OutboundObject.select().where(which).order_by(OutboundObject.id)
        self.objects = [Served(row, self._header(row)) for row in rows]
        self.objects.sort(key=_order)

    def _reason(self, row: OutboundObject) -> str | None:
        return self.study.notes_reason if row.kind == "image" else None

    def _header(self, row: OutboundObject) -> Dataset:
        return _cached_header(str(self.spool.absolute(row.spool_path)), row.sha256, self._reason(row))

    def part10(self, served: Served) -> bytes:
        """The object's Part 10 bytes as the delivery stage sends them (see the module docstring)."""
        data = self.spool.absolute(served.row.spool_path).read_bytes()
        return part10_as_sent(data, served.transfer_syntax, self._reason(served.row))

    def dataset(self, served: Served) -> Dataset:
        """The whole object as sent, decoded (for frames and rendered images)."""
        import io

        return pydicom.dcmread(io.BytesIO(self.part10(served)))

    def series(self, series_uid: str) -> list[Served]:
        return [o for o in self.objects if o.series_uid == series_uid]

    def instance(self, series_uid: str, sop_instance_uid: str) -> Served | None:
        return next((o for o in self.objects if o.series_uid == series_uid
                     and o.sop_instance_uid == sop_instance_uid), None)

    def series_uids(self) -> Iterator[str]:
        return iter(dict.fromkeys(o.series_uid for o in self.objects))


def _order(served: Served) -> tuple[int, int, int]:
    def number(keyword: str) -> int:
        value = served.header.get(keyword)
        try:
            return int(value) if value not in (None, "") else 1 << 30
        except (TypeError, ValueError):
            return 1 << 30

    return number("SeriesNumber"), number("InstanceNumber"), served.row.id


@functools.lru_cache(maxsize=HEADER_CACHE)
def _cached_header(path: str, sha256: str, reason: str | None) -> Dataset:
    """The header of the file at ``path`` as sent: read up to the pixel data, with ``reason`` in (0040,1002) as
    the delivery writes it (the same value; ``sha256`` and ``reason`` are in the key: a new object or another
    reason is another entry). Only the header is read: a study's first search does not read its pixels."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    if reason is not None:
        header.ReasonForTheRequestedProcedure = fits_charset(reason, header.get("SpecificCharacterSet"))
    return header
