"""The switches of the profile: one validated, immutable object with every default documented."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.deid.table import ProfileOption


class BurnedInPolicy(str, enum.Enum):
    """What to do with objects that may carry identifiers burned into the pixels."""

    OCR = "ocr"  # find text by OCR, blank it, check again (``ocr``); quarantine what cannot be cleaned
    REJECT = "reject"  # raise BurnedInRiskError: the object is quarantined
    BLANK = "blank"  # blank the configured rectangles of the device (``blank_regions``); quarantine if none fits


# Modalities whose images often carry burned-in text (names, dates, IDs written by the device or a digitiser).
OCR_MODALITIES = ("CR", "DX", "MG", "RF", "XA", "SC", "US", "OT", "PX", "IO", "ES", "XC")


class OcrOptions(BaseModel):
    """How ``burned_in: ocr`` finds and removes burned-in text (tesseract, offline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: tuple[str, ...] = OCR_MODALITIES
    """Modalities whose images are read by OCR; others only when a sign of burned-in text is found."""
    trust_burned_in_no: bool = True
    """Skip OCR for an image of those modalities whose BurnedInAnnotation is NO (and shows no other sign)."""
    strict: bool = False
    """Quarantine when any text at all is still readable after cleaning, not only an identifier."""
    margin_px: int = Field(4, ge=0, le=64)
    """Pixels added around each word box before it is blanked."""
    min_confidence: float = Field(60.0, ge=0, le=100)
    """A word is blanked (and counts as text in strict mode) from this confidence; identifiers at any."""
    upscale_below_px: int = Field(1200, ge=0)
    """Images whose longer side is below this are read at twice their size (small text reads better)."""
    reduce_from_px: int = Field(0, ge=0)
    """Images whose longer side is at least this are read at half their size: several times faster on large
    noisy images, but text under about 20 pixels high is then missed (0: never)."""
    max_frames: int = Field(300, ge=1)
    """Objects with more frames are quarantined rather than read frame by frame."""
    language: str = Field("eng", min_length=1)
    """Tesseract language data (Debian package tesseract-ocr-<language>)."""

    @field_validator("modalities")
    @classmethod
    def _upper_modalities(cls, modalities: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(modality.strip().upper() for modality in modalities)


class PrivateTagRule(BaseModel):
    """One private data element that may be kept under Retain Safe Private.

    ``element_offset`` is the low byte of the element number (``0x01`` for ``(0019,xx01)``), so the rule
    holds whatever block the creator was given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    creator: str = Field(min_length=1, max_length=64)
    group: int = Field(ge=0x0009, le=0xFFFD)
    element_offset: int = Field(ge=0x00, le=0xFF)

    @field_validator("group")
    @classmethod
    def _odd_group(cls, group: int) -> int:
        if group % 2 == 0:
            raise ValueError("a private group number is odd")
        return group


class BlankRegion(BaseModel):
    """Where one kind of device burns text into its images: rectangles to blank, for one image size.

    ``manufacturer`` and ``model`` match (case-insensitively) as substrings of Manufacturer and Manufacturer's
    Model Name; empty matches any. Each rectangle is ``[x0, y0, x1, y1]`` in pixels, ends excluded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    manufacturer: str = ""
    model: str = ""
    rows: int = Field(ge=1)
    columns: int = Field(ge=1)
    rectangles: tuple[tuple[int, int, int, int], ...] = Field(min_length=1)

    def model_post_init(self, __context: object) -> None:
        for x0, y0, x1, y1 in self.rectangles:
            if not (0 <= x0 < x1 <= self.columns and 0 <= y0 < y1 <= self.rows):
                raise ValueError(f"rectangle {[x0, y0, x1, y1]} is not inside {self.columns}x{self.rows}")

    def matches(self, manufacturer: str, model: str, rows: int, columns: int) -> bool:
        return (self.manufacturer.upper() in manufacturer.upper() and self.model.upper() in model.upper()
                and (self.rows, self.columns) == (rows, columns))


class DeidOptions(BaseModel):
    """Options of the Basic Application Level Confidentiality Profile (PS3.15 E.3).

    Each option, when on, lets its column of Table E.1-1 override the basic action.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    retain_patient_characteristics: bool = True
    """Keep sex, age, size, weight, ... (113108)."""
    retain_longitudinal_modified_dates: bool = True
    """Shift dates by a per-patient whole number of days, keeping intervals; times are kept (113107)."""
    clean_descriptors: bool = True
    """Keep descriptions only if every word is on the safe clinical word list (113105)."""
    retain_safe_private: bool = False
    """Keep private elements listed in ``private_allowlist`` (with their creators); all others go (113111)."""
    private_allowlist: tuple[PrivateTagRule, ...] = ()
    """Private elements judged safe; used only when ``retain_safe_private`` is on."""
    retain_uids: bool = False
    """Keep original UIDs instead of pseudonyms (113110)."""
    retain_device_id: bool = False
    """Keep device serial numbers, station names, ... (113109)."""
    retain_institution_id: bool = False
    """Keep institution name, address, department (113112)."""
    clean_structured_content: bool = True
    """Keep SR content / acquisition context sequences, de-identifying their items (113104)."""
    clean_graphics: bool = True
    """Keep graphic annotations, de-identifying their items; bitmap overlays are still removed (113103)."""
    burned_in: BurnedInPolicy = BurnedInPolicy.OCR
    """Policy for objects that may carry burned-in identifiers."""
    ocr: OcrOptions = OcrOptions()
    """With ``burned_in: ocr``: which images are read and how text is blanked (113101)."""
    blank_regions: tuple[BlankRegion, ...] = ()
    """With ``burned_in: blank``: per device and image size, the rectangles that are blanked (113101)."""
    extra_descriptor_words: frozenset[str] = frozenset()
    """Words added to the built-in safe clinical word list (compared upper-case)."""
    min_date_offset_days: int = -3650
    """Most negative per-patient date shift, in days."""
    max_date_offset_days: int = -365
    """Least negative per-patient date shift, in days; the range must exclude 0."""
    gateway_ae_title: str = Field(default="SPINEGW", min_length=1, max_length=16)
    """Written to the file meta Source Application Entity Title instead of the sender's."""

    @field_validator("extra_descriptor_words")
    @classmethod
    def _upper_words(cls, words: frozenset[str]) -> frozenset[str]:
        return frozenset(word.upper() for word in words)

    def model_post_init(self, __context: object) -> None:
        if self.min_date_offset_days > self.max_date_offset_days:
            raise ValueError("min_date_offset_days must not exceed max_date_offset_days")
        if self.min_date_offset_days <= 0 <= self.max_date_offset_days:
            raise ValueError("the date offset range must exclude 0")

    def enabled_columns(self) -> frozenset[ProfileOption]:
        """The option columns of Table E.1-1 that override the basic action under these options."""
        switches = {
            ProfileOption.RETAIN_SAFE_PRIVATE: self.retain_safe_private,
            ProfileOption.RETAIN_UIDS: self.retain_uids,
            ProfileOption.RETAIN_DEVICE_ID: self.retain_device_id,
            ProfileOption.RETAIN_INSTITUTION_ID: self.retain_institution_id,
            ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: self.retain_patient_characteristics,
            ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: self.retain_longitudinal_modified_dates,
            ProfileOption.CLEAN_DESCRIPTORS: self.clean_descriptors,
            ProfileOption.CLEAN_STRUCTURED_CONTENT: self.clean_structured_content,
            ProfileOption.CLEAN_GRAPHICS: self.clean_graphics,
        }
        return frozenset(option for option, on in switches.items() if on)
