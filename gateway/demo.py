"""A synthetic lumbar spine MR study for tests, demos and benchmarks.

Three series (sagittal T1, sagittal T2, axial T2), 512x512 16-bit, with realistic and deliberately
identifying headers (patient, accession, institution, referring physician), so that de-identification
has something to remove. Every file is a valid DICOM Part 10 file (MR Image Storage, Explicit VR LE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from gateway import __version__

GATEWAY_UID_ROOT = "1.2.826.0.1.3680043.10.1512."  # a test root for generated demo data
IMPLEMENTATION_CLASS_UID = UID(GATEWAY_UID_ROOT + "0.1")

SERIES_PLAN = (
    # description, protocol, orientation (row, column direction cosines), TR, TE
    ("SAG T1 TSE", "L-SPINE SAG T1", [0, 1, 0, 0, 0, -1], 550, 10),
    ("SAG T2 TSE", "L-SPINE SAG T2", [0, 1, 0, 0, 0, -1], 3500, 100),
    ("AX T2 TSE", "L-SPINE AX T2", [1, 0, 0, 0, 1, 0], 4000, 110),
)


@dataclass(frozen=True)
class DemoPatient:
    name: str = "DOE^JANE^MARIE"
    patient_id: str = "MRN0012345"
    birth_date: str = "19710412"
    sex: str = "F"
    accession: str = "A1234567"
    institution: str = "St Mary's Hospital"
    referring: str = "SMITH^ALAN^DR"
    study_date: str = "20261120"


def _pixels(rng: np.random.Generator, index: int, rows: int, cols: int) -> bytes:
    """A smooth body-like shape with noise: compressible like a real image, never constant."""
    y, x = np.mgrid[0:rows, 0:cols]
    body = 1800 * np.exp(-(((x - cols / 2) / (cols / 3.2)) ** 2 + ((y - rows / 2) / (rows / 2.4)) ** 2))
    spine = 900 * (np.abs(x - cols / 2 - 20 * np.sin(y / 60 + index / 7)) < 18)
    noise = rng.normal(0, 25, size=(rows, cols))
    return np.clip(body + spine + noise, 0, 4095).astype("<u2").tobytes()


def make_instance(patient: DemoPatient, study_uid: str, series_uid: str, frame_of_reference_uid: str,
                  series_number: int,
                  instance_number: int, plan: tuple, pixel_bytes: bytes, rows: int, cols: int) -> Dataset:
    description, protocol, orientation, tr, te = plan
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = patient.study_date
    ds.StudyTime = "101500"
    ds.SeriesTime = f"10{15 + series_number:02d}00"
    ds.AcquisitionTime = ds.ContentTime = f"10{15 + series_number:02d}{instance_number % 60:02d}"
    ds.AccessionNumber = patient.accession
    ds.Modality = "MR"
    ds.Manufacturer = "SPINEGW DEMO"
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = "1 Hospital Road, London W2 1NY"
    ds.ReferringPhysicianName = patient.referring
    ds.StationName = "MRI-3T-01"
    ds.StudyDescription = "MRI LUMBAR SPINE"
    ds.SeriesDescription = description
    ds.ProtocolName = protocol
    ds.OperatorsName = "JONES^SAM"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = "055Y"
    ds.PatientWeight = "72"
    ds.PatientSize = "1.68"
    ds.AdditionalPatientHistory = "Low back pain radiating to the left leg for 10 weeks"
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "4"
    ds.RepetitionTime = str(tr)
    ds.EchoTime = str(te)
    ds.MagneticFieldStrength = "3"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.ImagePositionPatient = [float(instance_number * 4), -120.0, 120.0]
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    ds.PixelData = pixel_bytes
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = f"SPINEGW_{__version__}"[:16]
    ds.file_meta = meta
    return ds


_FAMILIES = ("ROE", "POE", "LEE", "KHAN", "NOWAK", "SILVA", "OKAFOR", "MURPHY", "HANSEN", "ROSSI")
_GIVEN = ("RICHARD", "MARY", "AMIR", "ELENA", "JOHN", "AISHA", "PETER", "SOFIA", "DAVID", "INGRID")


def demo_patient(seed: int) -> DemoPatient:
    """The demo patient of ``seed``: seed 0 is the default Jane Doe; any other seed is another patient (name, ID,
    birth date, sex, accession), the same one every time, so a second demo study needs no dcmodify."""
    if seed == 0:
        return DemoPatient()
    rng = np.random.default_rng(seed)
    given = str(rng.choice(_GIVEN))
    return DemoPatient(name=f"{rng.choice(_FAMILIES)}^{given}", patient_id=f"MRN{seed % 10**7:07d}",
                       birth_date=f"{1940 + int(rng.integers(0, 60))}{int(rng.integers(1, 13)):02d}"
                                  f"{int(rng.integers(1, 29)):02d}",
                       sex="F" if given in ("MARY", "ELENA", "AISHA", "SOFIA", "INGRID") else "M",
                       accession=f"A{seed % 10**7:07d}", institution="St Mary's Hospital",
                       referring="SMITH^ALAN^DR", study_date="20261120")


def write_demo_study(out_dir: Path, instances: int = 300, *, patient: DemoPatient | None = None,
                     seed: int = 0, rows: int = 512, cols: int = 512) -> list[Path]:
    """Write ``instances`` files split over three series; return their paths."""
    if instances < 1:
        raise ValueError("instances must be at least 1")
    patient = patient or DemoPatient()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in SERIES_PLAN]
    frame_uids = [generate_uid() for _ in SERIES_PLAN]
    pixel_pool = [_pixels(rng, i, rows, cols) for i in range(min(instances, 24))]
    paths = []
    for index in range(instances):
        series_index = index * len(SERIES_PLAN) // instances
        ds = make_instance(patient, study_uid, series_uids[series_index], frame_uids[series_index],
                           series_index + 1, index + 1,
                           SERIES_PLAN[series_index], pixel_pool[index % len(pixel_pool)], rows, cols)
        path = out_dir / f"IM{index + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
