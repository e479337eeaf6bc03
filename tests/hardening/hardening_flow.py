"""Driving the whole pipeline for the fault, load and soak runs: senders that keep what was acknowledged,
a gateway that can be killed and restarted, and the wait for every acknowledged instance to arrive."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
from pynetdicom import AE, StoragePresentationContexts, _config

from gateway.dicom.net import NODELAY_HANDLER
from hardening_support import GATEWAY_AE, SOURCE_AE, CountingReviewer, DeliveryAccount, account
from support.peers import GatewayProcess, wait_until

_config.STORE_SEND_CHUNKED_DATASET = True


class Ledger:
    """SOP Instance UIDs the gateway acknowledged with 0x0000, and every other status seen (thread-safe)."""

    def __init__(self) -> None:
        self.acknowledged: set[str] = set()
        self.failures: list[int | None] = []
        self._lock = threading.Lock()

    def record(self, uid: str, code: int | None) -> None:
        with self._lock:
            if code == 0x0000:
                self.acknowledged.add(uid)
            else:
                self.failures.append(code)


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def send_files(port: int, files: list[Path], ledger: Ledger, uids: dict[Path, str],
               calling: str = SOURCE_AE) -> int:
    """C-STORE ``files`` over one pynetdicom association, recording each answer; returns how many were
    acknowledged. A dropped association (the node killed) ends the run quietly: the caller resends."""
    ae = AE(ae_title=calling)
    for context in StoragePresentationContexts[:120]:
        ae.add_requested_context(context.abstract_syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AE, evt_handlers=[NODELAY_HANDLER])
    except (OSError, RuntimeError):
        return 0
    if not assoc.is_established:
        return 0
    acknowledged = 0
    try:
        for path in files:
            try:
                code = getattr(assoc.send_c_store(path), "Status", None)
            except (RuntimeError, ValueError, OSError):
                code = None
            ledger.record(uids[path], code)
            acknowledged += code == 0x0000
            if code is None or not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return acknowledged


def unacknowledged(files: list[Path], ledger: Ledger, uids: dict[Path, str]) -> list[Path]:
    return [p for p in files if uids[p] not in ledger.acknowledged]


def restart(node: GatewayProcess) -> None:
    """Start a node that was killed, on the same ports, database and spool."""
    node.start(timeout=60)


def wait_all_delivered(node: GatewayProcess, database_url: str, ledger: Ledger, reviewer: CountingReviewer,
                       timeout: float) -> DeliveryAccount:
    """Until every acknowledged instance has reached the reviewer and no case is left in flight."""
    in_flight = {"receiving", "complete", "deidentified", "notes_attached", "assigned", "delivering", "held"}

    def done() -> DeliveryAccount | None:
        result = account(database_url, ledger.acknowledged, reviewer)
        if result.lost:
            return None
        states = node.status()["cases_by_state"]
        return None if set(states) & in_flight else result

    return wait_until(done, timeout, "every acknowledged instance at the reviewer", interval=0.5)


def assert_exactly_once(result: DeliveryAccount) -> None:
    assert not result.not_stored, f"acknowledged but not stored: {result.summary()}"
    assert not result.lost, f"lost: {result.summary()}"
    assert not result.duplicated, f"delivered as two different objects: {result.summary()}"
    assert not result.unexplained, f"objects at the reviewer that no instance maps to: {result.summary()}"
