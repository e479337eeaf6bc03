"""In-process cases for the referral stage tests: real database, real spool, real de-identification stage.

A case is built the way the node builds it: the original Part 10 files go into the spool with their
``Study``/``Series``/``Instance`` rows (as the SCP leaves them), the case is COMPLETE, and the lead's
``DeidStage`` de-identifies it into the outbound area and fills ``StudyIdentity``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pydicom

from gateway.config import GatewayConfig
from gateway.stages.deid import DeidStage
from gateway.storage.models import (
    CaseState,
    Instance,
    Series,
    Source,
    Study,
    db,
    open_database,
    sync_sources,
    utcnow,
)
from gateway.storage.spool import Spool

SOURCE = "st-marys"
SOURCE_AE = "STMARYS_PACS"
SECRET = bytes(range(32))

#: A referral for the demo patient (gateway.demo.DemoPatient), its free text full of identifiers.
PHI_REFERRAL = {
    "source": SOURCE,
    "accession_number": "A1234567",
    "patient": {"id": "MRN0012345", "name": "Doe^Jane", "birth_date": "1971-04-12"},
    "urgency": "routine",
    "referrer": {"name": "Dr Alan Smith", "contact": "alan.smith@stmarys.example, +44 20 7946 0000"},
    "study_date": "2026-11-20",
    "clinical": {
        "history": ("Jane Doe (MRN0012345, DOB 12/04/1971), seen at St Mary's Hospital on 03/02/2024 by "
                    "Dr Alan Smith. Low back pain for 10 weeks, history of breast cancer. Call 020 7946 0123 "
                    "or mail jane.doe@example.com, see https://portal.stmarys.example/p/MRN0012345. "
                    "Lives at 1 High Street, London W1A 1AA. Mrs Doe says the pain is worse at night."),
        "symptoms": "Mrs Jane Marrie Doe reports saddle anaesthesia and new urinary retention since 1st March 2024.",
        "pain": {"location": "lower back radiating to the left calf", "intensity": 7,
                 "nature": "burning, shooting", "duration_weeks": 10, "radiation": "L5 dermatome"},
        "red_flags": ["progressive_neurological_deficit"],
        "examination": "Reduced left ankle reflex, EHL 4/5, SLR positive at 40 degrees. Accession A1234567.",
        "emg": "EMG 2024-02-20: chronic L5 radiculopathy on the left.",
        "prior_treatment": "Physiotherapy for 6 weeks without improvement; phone Jane on 07700 900123.",
        "prior_imaging": "X-ray 15 Jan 2024 at St Mary's Hospital: normal.",
        "question": "L4-L5 or L5/S1 disc herniation with root compression? VAS 7/10.",
    },
}

#: Every identifier of PHI_REFERRAL and of the demo study that must not leave the gateway.
PHI_VALUES = ["Jane", "Doe", "Marrie", "MRN0012345", "A1234567", "1971", "19710412", "12/04/1971", "Alan",
              "Smith", "alan.smith", "stmarys.example", "St Mary", "7946", "07700", "900123", "jane.doe",
              "W1A 1AA", "High Street", "DOE^JANE", "SMITH^ALAN", "03/02/2024", "1st March 2024",
              "15 Jan 2024", "2024-02-20", "MARIE"]


def referral_document(**changes: object) -> dict:
    """A deep copy of :data:`PHI_REFERRAL` with top-level ``changes``."""
    document = json.loads(json.dumps(PHI_REFERRAL))
    document.update(changes)
    return document


@dataclass
class CaseWorld:
    """A database, spool and configuration for in-process stage runs."""

    config: GatewayConfig
    spool: Spool

    def receive_complete(self, files: list[Path]) -> Study:
        """Put ``files`` in the spool as the SCP would, and mark their study COMPLETE."""
        source = Source.get(Source.name == SOURCE)
        study = None
        for path in files:
            data = Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            stored = self.spool.store(data, digest)
            header = pydicom.dcmread(path, stop_before_pixels=True)
            if study is None:
                study = Study.create(study_uid=header.StudyInstanceUID, source=source, calling_ae=SOURCE_AE,
                                     state=CaseState.COMPLETE)
            series, _ = Series.get_or_create(series_uid=header.SeriesInstanceUID,
                                             defaults={"study": study, "modality": header.Modality})
            Instance.create(study=study, series=series, sop_instance_uid=header.SOPInstanceUID,
                            sop_class_uid=header.SOPClassUID, transfer_syntax=header.file_meta.TransferSyntaxUID,
                            size=len(data), sha256=digest, spool_path=self.spool.relative(stored),
                            calling_ae=SOURCE_AE)
        assert study is not None
        return study

    def deidentified_case(self, files: list[Path]) -> Study:
        """A case in DEIDENTIFIED, de-identified by the real DeidStage."""
        study = self.receive_complete(files)
        DeidStage(self.config.deid.options(), SECRET, self.spool).run_once(utcnow())
        study = Study.get_by_id(study.id)
        assert study.state == CaseState.DEIDENTIFIED, study.state
        return study


def make_world(tmp_path: Path, **referrals: object) -> CaseWorld:
    """Open a fresh SQLite database in ``tmp_path`` and return the world around it."""
    config = GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool"), "database": f"sqlite:///{tmp_path}/gateway.db",
                    "min_free_bytes": 0},
        "sources": [{"name": SOURCE, "ae_title": SOURCE_AE}],
        "referrals": referrals,
        "logging": {"file": None},
    })
    open_database(config.storage.database, max_connections=4)
    sync_sources([(SOURCE, SOURCE_AE)])
    spool = Spool(config.storage.spool_dir)
    spool.prepare()
    return CaseWorld(config, spool)


def close_world() -> None:
    if not db.is_closed():
        db.close()
