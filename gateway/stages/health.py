"""Peer health: C-ECHO every reviewer and every source's return address each ``routing.echo_interval_s``.

The result of each check is the peer's ``PeerHealth`` row (``reviewer:<name>`` or ``source:<name>``); a
change logs ``peer_down`` (warning) or ``peer_up``, and the first check of a peer that is down logs
``peer_down`` too. The assignment stage skips reviewers whose last check failed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from gateway.config import GatewayConfig, PeerTLSConfig
from gateway.dicom.echo import EchoResult, echo
from gateway.dicom.tls import tls_args
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage.models import PeerHealth

log = structlog.get_logger("routing.health")
ECHO_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Peer:
    name: str  # reviewer:<name> or source:<name>
    ae_title: str
    host: str
    port: int
    tls: PeerTLSConfig = PeerTLSConfig()


def configured_peers(config: GatewayConfig) -> list[Peer]:
    """Every reviewer, and every source that has a return address."""
    peers = [Peer(f"reviewer:{r.name}", r.ae_title, r.host, r.port, r.tls) for r in config.reviewers
             if r.mode == "push"]  # a pull reviewer has no PACS the node sends to
    peers += [Peer(f"source:{s.name}", s.return_.ae_title, s.return_.host, s.return_.port, s.return_.tls)
              for s in config.sources if s.return_ is not None]
    return peers


def record_health(peer: Peer, result: EchoResult, now: dt.datetime) -> bool | None:
    """Write the check; return the new state when it changed (or is a first failure), else None."""
    detail = result.message[:255]
    # Several nodes check the same peers, all at once when they start together: a peer's first row is inserted
    # unless another node's is there (ON CONFLICT DO NOTHING), never read-then-created.
    PeerHealth.insert(name=peer.name, ok=result.ok, checked_at=now, changed_at=now,
                      detail=detail).on_conflict_ignore().execute()
    row = PeerHealth.get(PeerHealth.name == peer.name)
    if row.checked_at == now:  # the row this check inserted: the peer's first result
        return None if result.ok else False
    changed = row.ok != result.ok
    values = {PeerHealth.ok: result.ok, PeerHealth.checked_at: now, PeerHealth.detail: detail}
    if changed:
        values[PeerHealth.changed_at] = now
    PeerHealth.update(values).where(PeerHealth.id == row.id).execute()
    return result.ok if changed else None


class HealthStage(WithNodeContext):
    """C-ECHOes every configured peer every ``echo_interval_s`` (the pipeline calls it every ``poll_s``)."""

    name = "peer_health"

    def __init__(self, own_ae_title: str, peers: Sequence[Peer], interval_s: float,
                 echo_fn: Callable[..., EchoResult] = echo, *, context: NodeContext | None = None) -> None:
        self.own_ae_title = own_ae_title
        self.peers = list(peers)
        self.interval = interval_s
        self.echo = echo_fn
        self._context = context
        self._last_run: float | None = None

    @classmethod
    def of(cls, config: GatewayConfig, echo_fn: Callable[..., EchoResult] = echo, *,
           context: NodeContext | None = None) -> HealthStage:
        """The stage from the whole configuration: the node's AE title, every peer, ``routing.echo_interval_s``."""
        return cls(config.node.ae_title, configured_peers(config), config.routing.echo_interval_s, echo_fn,
                   context=context)

    def run_once(self, now: dt.datetime) -> int:
        if self._last_run is not None and time.monotonic() - self._last_run < self.interval:
            return 0
        self._last_run = time.monotonic()
        return sum(self.check(peer, now) for peer in self.peers)

    def check(self, peer: Peer, now: dt.datetime) -> bool:
        """One C-ECHO; True when the peer's state changed."""
        result = self.echo(self.own_ae_title, peer.ae_title, peer.host, peer.port, ECHO_TIMEOUT_S, tls_args(peer))
        change = record_health(peer, result, now)
        if change is None:
            return False
        if change:
            log.info("peer_up", peer=peer.name, duration_ms=result.duration_ms)
        else:
            log.warning("peer_down", peer=peer.name, reason=result.message, duration_ms=result.duration_ms)
        return True
