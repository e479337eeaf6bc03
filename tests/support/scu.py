"""A pynetdicom SCU for the tests, with TCP_NODELAY like every association the gateway itself opens."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, _config
from pynetdicom.sop_class import Verification

from gateway.dicom.net import NODELAY_HANDLER

# Files are sent as their raw bytes, undecoded (like DCMTK), so malformed test datasets reach the gateway.
_config.STORE_SEND_CHUNKED_DATASET = True


def associate(port: int, *, calling: str, called: str = "SPINEGW", contexts: Iterable | None = None,
              ssl_context=None, max_pdu: int = 0):
    ae = AE(ae_title=calling)
    for context in contexts or StoragePresentationContexts[:120]:
        ae.add_requested_context(context.abstract_syntax if hasattr(context, "abstract_syntax") else context)
    ae.add_requested_context(Verification)
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    tls_args = (ssl_context, "localhost") if ssl_context else None
    return ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[NODELAY_HANDLER], tls_args=tls_args)


def send(port: int, items: list[Path | Dataset], *, calling: str, called: str = "SPINEGW",
         after_each: Callable[[int, int], None] | None = None) -> list[int | None]:
    """C-STORE each file or dataset in one association; return the status of each (None: no response)."""
    assoc = associate(port, calling=calling, called=called)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    statuses: list[int | None] = []
    try:
        for index, item in enumerate(items):
            try:
                rsp = assoc.send_c_store(item)
            except (RuntimeError, ValueError):
                statuses.append(None)
                break
            code = getattr(rsp, "Status", None)
            statuses.append(code)
            if code is None or not assoc.is_established:
                break
            if after_each:
                after_each(index, code)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
