"""A reviewer workstation for the tests that counts every C-STORE it receives, per SOP Instance UID.

Orthanc and storescp overwrite an instance received twice, so they cannot show a duplicate delivery; this
pynetdicom SCP (a real DICOM peer on a loopback port) records each one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from gateway.dicom.net import ACCEPTED_TRANSFER_SYNTAXES, NODELAY_HANDLER
from support.peers import free_port


class RecordingSCP:
    def __init__(self, ae_title: str = "REVIEW_A", delay_s: float = 0.0) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.delay_s = delay_s
        self.received: Counter[str] = Counter()
        self.patient_names: set[str] = set()
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)
        dataset = event.dataset
        with self._lock:
            self.received[str(dataset.SOPInstanceUID)] += 1
            self.patient_names.add(str(dataset.get("PatientName", "")))
        return 0x0000

    def start(self) -> RecordingSCP:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[NODELAY_HANDLER, (evt.EVT_C_STORE, self._on_store)])
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
