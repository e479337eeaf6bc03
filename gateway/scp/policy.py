"""Who may open an association with the gateway, decided during association negotiation."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.dicom import status


@dataclass(frozen=True)
class Caller:
    """An admitted peer: a configured source (sends studies) or reviewer (sends reports)."""

    role: str  # "source" or "reviewer"
    name: str
    ae_title: str


class AssociationRefused(Exception):
    """The association request must be rejected. ``reason`` is logged; the rest goes in the A-ASSOCIATE-RJ."""

    def __init__(self, reason: str, diagnostic: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = status.REJECTED_PERMANENT
        self.source = status.SOURCE_SERVICE_USER
        self.diagnostic = diagnostic

    @classmethod
    def local_limit(cls) -> AssociationRefused:
        """The node has ``node.max_associations`` open (transient: try again later), as pynetdicom answers."""
        return cls._transient("too_many_associations")

    @classmethod
    def over_share(cls, reason: str) -> AssociationRefused:
        """The calling AE title or host already holds its share of the slots (``node.peer_share``): transient,
        local limit exceeded, as for the node's own limit; ``reason`` says which of the two."""
        return cls._transient(reason)

    @classmethod
    def over_rate(cls) -> AssociationRefused:
        """The calling host or AE title opens associations faster than ``node.association_rate_per_peer``
        (transient, local limit exceeded: it may try again in a moment)."""
        return cls._transient("association_rate_exceeded")

    @classmethod
    def _transient(cls, reason: str) -> AssociationRefused:
        refusal = cls(reason, status.DIAG_LOCAL_LIMIT_EXCEEDED)
        refusal.result = status.REJECTED_TRANSIENT
        refusal.source = status.SOURCE_SERVICE_PROVIDER_PRESENTATION
        return refusal


class AssociationPolicy:
    """Calling AE title must be a configured source or reviewer (and come from its host, a source's ``host`` or a
    reviewer's ``calling_hosts``, when one is set); the called AE title must be ours."""

    def __init__(self, config: GatewayConfig) -> None:
        self.own_ae_title = config.node.ae_title
        self.sources = {s.ae_title: s for s in config.sources}
        self.reviewers = {r.ae_title: r for r in config.reviewers}

    def admit(self, calling_ae: str, called_ae: str, peer_host: str) -> Caller:
        """Return who is calling.

        Raises:
            AssociationRefused: unknown calling AE, wrong host, or wrong called AE.
        """
        calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
        if called_ae != self.own_ae_title:
            raise AssociationRefused("called_ae_not_recognized", status.DIAG_CALLED_AE_NOT_RECOGNIZED)
        source = self.sources.get(calling_ae)
        if source is not None:
            if source.host and source.host != peer_host:
                raise AssociationRefused("calling_host_not_allowed", status.DIAG_CALLING_AE_NOT_RECOGNIZED)
            return Caller("source", source.name, calling_ae)
        reviewer = self.reviewers.get(calling_ae)
        if reviewer is not None:
            if reviewer.calling_hosts and peer_host not in reviewer.calling_hosts:
                raise AssociationRefused("calling_host_not_allowed", status.DIAG_CALLING_AE_NOT_RECOGNIZED)
            return Caller("reviewer", reviewer.name, calling_ae)
        raise AssociationRefused("calling_ae_not_recognized", status.DIAG_CALLING_AE_NOT_RECOGNIZED)

    def known_ae_titles(self) -> list[str]:
        return sorted({*self.sources, *self.reviewers})
