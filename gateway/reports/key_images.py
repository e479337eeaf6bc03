"""A report's key images as thumbnails for the hospital's copy of its PDF, drawn from the node's
de-identified copy of the case: the reviewer's SR references them by their pseudonymous UIDs, which are the
case's outbound images. Nothing here draws from an original (the one copy a reviewer could ever have seen is
the de-identified one, and it is the one that goes home in the PDF).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
import pydicom.errors
from pydicom.dataset import Dataset

from gateway.dicom import render
from gateway.storage.models import OutboundObject, Study
from gateway.storage.spool import Spool

MAX_KEY_IMAGES = 12  # on the hospital's copy; the SR keeps them all


@dataclass(frozen=True)
class KeyImageThumbnail:
    place: str  # "series 3, image 12"
    jpeg: bytes


def referenced_images(container: Dataset) -> list[str]:
    """The SOP Instance UIDs the IMAGE items under ``container`` reference, in document order, once each."""
    return list(dict.fromkeys(_references(container)))


def _references(container: Dataset) -> Iterator[str]:
    for item in container.get("ContentSequence", []):
        if item.get("ValueType") == "IMAGE":
            for reference in item.get("ReferencedSOPSequence", []):
                if reference.get("ReferencedSOPInstanceUID"):
                    yield str(reference.ReferencedSOPInstanceUID)
        yield from _references(item)


def key_image_thumbnails(study: Study, spool: Spool, report: Dataset) -> tuple[KeyImageThumbnail, ...]:
    """Thumbnails of the key images ``report`` (the reviewer's SR, pseudonymous) references, from the case's
    de-identified images; an image the case has not, or that cannot be drawn, is left out."""
    thumbnails = []
    for uid in referenced_images(report)[:MAX_KEY_IMAGES]:
        copy = OutboundObject.get_or_none((OutboundObject.study == study) & (OutboundObject.kind == "image")
                                          & (OutboundObject.sop_instance_uid == uid))
        if copy is None:
            continue
        try:
            dataset = pydicom.dcmread(spool.absolute(copy.spool_path))
            jpeg = render.thumbnail_jpeg(dataset)
        except (OSError, ValueError, RuntimeError, NotImplementedError, pydicom.errors.InvalidDicomError):
            continue
        place = f"series {dataset.get('SeriesNumber', '?')}, image {dataset.get('InstanceNumber', '?')}"
        thumbnails.append(KeyImageThumbnail(place, jpeg))
    return tuple(thumbnails)
