"""The gateway's DICOM application entity as an SCP: contexts, limits, TLS, and the handler bindings."""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from gateway.config import GatewayConfig, NodeConfig
from gateway.dicom.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from gateway.dicom.commitment import SYNTAXES as COMMITMENT_SYNTAXES
from gateway.dicom.net import (
    ACCEPTED_TRANSFER_SYNTAXES,
    copy_contexts_cheaply,
    register_server,
    stop_unregistered_server,
)
from gateway.scp.commitment_intake import CommitmentIntake
from gateway.scp.gate import Dropped, NegotiationGate, reject, requested_ae_titles
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy, AssociationRefused
from gateway.scp.quarantine import QuarantineBudget
from gateway.scp.rate import AssociationRate
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.report_intake import ReportIntake
from gateway.scp.slots import AssociationSlots
from gateway.stages.context import NodeContext
from gateway.storage.models import Source
from gateway.storage.spool import Spool

FULL_COLLECTION_EVERY_S = 10.0  # at most one full garbage collection by the accepting loop in this time
LINGERING_ASSOCIATIONS = 256  # association threads past their end (aborted, waiting for the peer to close)


def build_ae(node: NodeConfig, known_ae_titles: list[str]) -> AE:
    """An AE accepting C-ECHO, Storage Commitment Push Model (N-ACTION) and every storage SOP class pynetdicom
    knows, in the syntaxes we prefer."""
    ae = AE(ae_title=node.ae_title)
    # The limit is ours (gateway.scp.slots: the node's slots and each peer's share, freed when an association
    # ends). pynetdicom's own counts its association threads still alive, which includes those of associations
    # already aborted (a peer's garbage PDU) whose DUL waits out the ARTIM timer for the peer to close: after a
    # burst of fuzzed PDUs it refused every sender for as long. Its limit stays only as a backstop on threads.
    ae.maximum_associations = node.max_associations + LINGERING_ASSOCIATIONS
    ae.maximum_pdu_size = node.max_pdu_bytes
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    # Backstops: our EVT_REQUESTED handler decides first and logs why; these never let anyone else in.
    ae.require_called_aet = True
    ae.require_calling_aet = known_ae_titles
    ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
    # Both roles: a source asks us (we are its SCP); a reviewer reports to us on a request of ours, proposing the
    # SCP role for itself through SCP/SCU Role Selection (PS3.4 J.3.3), which is accepted as proposed.
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, COMMITMENT_SYNTAXES, scu_role=True, scp_role=True)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def node_handlers(config: GatewayConfig, spool: Spool, node: str, slots: AssociationSlots | None,
                  context: NodeContext) -> ScpHandlers:
    """The handlers of a process accepting on the node's port (the node or one of its receiving processes): the
    association policy, the instance receiver (its rows tagged ``node``) and the report intake, each handed
    ``context``: the process's database, wake-ups and metrics (a receiving process's forward to the node)."""
    with context.database.connection_context():
        source_ids = {row.ae_title: row.id for row in Source.select()}
    receiver = InstanceReceiver(spool, source_ids, node, commit_timeout_s=config.node.store_commit_timeout_s,
                                context=context)
    return ScpHandlers(AssociationPolicy(config), receiver, ReportIntake(spool, context=context), slots,
                       ae_share=config.node.ae_share, host_share=config.node.host_share,
                       quarantine=QuarantineBudget(config.quarantine.max_bytes_per_peer,
                                                   config.quarantine.max_objects_per_peer, context=context),
                       max_instance_bytes=config.node.max_instance_bytes,
                       commitments=CommitmentIntake(config.commitment, config.sources, context=context),
                       rate=association_rate(config, slots), context=context)


def association_rate(config: GatewayConfig, slots: AssociationSlots | None) -> AssociationRate | None:
    """``node.association_rate_per_peer``'s buckets (None: no limit): the node's, in its association file when
    receiving processes accept on the port too, else this process's."""
    per_s = config.node.association_rate_per_peer
    if per_s is None:
        return None
    if slots is not None and slots.processes > 1:
        return AssociationRate(per_s, buckets=slots.rate_buckets())
    return AssociationRate(per_s)


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


