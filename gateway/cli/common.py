"""What every command module shares: the one-line mistake, the database a command opens, its logging.

Its own module so that ``main`` (which gathers the commands) and the command modules (referral, reports,
users) both import it, and neither imports the other back.
"""

from __future__ import annotations

import os

from gateway.config import GatewayConfig
from gateway.errors import DatabaseUnavailable, GatewayError


class UsageError(GatewayError):
    """A command-line mistake: reported in one line, exit code 2."""


VERBOSE = [False]  # -v: a command's log events also on stderr (set by main before the command runs)


def configure_logging(config: GatewayConfig, *, to_file: bool, console: bool | None = None) -> None:
    """Log as the configuration says; a command that only reads (echo) keeps its log off the node's file. A
    command's events go to the log file only, not between its own output, unless ``-v`` (``serve`` passes
    ``console=True``)."""
    from gateway.ops import logs

    logging_config = config.logging if to_file else config.logging.model_copy(update={"file": None})
    logs.configure_logging(logging_config, strict=os.environ.get("SPINE_GATEWAY_LOG_STRICT") == "1",
                           console=VERBOSE[0] if console is None else console)


def open_command_database(config: GatewayConfig) -> None:
    """Open the database for a command: the one place where every command that writes gets at it.

    With ``routing.wakeups`` it also installs the command's wake-ups (``gateway.storage.wakeup.CommandWakeups``): a
    case the command moves wakes the node's stage at once, through NOTIFY on PostgreSQL and the node's socket
    on SQLite, instead of at the node's next poll.
    """
    from gateway.storage import wakeup
    from gateway.storage.models import open_database

    try:
        database = open_database(config.storage.database, max_connections=2)
    except Exception as exc:  # noqa: BLE001 - a database the CLI cannot open is the user's situation, not a bug
        raise DatabaseUnavailable(f"cannot open the database ({type(exc).__name__}); check storage.database and "
                                  "that the database server is running") from None
    if config.routing.wakeups and wakeup.current() is None:  # in a node's own process, the node's do it
        wakeup.install(wakeup.CommandWakeups(database, config.storage.spool_dir))
