"""The elements of a dataset read from a file, passing over those a walker has no use for without decoding them.

pydicom decodes an element when it is first looked at and from then on writes it by encoding it again; an element
never looked at is written as the bytes it was read as. The de-identification worker looks for UIDs and
identifying values in every original (``deid.guard``, ``privacy.identifiers``): walking with ``for elem in
dataset`` decoded the whole header, numbers and codes included, and made the writer encode each of them again
(a third of the writing time, issue 29). Here an element still undecoded whose VR is known from the file and
is not SQ or UN (which may turn out to be a sequence or any VR once decoded) is passed over when the walker says
that element cannot interest it: its decoded form would have the same tag and VR, so nothing is missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

_DECODED_ALWAYS = frozenset({"SQ", "UN"})


def elements(dataset: Dataset, wanted: Callable[[int, str], bool]) -> Iterator[DataElement]:
    """The elements of ``dataset`` (this level only), in tag order, as ``for elem in dataset`` gives them, except
    those still undecoded, with a known VR other than SQ and UN, for which ``wanted(tag, VR)`` is False."""
    for tag in dataset.keys():
        raw = dataset.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.VR is not None and raw.VR not in _DECODED_ALWAYS \
                and not wanted(int(tag), raw.VR):
            continue
        yield dataset[tag]
