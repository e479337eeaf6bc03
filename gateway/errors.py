"""Exceptions raised inside the gateway. Each is translated to a DICOM status, an HTTP code or a
one-line CLI message at the edge; none of their messages ever carries a patient identifier."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is missing, unreadable or invalid. The message names the file and the key."""


class SpoolError(GatewayError):
    """An instance could not be made durable (disk full, I/O error, database down)."""


class OutOfResources(SpoolError):
    """Out of disk space or the database is unavailable: the sender should retry later."""


class InvalidInstance(GatewayError):
    """A received dataset cannot be accepted: undecodable, missing UIDs, or contradicting its context.

    ``status`` is the DICOM status to answer with; ``reason`` is a short machine-readable code.
    """

    def __init__(self, reason: str, status: int, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.status = status
        self.detail = detail


class DatabaseUnavailable(GatewayError):
    """The database cannot be reached or opened (an outage, a wrong ``storage.database``): at the CLI, one
    line and exit code 2, like any situation the user has to fix."""


class MllpError(GatewayError):
    """An MLLP exchange with a peer went wrong (refused, reset, closed early, not one frame): send again later."""


class MllpTimeout(MllpError):
    """The peer did not answer within the exchange's deadline."""
