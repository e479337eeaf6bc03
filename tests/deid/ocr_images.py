"""Images with text burned in, made by the tests: an X-ray-like picture and real TrueType text on it.

The font is DejaVu Sans from Debian's fonts-dejavu-core (scripts/install-system-deps.sh), so sizes are pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"

PATIENT = {"PatientName": "MORGENSTERN^HELENA", "PatientID": "PID7734521", "PatientBirthDate": "19620314",
           "AccessionNumber": "ACC55190", "InstitutionName": "Riverside General Hospital"}
# How the device writes them into the picture.
NAME_TEXT, ID_TEXT, BIRTH_TEXT, ACCESSION_TEXT, HOSPITAL_TEXT = (
    "MORGENSTERN HELENA", "ID PID7734521", "DOB 14/03/1962", "ACC55190", "Riverside General Hospital")


@dataclass(frozen=True)
class Text:
    text: str
    x: int
    y: int
    size: int


def anatomy(rows: int, columns: int, bits: int = 16, seed: int = 7, noise: float = 0.02) -> np.ndarray:
    """A smooth, noisy body-like picture with brighter blocks for vertebrae, in ``bits`` stored bits
    (``noise``: standard deviation of white noise, as a fraction of the range)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    body = np.exp(-(((xx - columns / 2) / (columns / 4)) ** 2 + ((yy - rows / 2) / (rows / 2.6)) ** 2))
    for k in range(5):
        top = int(rows * (0.12 + k * 0.16))
        body[top:top + int(rows * 0.11), int(columns * 0.4):int(columns * 0.6)] += 0.25
    picture = body * 0.6 + rng.normal(0, noise, body.shape)
    top = 2 ** bits - 1
    return np.clip(picture * top, 0, top).astype(np.uint16 if bits > 8 else np.uint8)


def burn(pixels: np.ndarray, texts: list[Text], value: int) -> np.ndarray:
    """Draw ``texts`` into a copy of ``pixels`` with the stored value ``value``."""
    mask = Image.new("L", (pixels.shape[1], pixels.shape[0]), 0)
    draw = ImageDraw.Draw(mask)
    for text in texts:
        draw.text((text.x, text.y), text.text, fill=255, font=ImageFont.truetype(FONT, text.size))
    out = pixels.copy()
    out[np.asarray(mask) > 127] = value
    return out


def dx_dataset(pixels: np.ndarray, *, modality: str = "DX", sop_class: str = DX_CLASS,
               photometric: str = "MONOCHROME2", bits: int | None = None, window: tuple[float, float] | None = None,
               **extra: str) -> Dataset:
    """A DX (or other) object around ``pixels`` with the patient of :data:`PATIENT`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    for key, value in {**PATIENT, **extra}.items():
        setattr(ds, key, value)
    ds.StudyDate, ds.PatientSex, ds.BodyPartExamined = "20260101", "F", "LSPINE"
    ds.StudyDescription, ds.SeriesDescription = "XR LUMBAR SPINE", "LSPINE AP"
    allocated = 16 if pixels.dtype == np.uint16 else 8
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits or allocated, (bits or allocated) - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if allocated == 16 else "OB"
    return ds


def reread(dataset: Dataset) -> Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()))
