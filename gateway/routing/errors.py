"""Exceptions of the routing package (spine filter, assignment, delivery, peer health)."""

from gateway.errors import GatewayError


class RoutingError(GatewayError):
    """Base of the routing errors; messages name cases by key and reviewers by name, never a patient."""
