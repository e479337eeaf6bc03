"""A reviewer workstation for the tests that counts every C-STORE it receives, per SOP Instance UID.

Orthanc and storescp overwrite an instance received twice, so they cannot show a duplicate delivery; this
pynetdicom SCP (a real DICOM peer on a loopback port) records each one, and the study each belongs to. It answers
a C-FIND at IMAGE level (Study Root) with the instances it holds of a study, as a reviewer with ``query: true``
is asked after an interrupted delivery.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from gateway.dicom.net import ACCEPTED_TRANSFER_SYNTAXES, NODELAY_HANDLER
from support.peers import free_port


class RecordingSCP:
    def __init__(self, ae_title: str = "REVIEW_A", delay_s: float = 0.0) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.delay_s = delay_s
        self.received: Counter[str] = Counter()
        self.patient_names: set[str] = set()
        self.study_of: dict[str, str] = {}  # SOP Instance UID -> Study Instance UID
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)
        dataset = event.dataset
        with self._lock:
            self.received[str(dataset.SOPInstanceUID)] += 1
            self.patient_names.add(str(dataset.get("PatientName", "")))
            self.study_of[str(dataset.SOPInstanceUID)] = str(dataset.StudyInstanceUID)
        return 0x0000

    def _on_find(self, event: evt.Event):
        study_uid = str(event.identifier.get("StudyInstanceUID", ""))
        with self._lock:
            held = [uid for uid, study in self.study_of.items() if study == study_uid]
        for uid in held:
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.StudyInstanceUID = study_uid
            answer.SOPInstanceUID = uid
            yield 0xFF00, answer
        yield 0x0000, None

    def studies(self) -> dict[str, set[str]]:
        """Study Instance UID -> the SOP Instance UIDs received in it."""
        with self._lock:
            found: dict[str, set[str]] = {}
            for uid, study in self.study_of.items():
                found.setdefault(study, set()).add(uid)
            return found

    def start(self) -> RecordingSCP:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[NODELAY_HANDLER, (evt.EVT_C_STORE, self._on_store),
                                                     (evt.EVT_C_FIND, self._on_find)])
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {uid: n for uid, n in self.received.items() if n > 1}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
