"""The gateway's DICOM application entity as an SCP: contexts, limits, TLS, and the handler bindings."""

from __future__ import annotations

import ssl

from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from gateway.config import NodeConfig
from gateway.dicomnet import ACCEPTED_TRANSFER_SYNTAXES
from gateway.scp.handlers import ScpHandlers


def build_ae(node: NodeConfig, known_ae_titles: list[str]) -> AE:
    """An AE accepting C-ECHO and every storage SOP class pynetdicom knows, in the syntaxes we prefer."""
    ae = AE(ae_title=node.ae_title)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.max_pdu_bytes
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    # Backstops: our EVT_REQUESTED handler decides first and logs why; these never let anyone else in.
    ae.require_called_aet = True
    ae.require_calling_aet = known_ae_titles
    ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def tls_context(node: NodeConfig) -> ssl.SSLContext | None:
    tls = node.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file:
        context.load_verify_locations(str(tls.ca_file))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return context


def start_scp(node: NodeConfig, handlers: ScpHandlers) -> ThreadedAssociationServer:
    """Start listening in the background; the caller stops it with ``server.shutdown()``."""
    ae = build_ae(node, handlers.policy.known_ae_titles())
    return ae.start_server((node.host, node.port), block=False, evt_handlers=handlers.bindings(),
                           ssl_context=tls_context(node))
