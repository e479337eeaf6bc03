"""The table-driven de-identifier: one pass over the dataset, recursing into every sequence."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from pydicom import uid as dicom_uid
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from gateway.deid.actions import Action, CompiledActions, ResolvedAction, compile_actions
from gateway.deid.burned_in import blank_pixels, blank_region_for, burned_in_risk, ocr_reason
from gateway.deid.errors import BurnedInRiskError, QuarantineError, UnsupportedObjectError
from gateway.deid.guard import PatientIdentifiers, identifiers_from_dataset
from gateway.deid.ocr import PixelReport, clean_burned_in_text
from gateway.deid.options import BlankRegion, BurnedInPolicy, DeidOptions
from gateway.deid.pseudonym import Pseudonymizer, is_standard_uid, uuid_derived_uid
from gateway.deid.values import dummy_value, is_safe_descriptor, shift_date, shift_datetime
from gateway.dicom.vr import FREE_TEXT_VRS

PATIENT_NAME_PREFIX = "SPINEGW"
IMPLEMENTATION_VERSION_NAME = "SPINEGW_0_1"
IMPLEMENTATION_CLASS_UID = dicom_uid.UID(uuid_derived_uid(b"spine-gateway implementation class".ljust(16, b"\0")))

PATIENT_NAME = tag_for_keyword("PatientName")
PATIENT_ID = tag_for_keyword("PatientID")
ACCESSION_NUMBER = tag_for_keyword("AccessionNumber")
_CASE_LABEL_FORBIDDEN = set("^=\\\n\r")
_MAX_CASE_LABEL = 64 - len(PATIENT_NAME_PREFIX) - 1

# UID attributes that name a class, syntax or registry, never an instance: never pseudonymised.
_NON_INSTANCE_UID_KEYWORDS = frozenset(
    {
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "ImplementationClassUID",
        "CodingSchemeUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
    }
)

# PS3.16 CID 7050 De-identification Method.
_METHOD_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_id": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_id": ("113112", "Retain Institution Identity Option"),
}


@dataclass(frozen=True, slots=True)
class PatientContext:
    """What the caller knows about the case that the dataset cannot tell.

    Args:
        source: name of the sending site (its AE title or configured name); scopes the patient
            pseudonym and date offset, so equal patient IDs from two sites never merge.
        case_label: the gateway's case label, used as ``SPINEGW^<case_label>`` for Patient's Name;
            when None it is derived from the patient pseudonym.

    Raises:
        ValueError: empty source, or a case label that is too long or holds PN delimiters.
    """

    source: str
    case_label: str | None = None

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("source must not be empty")
        if self.case_label is not None:
            if not self.case_label or len(self.case_label) > _MAX_CASE_LABEL:
                raise ValueError(f"case_label must have 1 to {_MAX_CASE_LABEL} characters")
            if _CASE_LABEL_FORBIDDEN & set(self.case_label):
                raise ValueError("case_label must not contain ^, =, \\ or line breaks")


@dataclass(slots=True)
class DeidMapping:
    """Everything the engine replaced, for the caller to store (it is PHI: never log it)."""

    original_patient_id: str
    patient_id: str
    patient_name: str
    original_accession: str | None = None
    accession: str | None = None
    date_offset_days: int | None = None
    uids: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DeidResult:
    """The de-identified dataset and what was replaced to make it."""

    dataset: Dataset
    mapping: DeidMapping
    method: tuple[str, ...]
    pixels: PixelReport | None = None
    """What the OCR pass did (``burned_in: ocr``), or None when the pixels were not read."""


class _ReadPixels:
    """The plan for an object whose pixels are read by OCR, after its device's rectangles (if any) are blanked."""

    def __init__(self, reason: str, region: BlankRegion | None) -> None:
        self.reason = reason
        self.region = region


@dataclass(slots=True)
class _Run:
    """State of one :meth:`Deidentifier.deidentify` call."""

    context: PatientContext
    mapping: DeidMapping


