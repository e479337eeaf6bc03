"""Decide whether an object may carry identifiers in its pixels or document body."""

from __future__ import annotations

from pydicom import uid
from pydicom.dataset import Dataset

from gateway.deid.errors import BurnedInRiskError
from gateway.deid.options import BlankRegion, OcrOptions

# SOP classes whose content is a picture of a screen, a scanned page or a document body.
RISKY_SOP_CLASSES: dict[str, str] = {
    uid.SecondaryCaptureImageStorage: "secondary capture",
    uid.MultiFrameSingleBitSecondaryCaptureImageStorage: "secondary capture",
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "secondary capture",
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "secondary capture",
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage: "secondary capture",
    uid.UltrasoundImageStorage: "ultrasound",
    uid.UltrasoundMultiFrameImageStorage: "ultrasound",
    "1.2.840.10008.5.1.4.1.1.6": "ultrasound (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "ultrasound (retired)",
    "1.2.840.10008.5.1.4.1.1.3.1": "ultrasound (retired)",
    uid.EncapsulatedPDFStorage: "encapsulated PDF",
    uid.EncapsulatedCDAStorage: "encapsulated CDA",
    uid.VLPhotographicImageStorage: "photograph",
    uid.VideoEndoscopicImageStorage: "video",
    uid.VideoMicroscopicImageStorage: "video",
    uid.VideoPhotographicImageStorage: "video",
}
RISKY_MODALITIES = {"US": "ultrasound", "OT": "modality OT", "DOC": "scanned document", "SC": "secondary capture"}
RISKY_IMAGE_TYPE_WORDS = {"SCREEN SAVE": "screen save", "DOSE_INFO": "dose screen", "DOSE INFO": "dose screen"}
RISKY_SERIES_WORDS = {"DOSE REPORT": "dose report", "DOSE INFO": "dose screen", "SCREEN SAVE": "screen capture"}
RISKY_CONVERSION_TYPES = {"SD": "scanned document", "SI": "scanned image", "WSD": "workstation capture"}


def burned_in_risk(dataset: Dataset) -> str | None:
    """The reason this object may carry burned-in identifiers, or None if no sign of it was found."""
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    sop_class = str(dataset.get("SOPClassUID", "")).strip()
    if sop_class in RISKY_SOP_CLASSES:
        return f"SOP class: {RISKY_SOP_CLASSES[sop_class]}"
    modality = str(dataset.get("Modality", "")).strip().upper()
    if modality in RISKY_MODALITIES:
        return f"Modality: {RISKY_MODALITIES[modality]}"
    conversion = str(dataset.get("ConversionType", "")).strip().upper()
    if conversion in RISKY_CONVERSION_TYPES:
        return f"ConversionType: {RISKY_CONVERSION_TYPES[conversion]}"
    image_type = "\\".join(str(value) for value in _as_list(dataset.get("ImageType"))).upper()
    for word, reason in RISKY_IMAGE_TYPE_WORDS.items():
        if word in image_type:
            return f"ImageType: {reason}"
    series = str(dataset.get("SeriesDescription", "") or "").upper()
    for word, reason in RISKY_SERIES_WORDS.items():
        if word in series:
            return f"SeriesDescription: {reason}"
    return None


def ocr_reason(dataset: Dataset, options: OcrOptions) -> str | None:
    """Why the pixels of this object are read by OCR (``burned_in: ocr``), or None when they are not.

    Read: any image that shows a sign of burned-in text (:func:`burned_in_risk`), and every image of the
    modalities in ``options.modalities`` unless it says BurnedInAnnotation NO (and ``trust_burned_in_no``).
    """
    if "PixelData" not in dataset:
        return None
    risk = burned_in_risk(dataset)
    if risk is not None:
        return risk
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    if modality not in options.modalities:
        return None
    flag = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "NO" and options.trust_burned_in_no:
        return None
    return f"Modality: {modality}, BurnedInAnnotation {flag or 'absent'}"


def check_burned_in(dataset: Dataset) -> None:
    """Raise :class:`BurnedInRiskError` when :func:`burned_in_risk` finds a reason."""
    reason = burned_in_risk(dataset)
    if reason is not None:
        raise BurnedInRiskError(reason)


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[call-overload]  # a MultiValue, matched by name
    return [value]


def blank_region_for(dataset: Dataset, regions: tuple[BlankRegion, ...]) -> BlankRegion | None:
    """The configured region of this device and image size, if any (and only for objects with pixels)."""
    if "PixelData" not in dataset:
        return None
    manufacturer = str(dataset.get("Manufacturer", "") or "")
    model = str(dataset.get("ManufacturerModelName", "") or "")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    return next((r for r in regions if r.matches(manufacturer, model, rows, columns)), None)


def blank_pixels(dataset: Dataset, region: BlankRegion) -> None:
    """Zero ``region``'s rectangles in every frame and sample; the pixel data ends uncompressed
    (Explicit VR Little Endian) and Burned In Annotation says NO. The SOP Instance UID is kept (the
    de-identifier replaces it like any other)."""
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.decompress(generate_instance_uid=False)
    pixels = dataset.pixel_array.copy()
    frames = pixels if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else pixels[None, ...]
    for x0, y0, x1, y1 in region.rectangles:
        frames[:, y0:y1, x0:x1, ...] = 0
    dataset.PixelData = frames.tobytes()
    dataset.BurnedInAnnotation = "NO"
