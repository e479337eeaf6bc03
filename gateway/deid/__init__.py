"""De-identification of DICOM datasets: PS3.15 Annex E Basic Profile, table-driven.

Typical use::

    deidentifier = Deidentifier(DeidOptions(), secret)
    result = deidentifier.deidentify(dataset, PatientContext(source="HOSP_A", case_label="C0042"))
    store(result.mapping)            # original → pseudonym; PHI, goes to the database only
    assert_no_leaks(result.dataset, identifiers_from_dataset(dataset))

This package knows no network and no database, and logs nothing identifying.
"""

import importlib
from typing import Any

# Each public name and the module that defines it. Loaded on first use (PEP 562), so that importing one light
# module of the package (``gateway.deid.options``, which the configuration needs) does not load the engine,
# pydicom and the OCR code with it.
_HOME = {
    "burned_in_risk": "burned_in",
    "DeidMapping": "engine", "DeidResult": "engine", "Deidentifier": "engine", "PatientContext": "engine",
    "BurnedInRiskError": "errors", "DeidError": "errors", "IdentifierLeakError": "errors",
    "QuarantineError": "errors", "UnsupportedObjectError": "errors",
    "Leak": "guard", "PatientIdentifiers": "guard", "assert_no_leaks": "guard", "find_leaks": "guard",
    "identifiers_from_dataset": "guard",
    "BlankRegion": "options", "BurnedInPolicy": "options", "DeidOptions": "options", "OcrOptions": "options",
    "PrivateTagRule": "options",
    "load_or_create_secret": "secret",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


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
