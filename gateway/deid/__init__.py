"""De-identification of DICOM datasets: PS3.15 Annex E Basic Profile, table-driven.

Typical use::

    deidentifier = Deidentifier(DeidOptions(), secret)
    result = deidentifier.deidentify(dataset, PatientContext(source="HOSP_A", case_label="C0042"))
    store(result.mapping)            # original → pseudonym; PHI, goes to the database only
    assert_no_leaks(result.dataset, identifiers_from_dataset(dataset))

This package knows no network and no database, and logs nothing identifying.
"""

from gateway.deid.burned_in import burned_in_risk
from gateway.deid.engine import Deidentifier, DeidMapping, DeidResult, PatientContext
from gateway.deid.errors import (
    BurnedInRiskError,
    DeidError,
    IdentifierLeakError,
    QuarantineError,
    UnsupportedObjectError,
)
from gateway.deid.guard import Leak, PatientIdentifiers, assert_no_leaks, find_leaks, identifiers_from_dataset
from gateway.deid.options import BlankRegion, BurnedInPolicy, DeidOptions, OcrOptions, PrivateTagRule
from gateway.deid.secret import load_or_create_secret

__all__ = [
    "BlankRegion",
    "BurnedInPolicy",
    "BurnedInRiskError",
    "DeidError",
    "DeidMapping",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "IdentifierLeakError",
    "Leak",
    "OcrOptions",
    "PatientContext",
    "PatientIdentifiers",
    "PrivateTagRule",
    "QuarantineError",
    "UnsupportedObjectError",
    "assert_no_leaks",
    "burned_in_risk",
    "find_leaks",
    "identifiers_from_dataset",
    "load_or_create_secret",
]
