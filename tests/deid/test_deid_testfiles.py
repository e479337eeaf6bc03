"""Every DICOM file bundled with pydicom goes through: de-identified and re-readable, or quarantined."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.filewriter import dcmwrite

from gateway.deid import Deidentifier, PatientContext, QuarantineError
from support.dicomfiles import pydicom_file_param

SECRET = b"testfiles-secret-0123456789abcdef"
BUNDLED = [Path(path) for path in get_testdata_files() if Path(path).is_file()]


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, force=True)


def test_pydicom_bundles_enough_files() -> None:
    assert len(BUNDLED) > 100


@pytest.mark.parametrize("path", [pydicom_file_param(path) for path in BUNDLED])
def test_bundled_file_is_deidentified_or_quarantined(path: Path) -> None:
    original = _read(path)
    deidentifier = Deidentifier(None, SECRET)
    try:
        result = deidentifier.deidentify(original, PatientContext(source="PYDICOM"))
    except QuarantineError as exc:
        assert exc.reason
        return
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcmwrite(buffer, result.dataset, enforce_file_format=True)
        reread = dcmread(io.BytesIO(buffer.getvalue()))
        for _ in reread.iterall():
            pass
    assert reread.PatientIdentityRemoved == "YES"
    assert reread.SOPInstanceUID.startswith("2.25.")
    assert reread.file_meta.MediaStorageSOPInstanceUID == reread.SOPInstanceUID
    if str(original.get("Modality", "")) in ("MR", "CT") and "PixelData" in original:
        assert reread.PixelData == original.PixelData


def test_mr_and_ct_files_are_covered() -> None:
    modalities = {str(_read(path).get("Modality", "")) for path in BUNDLED}
    assert {"MR", "CT"} <= modalities