class Deidentifier:
    """Applies PS3.15 Annex E (Basic Profile plus the chosen options) to datasets.

    Build one per (options, secret) and reuse it: the table is resolved once here.

    Args:
        options: the profile options; defaults when None.
        secret: key of every pseudonym (at least 16 bytes).

    Raises:
        ValueError: the secret is too short.
    """

    def __init__(self, options: DeidOptions | None, secret: bytes) -> None:
        self.options = options or DeidOptions()
        self._pseudonyms = Pseudonymizer(secret)
        self._actions: CompiledActions = compile_actions(self.options)
        self._private_allowlist = frozenset(
            (rule.creator.strip(), rule.group, rule.element_offset) for rule in self.options.private_allowlist
        )
        self.method = self._method_names()

    # -- public API -----------------------------------------------------------------------------

    def deidentify(self, dataset: Dataset, context: PatientContext, *, copy_dataset: bool = True,
                   pixel_identifiers: PatientIdentifiers | None = None) -> DeidResult:
        """De-identify ``dataset``; by default a copy, leaving the original untouched.

        ``pixel_identifiers`` are what the OCR pass (``burned_in: ocr``) must not leave readable in the
        pixels; by default those of ``dataset`` itself.

        Raises:
            UnsupportedObjectError: no SOP Class/Instance UID, or a DICOMDIR.
            BurnedInRiskError: the object may carry burned-in identifiers, and either ``burned_in`` is
                ``reject``, or no ``blank_regions`` entry fits its device and image size, or (``ocr``) the
                pixels cannot be read or text is still readable after cleaning (the error's ``report``).
        """
        plan = self._check_supported(dataset)
        if isinstance(plan, _ReadPixels) and pixel_identifiers is None:
            pixel_identifiers = identifiers_from_dataset(
                dataset, include_uids=False, include_institution=not self.options.retain_institution_id)
        work = copy.deepcopy(dataset) if copy_dataset else dataset
        report = None
        if isinstance(plan, BlankRegion):
            blank_pixels(work, plan)
        elif isinstance(plan, _ReadPixels):
            if plan.region is not None:
                blank_pixels(work, plan.region)
            report = self._read_pixels(work, pixel_identifiers or PatientIdentifiers())
        run = self._start_run(work, context)
        self._walk(work, run)
        self._set_patient_module(work, run)
        self._set_method_attributes(work, pixels_cleaned=plan is not None)
        self._rebuild_file_meta(work, run)
        _resolve_vrs(work)  # a body read as implicit VR under an explicit syntax is written with its VRs
        return DeidResult(dataset=work, mapping=run.mapping, method=self.method, pixels=report)

    def _read_pixels(self, dataset: Dataset, identifiers: PatientIdentifiers) -> PixelReport:
        """The OCR pass; a refusal carries the pass's report (counts, no text) for the decision's log event."""
        try:
            return clean_burned_in_text(dataset, identifiers, self.options.ocr)
        except BurnedInRiskError as refusal:
            if refusal.report is None:
                refusal.report = PixelReport(verdict="quarantined", reason=refusal.reason)
            raise
        except Exception as failure:  # noqa: BLE001 - hostile pixels may break any step: fail closed
            reason = f"burned-in text check failed ({type(failure).__name__})"
            refused = BurnedInRiskError(reason)
            refused.report = PixelReport(verdict="quarantined", reason=reason)
            raise refused from failure

    def leaves_pixels(self, dataset: Dataset) -> bool:
        """True when :meth:`deidentify` would neither read nor change ``dataset``'s pixel data (no burned-in
        text to clean or check); False also when it would refuse the object (it then says why itself)."""
        try:
            return self._check_supported(dataset) is None
        except QuarantineError:
            return False

    def patient_pseudonym(self, source: str, original_patient_id: str) -> str:
        """The Patient ID that :meth:`deidentify` gives this patient of this source."""
        return self._pseudonyms.patient_id(source, original_patient_id)

    def uid_pseudonym(self, original_uid: str) -> str:
        """The pseudonym that :meth:`deidentify` gives ``original_uid`` (unless Retain UIDs is on)."""
        return self._pseudonyms.uid(original_uid)

    # -- checks and set-up ----------------------------------------------------------------------

    def _check_supported(self, dataset: Dataset) -> BlankRegion | _ReadPixels | None:
        """Refuse what cannot be de-identified; return how the pixels are cleaned, or None when they are not."""
        sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
        if not sop_class or not str(dataset.get("SOPInstanceUID", "") or "").strip():
            raise UnsupportedObjectError("SOPClassUID or SOPInstanceUID missing")
        if sop_class == dicom_uid.MediaStorageDirectoryStorage or "DirectoryRecordSequence" in dataset:
            raise UnsupportedObjectError("media storage directory (DICOMDIR)")
        if self.options.burned_in is BurnedInPolicy.OCR:
            read = ocr_reason(dataset, self.options.ocr)
            if read is not None:
                return _ReadPixels(read, blank_region_for(dataset, self.options.blank_regions))
        reason = burned_in_risk(dataset)
        if reason is None:
            return None
        if self.options.burned_in is BurnedInPolicy.BLANK:
            region = blank_region_for(dataset, self.options.blank_regions)
            if region is not None:
                return region
            raise BurnedInRiskError(f"{reason}; no blank_regions entry for this device and image size")
        raise BurnedInRiskError(reason)

    def _start_run(self, dataset: Dataset, context: PatientContext) -> _Run:
        original_id = str(dataset.get("PatientID", "") or "")
        patient_id = self._pseudonyms.patient_id(context.source, original_id)
        label = context.case_label or f"CASE-{patient_id[-8:]}"
        mapping = DeidMapping(
            original_patient_id=original_id,
            patient_id=patient_id,
            patient_name=f"{PATIENT_NAME_PREFIX}^{label}",
        )
        accession = str(dataset.get("AccessionNumber", "") or "").strip()
        if accession:
            mapping.original_accession = accession
            mapping.accession = self._pseudonyms.accession(context.source, accession)
        if self.options.retain_longitudinal_modified_dates:
            mapping.date_offset_days = self._pseudonyms.date_offset_days(
                context.source,
                original_id,
                self.options.min_date_offset_days,
                self.options.max_date_offset_days,
            )
        return _Run(context=context, mapping=mapping)

    # -- the walk -------------------------------------------------------------------------------

    def _walk(self, dataset: Dataset, run: _Run) -> None:
        tags = list(dataset.keys())
        if any(tag.group % 2 for tag in tags):
            self._filter_private(dataset, [tag for tag in tags if tag.group % 2], run)
        for tag in tags:
            if tag.group % 2:
                continue
            if tag.element == 0:
                del dataset[tag]  # group lengths are retired and would be stale
                continue
            resolved = self._actions.for_public_tag(int(tag))
            if resolved is None:
                self._unlisted(dataset, int(tag), run)
                continue
            elem = _decoded(dataset, int(tag))
            if elem is not None:
                self._apply(dataset, elem, resolved.action, resolved, run)

    def _unlisted(self, dataset: Dataset, tag: int, run: _Run) -> None:
        kind = _unlisted_kind(tag)
        if kind == "remove":
            del dataset[tag]
        elif kind == "sequence" or (kind == "uid" and not self.options.retain_uids):
            elem = _decoded(dataset, tag)
            if elem is None:
                return
            if kind == "sequence":
                self._walk_items(elem, run)
            else:
                self._replace_uids(elem, run)

    def _apply(self, dataset: Dataset, elem: DataElement, action: Action, resolved: ResolvedAction, run: _Run) -> None:
        if elem.tag in (PATIENT_NAME, PATIENT_ID, ACCESSION_NUMBER) and action is not Action.KEEP:
            self._set_patient_value(elem, run)
        elif action is Action.KEEP:
            self._walk_items(elem, run)
        elif action is Action.REMOVE:
            del dataset[elem.tag]
        elif action is Action.ZERO:
            elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
        elif action is Action.DUMMY:
            self._set_dummy(elem, run)
        elif action is Action.UID:
            self._apply_uid(dataset, elem, resolved, run)
        elif action is Action.SHIFT_DATE:
            self._apply_shift(dataset, elem, resolved, run)
        else:
            self._apply_clean(dataset, elem, resolved, run)

    def _set_patient_value(self, elem: DataElement, run: _Run) -> None:
        mapping = run.mapping
        if elem.tag == PATIENT_NAME:
            elem.value = mapping.patient_name
        elif elem.tag == PATIENT_ID:
            elem.value = mapping.patient_id
        else:
            original = str(elem.value or "").strip()
            elem.value = self._pseudonyms.accession(run.context.source, original) if original else ""

    def _set_dummy(self, elem: DataElement, run: _Run) -> None:
        if elem.VR == "UI":
            if elem.VM == 0:
                elem.value = self._pseudonyms.uid(f"dummy:{elem.tag:08X}")
            else:
                self._replace_uids(elem, run)
        else:
            elem.value = dummy_value(elem.VR)

    def _apply_uid(self, dataset: Dataset, elem: DataElement, resolved: ResolvedAction, run: _Run) -> None:
        if elem.VR == "UI":
            self._replace_uids(elem, run)
        elif elem.VR == "SQ":
            self._walk_items(elem, run)
        else:
            del dataset[elem.tag]

    def _apply_shift(self, dataset: Dataset, elem: DataElement, resolved: ResolvedAction, run: _Run) -> None:
        offset = run.mapping.date_offset_days
        if elem.VR == "TM" or elem.VM == 0:
            return  # a whole-day shift leaves times unchanged
        if elem.VR == "SQ":
            self._walk_items(elem, run)
            return
        shifted = None
        if offset is not None and elem.VR in ("DA", "DT"):
            shift = shift_date if elem.VR == "DA" else shift_datetime
            shifted = shift(_as_text(elem.value), offset)
        if shifted is None:
            self._apply(dataset, elem, resolved.fallback, resolved, run)
        else:
            elem.value = shifted

    def _apply_clean(self, dataset: Dataset, elem: DataElement, resolved: ResolvedAction, run: _Run) -> None:
        if elem.VR == "SQ":
            self._walk_items(elem, run)
        elif elem.VR in FREE_TEXT_VRS and is_safe_descriptor(_as_text(elem.value), self.options.extra_descriptor_words):
            return
        else:
            self._apply(dataset, elem, resolved.fallback, resolved, run)

    def _walk_items(self, elem: DataElement, run: _Run) -> None:
        if elem.VR == "SQ":
            for item in elem.value:
                self._walk(item, run)

    def _replace_uids(self, elem: DataElement, run: _Run) -> None:
        if elem.VM == 0:
            return
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        replaced = [self._uid(str(value), run) for value in values]
        elem.value = replaced if elem.VM > 1 else replaced[0]

    def _uid(self, original: str, run: _Run) -> str:
        original = original.strip().rstrip("\0")
        if not original or is_standard_uid(original):
            return original
        pseudonym = run.mapping.uids.get(original)
        if pseudonym is None:
            pseudonym = self._pseudonyms.uid(original)
            run.mapping.uids[original] = pseudonym
        return pseudonym

    def _filter_private(self, dataset: Dataset, private_tags: list[BaseTag], run: _Run) -> None:
        """Remove private elements and creators, except allowlisted ones under Retain Safe Private."""
        keep: set[int] = set()
        if self.options.retain_safe_private and self._private_allowlist:
            for tag in private_tags:
                if tag.element < 0x1000:
                    continue
                creator_tag = (tag.group << 16) | (tag.element >> 8)
                creator = _private_creator(dataset, creator_tag)
                if creator is not None and (creator, tag.group, tag.element & 0xFF) in self._private_allowlist:
                    keep.update((int(tag), creator_tag))
        for tag in private_tags:
            if int(tag) not in keep:
                del dataset[tag]
            elif tag.element >= 0x1000:
                self._walk_items(dataset[tag], run)

    # -- attributes the profile adds ------------------------------------------------------------

    def _set_patient_module(self, dataset: Dataset, run: _Run) -> None:
        dataset.PatientName = run.mapping.patient_name
        dataset.PatientID = run.mapping.patient_id

    def _set_method_attributes(self, dataset: Dataset, pixels_cleaned: bool = False) -> None:
        dataset.PatientIdentityRemoved = "YES"
        keys = self._method_keys() + (["clean_pixel_data"] if pixels_cleaned else [])
        dataset.DeidentificationMethod = list(self.method) + (["Clean Pixel Data"] if pixels_cleaned else [])
        items = []
        for key in keys:
            code_value, meaning = _METHOD_CODES[key]
            item = Dataset()
            item.CodeValue = code_value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        dataset.DeidentificationMethodCodeSequence = Sequence(items)
        modified = self.options.retain_longitudinal_modified_dates
        dataset.LongitudinalTemporalInformationModified = "MODIFIED" if modified else "REMOVED"

    def _method_keys(self) -> list[str]:
        switches = self.options.model_dump()
        return ["basic"] + [key for key in _METHOD_CODES if key != "basic" and switches.get(key)]

    def _method_names(self) -> tuple[str, ...]:
        return tuple(
            "DICOM PS3.15 E.1 " + meaning if key == "basic" else meaning.removesuffix(" Option")[:64]
            for key in self._method_keys()
            for _, meaning in [_METHOD_CODES[key]]
        )

    def _rebuild_file_meta(self, dataset: Dataset, run: _Run) -> None:
        old = getattr(dataset, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = _transfer_syntax(old, dataset)
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        meta.SourceApplicationEntityTitle = self.options.gateway_ae_title
        dataset.file_meta = meta
        if hasattr(dataset, "preamble"):
            dataset.preamble = b"\x00" * 128  # a preamble may hold a TIFF header or anything else


def _transfer_syntax(old_meta: Dataset, dataset: Dataset) -> dicom_uid.UID:
    syntax = old_meta.get("TransferSyntaxUID")
    if syntax:
        return dicom_uid.UID(str(syntax))
    implicit, little = getattr(dataset, "original_encoding", (None, None))
    if implicit:
        return dicom_uid.ImplicitVRLittleEndian
    if little is False:
        return dicom_uid.ExplicitVRBigEndian
    return dicom_uid.ExplicitVRLittleEndian


def _decoded(dataset: Dataset, tag: int) -> DataElement | None:
    """The element at ``tag``, or None after removing it when its raw bytes cannot be decoded."""
    try:
        return dataset[tag]
    except Exception:  # noqa: BLE001 - pydicom raises many types on hostile bytes; dropping is safe
        del dataset[tag]
        return None


def _resolve_vrs(dataset: Dataset) -> None:
    """Turn every raw element read without its VR into a typed one, dropping those that cannot be decoded."""
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if raw is None or getattr(raw, "VR", "") is not None:
            continue
        elem = _decoded(dataset, int(tag))
        if elem is not None and elem.VR == "SQ":
            for item in elem.value:
                _resolve_vrs(item)


def _private_creator(dataset: Dataset, creator_tag: int) -> str | None:
    if creator_tag not in dataset:
        return None
    value = dataset[creator_tag].value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip().rstrip("\0").strip()


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":  # pydicom's, by name
        return "\\".join(str(part) for part in cast("Iterable[object]", value))
    return str(value)


@functools.lru_cache(maxsize=4096)
def _unlisted_kind(tag: int) -> str:
    """How to treat a public tag that Table E.1-1 does not list: keep, remove, sequence or uid."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "remove"  # unknown to the dictionary: it may hold anything
    if vr == "SQ":
        return "sequence"
    if vr == "UI":
        keyword = keyword_for_tag(tag)
        if keyword.endswith("ClassUID") or keyword in _NON_INSTANCE_UID_KEYWORDS:
            return "keep"
        return "uid"
    return "keep"
