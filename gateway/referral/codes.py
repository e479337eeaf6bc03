"""Codes used by the referral library: red flag codes and the DICOM SR concepts of the notes.

Bottom layer: no imports from the rest of the package and no DICOM library, so that the
document model can use it. :mod:`notes_sr` turns each :class:`Code` into a highdicom
``CodedConcept``.

Red flags have no single SNOMED CT concept each ("no improvement after 6 weeks" has none), so they
use a private coding scheme, ``99SPINEGW`` (the ``99`` prefix is reserved for local schemes by
PS3.16 section 8.2). Every SR that uses it declares it in its Coding Scheme Identification
Sequence (see :data:`PRIVATE_SCHEME_NAME`). Section titles use LOINC codes from CID 7001.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class RedFlag(str, enum.Enum):
    """Red flag codes for spinal pain referrals."""

    CAUDA_EQUINA = "cauda_equina"
    PROGRESSIVE_NEUROLOGICAL_DEFICIT = "progressive_neurological_deficit"
    FEVER_OR_INFECTION = "fever_or_infection"
    CANCER_HISTORY = "cancer_history"
    UNEXPLAINED_WEIGHT_LOSS = "unexplained_weight_loss"
    SIGNIFICANT_TRAUMA = "significant_trauma"
    IMMUNOSUPPRESSION = "immunosuppression"
    IV_DRUG_USE = "iv_drug_use"
    AGE_OVER_50_NEW_PAIN = "age_over_50_new_pain"
    NIGHT_OR_REST_PAIN = "night_or_rest_pain"
    NO_IMPROVEMENT_6_WEEKS = "no_improvement_6_weeks"


#: Flags that by themselves do not make a referral urgent.
NON_URGENT_FLAGS: frozenset[RedFlag] = frozenset(
    {RedFlag.AGE_OVER_50_NEW_PAIN, RedFlag.NIGHT_OR_REST_PAIN, RedFlag.NO_IMPROVEMENT_6_WEEKS}
)


class Code(NamedTuple):
    """A coded concept: code value, coding scheme designator, code meaning (max 64 chars)."""

    value: str
    scheme: str
    meaning: str


PRIVATE_SCHEME = "99SPINEGW"
PRIVATE_SCHEME_NAME = "spine-gateway referral codes"
PRIVATE_SCHEME_ORGANIZATION = "spine-gateway"

RED_FLAG_CODES: dict[RedFlag, Code] = {
    RedFlag.CAUDA_EQUINA: Code("RF01", PRIVATE_SCHEME, "Suspected cauda equina syndrome"),
    RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT: Code("RF02", PRIVATE_SCHEME, "Progressive neurological deficit"),
    RedFlag.FEVER_OR_INFECTION: Code("RF03", PRIVATE_SCHEME, "Fever or suspected infection"),
    RedFlag.CANCER_HISTORY: Code("RF04", PRIVATE_SCHEME, "History of cancer"),
    RedFlag.UNEXPLAINED_WEIGHT_LOSS: Code("RF05", PRIVATE_SCHEME, "Unexplained weight loss"),
    RedFlag.SIGNIFICANT_TRAUMA: Code("RF06", PRIVATE_SCHEME, "Significant trauma"),
    RedFlag.IMMUNOSUPPRESSION: Code("RF07", PRIVATE_SCHEME, "Immunosuppression"),
    RedFlag.IV_DRUG_USE: Code("RF08", PRIVATE_SCHEME, "Intravenous drug use"),
    RedFlag.AGE_OVER_50_NEW_PAIN: Code("RF09", PRIVATE_SCHEME, "Age over 50 with new onset pain"),
    RedFlag.NIGHT_OR_REST_PAIN: Code("RF10", PRIVATE_SCHEME, "Night or rest pain"),
    RedFlag.NO_IMPROVEMENT_6_WEEKS: Code("RF11", PRIVATE_SCHEME, "No improvement after 6 weeks"),
}

# Concept names of the red flag CODE items: where the flag came from.
RED_FLAG_DECLARED = Code("RFD", PRIVATE_SCHEME, "Red flag declared by referrer")
RED_FLAG_DETECTED = Code("RFT", PRIVATE_SCHEME, "Red flag detected in referral text")
RED_FLAG_DECLARED_AND_DETECTED = Code("RFB", PRIVATE_SCHEME, "Red flag declared and found in text")

# Document title and sections (LOINC; sections from CID 7001 "Diagnostic Imaging Report Headings").
CLINICAL_INFORMATION = Code("55752-0", "LN", "Clinical Information")
HISTORY = Code("11329-0", "LN", "History")
REQUEST = Code("55115-0", "LN", "Request")
INDICATIONS = Code("18785-6", "LN", "Indications for Procedure")

# Items inside the sections (private where no standard code fits the referral form's wording).
PRESENTING_SYMPTOMS = Code("SYMPT", PRIVATE_SCHEME, "Presenting symptoms")
PAIN_PATTERN = Code("PAINPAT", PRIVATE_SCHEME, "Pain pattern")
PAIN_LOCATION = Code("PAINLOC", PRIVATE_SCHEME, "Pain location")
PAIN_NATURE = Code("PAINNAT", PRIVATE_SCHEME, "Pain character")
PAIN_RADIATION = Code("PAINRAD", PRIVATE_SCHEME, "Pain radiation")
PAIN_DURATION = Code("PAINDUR", PRIVATE_SCHEME, "Pain duration")
PAIN_INTENSITY = Code("72514-3", "LN", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")
EXAMINATION = Code("EXAM", PRIVATE_SCHEME, "Clinical examination")
EMG_NCS = Code("EMGNCS", PRIVATE_SCHEME, "EMG and nerve conduction studies")
PRIOR_TREATMENT = Code("PRIORTX", PRIVATE_SCHEME, "Prior treatment")
PRIOR_IMAGING = Code("PRIORIMG", PRIVATE_SCHEME, "Prior imaging")
PRIORS_SENT = Code("PRIORSENT", PRIVATE_SCHEME, "Priors sent with the case")
CLINICAL_QUESTION = Code("QUESTION", PRIVATE_SCHEME, "Clinical question")
URGENCY = Code("URGENCY", PRIVATE_SCHEME, "Referral urgency")
URGENCY_ROUTINE = Code("ROUTINE", PRIVATE_SCHEME, "Routine")
URGENCY_URGENT = Code("URGENT", PRIVATE_SCHEME, "Urgent")
RED_FLAGS_SECTION = Code("REDFLAGS", PRIVATE_SCHEME, "Red flags")

# UCUM units.
UNIT_SCORE = Code("{score}", "UCUM", "score")
UNIT_WEEK = Code("wk", "UCUM", "week")
