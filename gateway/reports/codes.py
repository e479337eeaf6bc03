"""Every code the reports package writes or reads, in one place (verified against pydicom's CID tables).

Titles are from CID 7000 (Diagnostic Imaging Report Document Titles), section headings from CID 7001,
entries from CID 7002; the template is TID 2000 (Basic Diagnostic Imaging Report).
"""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    value: str
    scheme: str
    meaning: str


TITLES: dict[str, Code] = {
    "mri-spine": Code("18756-7", "LN", "MRI Spine Report"),
    "mri": Code("25056-3", "LN", "MRI Report"),
    "ct": Code("25045-6", "LN", "CT Report"),
    "imaging": Code("18748-4", "LN", "Diagnostic Imaging Report"),
}
DEFAULT_TITLE_BY_MODALITY = {"MR": "mri-spine", "CT": "ct"}

CLINICAL_INFORMATION = Code("55752-0", "LN", "Clinical Information")
FINDINGS = Code("59776-5", "LN", "Findings")
IMPRESSIONS = Code("19005-8", "LN", "Impressions")
RECOMMENDATIONS = Code("18783-1", "LN", "Recommendations")

HISTORY = Code("121060", "DCM", "History")
FINDING = Code("121071", "DCM", "Finding")
IMPRESSION = Code("121073", "DCM", "Impression")
RECOMMENDATION = Code("121075", "DCM", "Recommendation")
SOURCE_IMAGE = Code("121112", "DCM", "Source of Measurement")

OBSERVER_TYPE = Code("121005", "DCM", "Observer Type")
PERSON = Code("121006", "DCM", "Person")
PERSON_OBSERVER_NAME = Code("121008", "DCM", "Person Observer Name")
LANGUAGE = Code("121049", "DCM", "Language of Content Item and Descendants")
ENGLISH = Code("en-US", "RFC5646", "English (United States)")

KEY_OBJECT_TITLE = Code("113000", "DCM", "Of Interest")
KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")

# SOP classes a reviewer may send as its report (PS3.4 B.5).
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASSES = frozenset({BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION})
REPORT_CLASSES = SR_CLASSES | {ENCAPSULATED_PDF}
SR_CLASS_BY_NAME = {"basic": BASIC_TEXT_SR, "enhanced": ENHANCED_SR, "comprehensive": COMPREHENSIVE_SR}
