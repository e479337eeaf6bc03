"""A study whose original header holds more than the patient's name, and a referral that mentions it all.

The header carries a birth (maiden) name, the mother's birth name, an address (street, town, postcode), a
phone number, another patient ID, the institution's department and address, and performing and reading
physicians; the referral's free text mentions each of them, as clinicians do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from gateway.demo import DemoPatient, write_demo_study

PATIENT = DemoPatient(name="HARGREAVES^ELEANOR^ROSE", patient_id="KGH0048213", birth_date="19710305",
                      accession="ACC7730914", institution="Kettering General Hospital", referring="ASHDOWN^PETER")
HEADER = {
    "PatientBirthName": "PEMBERTON^ELEANOR",
    "PatientMotherBirthName": "OKONKWO^GRACE",
    "PatientAddress": "14 Wychwood Crescent, Thrapston NN14 4QT",
    "PatientTelephoneNumbers": "01832 736415",
    "OtherPatientIDs": "NHS9434765919",
    "InstitutionalDepartmentName": "Brackenfield Spinal Unit",
    "InstitutionAddress": "Rothwell Road, Kettering NN16 8UZ",
    "PerformingPhysicianName": "QUARMBY^DELIA",
    "NameOfPhysiciansReadingStudy": "FAIRWEATHER^IAN",
}
#: Each held identifier as the referral's text writes it, by what it is.
MENTIONS = {
    "maiden name": "Pemberton",
    "mother's birth name": "Okonkwo",
    "street": "Wychwood Crescent",
    "town": "Thrapston",
    "postcode": "NN14 4QT",
    "phone": "01832 736415",
    "other patient id": "NHS9434765919",
    "institution department": "Brackenfield Spinal Unit",
    "performing physician": "Quarmby",
}
REFERRAL = {
    "source": "st-marys",
    "accession_number": PATIENT.accession,
    "patient": {"id": PATIENT.patient_id, "name": "Hargreaves^Eleanor", "birth_date": "1971-03-05"},
    "referrer": {"name": "Dr Peter Ashdown"},
    "urgency": "routine",
    "clinical": {
        "history": ("Mrs Hargreaves (née Pemberton) lives at 14 Wychwood Crescent in Thrapston (NN14 4QT) with "
                    "her mother, Mrs Okonkwo; she can be reached on 01832 736415. Hospital number "
                    "NHS9434765919. Low back pain for 10 weeks, worse at night."),
        "examination": ("Seen in the Brackenfield Spinal Unit by Dr Quarmby: EHL 4/5 on the left, "
                        "reduced ankle reflex, SLR positive at 40 degrees."),
        "prior_imaging": "X-ray of the lumbar spine: mild L4-L5 degeneration.",
        "question": "L4-L5 disc herniation with L5 root compression?",
    },
}


def referral_document(**changes: object) -> dict:
    document = json.loads(json.dumps(REFERRAL))
    document.update(changes)
    return document


def write_held_study(out_dir: Path, instances: int = 2, *, patient: DemoPatient = PATIENT,
                     header: dict[str, str] | None = None) -> list[Path]:
    """A small demo study whose header also holds :data:`HEADER` (or ``header``)."""
    paths = write_demo_study(out_dir, instances, patient=patient, seed=7, rows=16, cols=16)
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in (HEADER if header is None else header).items():
            setattr(dataset, keyword, value)
        other = Dataset()
        other.PatientID = "OTH-55120"
        other.TypeOfPatientID = "TEXT"
        dataset.OtherPatientIDsSequence = [other]
        dataset.save_as(path, enforce_file_format=True)
    return paths
