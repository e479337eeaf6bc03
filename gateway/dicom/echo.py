"""C-ECHO as an SCU: is a peer there, and does it accept us?"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from gateway.dicom.net import NODELAY_HANDLER


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    message: str
    duration_ms: int


def echo(own_ae_title: str, ae_title: str, host: str, port: int, timeout: float = 10.0,
         tls: tuple[ssl.SSLContext, str] | None = None) -> EchoResult:
    """Associate (through TLS when ``tls`` gives pynetdicom's ``tls_args``), send one C-ECHO, release. Never
    raises for a peer's failure: the result says what happened."""
    started = time.perf_counter()
    ae = AE(ae_title=own_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=[NODELAY_HANDLER], tls_args=tls)
    elapsed = lambda: int((time.perf_counter() - started) * 1000)  # noqa: E731
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer unreachable or aborted)"
        return EchoResult(False, reason, elapsed())
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(rsp, "Status", None)
    if code == 0x0000:
        return EchoResult(True, "C-ECHO success", elapsed())
    return EchoResult(False, "no C-ECHO response" if code is None else f"C-ECHO status 0x{code:04X}", elapsed())
