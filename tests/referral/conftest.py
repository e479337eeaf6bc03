"""Shared fixtures for the referral tests: a de-identified image of a pseudonymous study."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def strict_pydicom():
    """Raise on invalid values when reading or writing, as highdicom's own tests do."""
    settings = pydicom_config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom_config.RAISE
    settings.writing_validation_mode = pydicom_config.RAISE
    yield
    settings.reading_validation_mode, settings.writing_validation_mode = saved


@pytest.fixture
def deidentified_image() -> Dataset:
    """A small MR image of a pseudonymous study, as the de-identification stage would produce."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.PatientName = "PSEUDO^P7F3A2"
    ds.PatientID = "PSN-7F3A2C"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "spine-gateway PS3.15 E basic profile"
    ds.AccessionNumber = "PACC-0042"
    ds.StudyID = "1"
    ds.StudyDate = "20240404"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(4 * 4 * 2)
    return ds
