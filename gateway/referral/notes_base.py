"""What the two notes builders share: the validation of their arguments and the UIDs of the new object.

The notes are always built into a new series of the PSEUDONYMOUS study, copying the patient and study from
an already de-identified image of it (the evidence), never from originals.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.referral.scrub import ScrubbedNotes


def _check_uid(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    if not value or len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
        raise ValueError(f"{name} is not a valid DICOM UID")


class _NotesBuilder:
    """Validates in the constructor, before any dataset exists.

    Raises:
        TypeError: an argument of the wrong type (the message names it).
        ValueError: the evidence lacks a required attribute, a UID is malformed or equals one of the
            evidence's, or a number is not positive.
    """

    required_attributes: tuple[str, ...] = ()

    def __init__(self, evidence: Dataset, notes: ScrubbedNotes, *, series_instance_uid: str | None,
                 sop_instance_uid: str | None, series_number: int, instance_number: int,
                 manufacturer: str) -> None:
        if not isinstance(evidence, Dataset):
            raise TypeError("evidence must be a pydicom Dataset")
        if not isinstance(notes, ScrubbedNotes):
            raise TypeError("notes must be a ScrubbedNotes")
        missing = [keyword for keyword in self.required_attributes if keyword not in evidence]
        if missing:
            raise ValueError(f"evidence lacks required attribute(s): {', '.join(missing)}")
        for name, uid in (("series_instance_uid", series_instance_uid), ("sop_instance_uid", sop_instance_uid)):
            _check_uid(name, uid)
            if uid is not None and uid in (evidence.get("SeriesInstanceUID"), evidence.get("SOPInstanceUID")):
                raise ValueError(f"{name} must differ from the evidence's UIDs")
        for name, number in (("series_number", series_number), ("instance_number", instance_number)):
            if isinstance(number, bool) or not isinstance(number, int):
                raise TypeError(f"{name} must be an int")
            if number < 1:
                raise ValueError(f"{name} must be positive")
        if not isinstance(manufacturer, str) or not manufacturer:
            raise TypeError("manufacturer must be a non-empty str")
        self._evidence = evidence
        self._notes = notes
        self._series_instance_uid = series_instance_uid or generate_uid(prefix=None)
        self._sop_instance_uid = sop_instance_uid or generate_uid(prefix=None)
        self._series_number = series_number
        self._instance_number = instance_number
        self._manufacturer = manufacturer
