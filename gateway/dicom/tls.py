"""TLS for the associations the gateway opens (DICOM PS3.15 B.1, the Basic TLS Secure Transport Connection
Profile): one client context per peer, built from the peer's ``tls`` section, handed to pynetdicom's
``AE.associate(tls_args=...)``.

A peer configured for TLS is only ever contacted through it: every place that opens an association asks
:func:`tls_args` for the peer, and there is no fallback to clear text when the handshake fails (the attempt
fails and is retried like any unreachable peer).
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Protocol

from gateway.config import PeerTLSConfig


class TlsPeer(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def tls(self) -> PeerTLSConfig: ...


def tls_args(peer: TlsPeer) -> tuple[ssl.SSLContext, str] | None:
    """``(context, server_hostname)`` for pynetdicom when the peer is configured for TLS, else None."""
    if not peer.tls.enabled:
        return None
    return client_context(peer.tls), peer.tls.server_name or peer.host


@lru_cache(maxsize=64)
def client_context(tls: PeerTLSConfig) -> ssl.SSLContext:
    """TLS 1.2 or later; the peer's certificate checked against ``ca_file`` and its name; the gateway's own
    certificate offered when one is configured (mutual authentication). Cached per configuration: the files
    are read once, not at each association."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context