class GatedRequestHandler(RequestHandler):
    """pynetdicom's handler for one connection, behind the negotiation gate (``gateway.scp.gate``): the
    ``Association`` (and its slot under ``max_associations``) is made only for a connection that has sent an
    A-ASSOCIATE-RQ in time."""

    server: GatedAssociationServer

    def handle(self) -> None:
        started = time.monotonic()
        gate, host, sock = self.server.gate, str(self.client_address[0]), self.request
        try:
            if self.server.closing.is_set():
                raise Dropped("server_stopping")
            gate.wait_for_request(sock, started)
        except (Dropped, OSError) as failure:
            reason = failure.reason if isinstance(failure, Dropped) else "closed_before_request"
            if gate.leave(host, sock):  # else displaced, and recorded as such by the gate
                gate.dropped(host, reason)
            self.server.shutdown_request(sock)
            return
        except BaseException:
            gate.leave(host, sock)
            raise
        if not gate.leave(host, sock):  # displaced (and shut) just as its request arrived
            self.server.shutdown_request(sock)
            return
        if self._over_rate(host, sock):
            self.server.shutdown_request(sock)
            return
        super().handle()

    def _over_rate(self, host: str, sock: Any) -> bool:
        """The host or AE title opens associations too fast (``gateway.scp.rate``): answered with an
        A-ASSOCIATE-RJ here, before pynetdicom makes an association (and its threads) of the request."""
        check = self.server.rate_refusal
        if check is None:
            return False
        titles = requested_ae_titles(sock)
        called, calling = titles if titles is not None else (None, None)
        refusal = check(host, calling, called)
        if refusal is None:
            return False
        reject(sock, refusal.result, refusal.source, refusal.diagnostic)
        return True


BALANCE_WAIT_S = 0.05         # longest a connection waits for a less busy process to accept it
BALANCE_POLL_S = 0.001        # how often a busier process looks again meanwhile
BALANCE_EPISODE_GAP_S = 0.01  # a pause longer than this between looks: a new connection is waiting


class GatedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate: a place per host is taken on accept (no thread is started
    for a host whose places are taken), and a TLS handshake happens in the connection's own thread, within
    the gate's deadline, instead of in the accepting thread (where a silent client held every other one up)."""

    block_on_close = False  # stopping does not wait for connections still in the gate (they are dropped)
    # The listen backlog (socketserver's default is 5): a burst of connections (a scan, many senders starting
    # at once) beyond it has its SYNs dropped, and each waits a second for its SYN to be sent again.
    request_queue_size = socket.SOMAXCONN
    daemon_threads = True

    def __init__(self, *args: Any, gate: NegotiationGate, listening: socket.socket | None = None,
                 slots: AssociationSlots | None = None,
                 rate_refusal: Callable[[str, str | None, str | None], AssociationRefused | None] | None = None,
                 **kwargs: Any) -> None:
        self.gate = gate
        self.rate_refusal = rate_refusal  # ScpHandlers.rate_refusal, when node.association_rate_per_peer is set
        self.closing = threading.Event()
        self._inherited = listening
        self.slots = slots  # where several processes accept on the port: the busier ones let the others accept
        self._yielding_since = self._last_yield = float("-inf")
        self._last_collection = time.monotonic()
        # This process's other work, counted as associations when choosing who accepts (the node: its HTTP
        # connections): during a sign-in flood the node's threads held the GIL and a legitimate store it had
        # accepted took 10x its quiet time, while its receiving process stood idle (issue 28).
        self.other_work: Callable[[], int] = lambda: 0
        self.registered = False  # with its AE, as AE.start_server does (gateway.dicom.net.register_server)
        super().__init__(*args, **kwargs)
        # Non-blocking: where several processes accept on one socket, all are woken for a connection and the
        # ones that lose the race get EAGAIN (socketserver ignores it) instead of blocking in accept().
        self.socket.setblocking(False)

    def server_bind(self) -> None:
        if self._inherited is None:
            super().server_bind()
            return
        self.socket.close()  # the one TCPServer made: a receiving process uses the node's, already listening
        self.socket = self._inherited
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._inherited is None:
            super().server_activate()

    def server_close(self) -> None:
        if self._inherited is None:
            super().server_close()
            return
        # Only our descriptor: pynetdicom's shutdown(SHUT_RDWR) would stop the node's socket listening for every
        # process that shares it.
        self.socket.close()

    def get_request(self) -> tuple[socket.socket, Any]:
        if not self._my_turn_to_accept():
            # socketserver ignores the error: the next select finds the connection still there, unless a less
            # busy process has accepted it meanwhile
            raise BlockingIOError("a less busy process accepts this connection")
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True,
                                                         do_handshake_on_connect=False)
        return client_socket, address

    def _my_turn_to_accept(self) -> bool:
        """True unless another process on the port serves fewer associations, and only for ``BALANCE_WAIT_S``
        per connection (a process that stopped accepting must not hold connections up)."""
        if self.slots is None:
            return True
        now = time.monotonic()
        if now - self._last_yield > BALANCE_EPISODE_GAP_S:
            self._yielding_since = now  # a new connection waits, not the one this process just let go
        if now - self._yielding_since >= BALANCE_WAIT_S or self._least_busy():
            return True
        self._last_yield = now
        time.sleep(BALANCE_POLL_S)
        return False

    def _least_busy(self) -> bool:
        try:
            return self.slots.least_busy(self.gate.total_pending() + self.other_work())
        except OSError:
            return True  # the shared count cannot be read: accept rather than never

    def service_actions(self) -> None:
        """pynetdicom's runs a full garbage collection every 60 turns of the accepting loop (ended associations'
        threads are in reference cycles). A turn is every connection, and every wake-up of a process that lets
        another accept it, so a flood of short associations made it several a second: in the node (a heap of
        250 MB) the accepting thread then held the GIL most of the time (8 of 10 py-spy samples during
        bench/hostile.py's flood), and pages, stages and the associations it served waited (issue 28). The
        same collection, at most once every :data:`FULL_COLLECTION_EVERY_S`."""
        now = time.monotonic()
        if now - self._last_collection >= FULL_COLLECTION_EVERY_S:
            self._last_collection = now
            gc.collect()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.gate.enter(str(client_address[0]), request)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.gate.leave(str(client_address[0]), request)  # no thread will
            raise

    def shutdown(self) -> None:
        self.closing.set()
        if self.registered:
            super().shutdown()  # pynetdicom's: also takes it off its AE's list
        else:
            stop_unregistered_server(self)


def start_scp(node: NodeConfig, handlers: ScpHandlers, *,
              listening_fd: int | None = None) -> GatedAssociationServer:
    """Start listening in the background; the caller stops it with ``server.shutdown()``.

    As pynetdicom's ``AE.start_server(block=False)``, with ``GatedAssociationServer`` for its server.
    ``listening_fd``: accept on this socket, already bound and listening (a receiving process, on the node's).
    """
    ae = build_ae(node, handlers.policy.known_ae_titles())
    gate = NegotiationGate(node.negotiation_timeout_s, node.max_pending_per_host, metrics=handlers.context.metrics)
    listening = socket.socket(fileno=listening_fd) if listening_fd is not None else None
    server = ae.make_server((node.host, node.port), evt_handlers=handlers.bindings(), ssl_context=tls_context(node),
                            server_class=GatedAssociationServer, request_handler=GatedRequestHandler, gate=gate,
                            listening=listening, slots=handlers.slots,
                            rate_refusal=handlers.rate_refusal if handlers.rate is not None else None)
    server.registered = register_server(ae, server)  # type: ignore[attr-defined]  # ours, read at stop
    copy_contexts_cheaply(server)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True).start()
    return server

