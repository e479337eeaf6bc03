"""What every command module shares: the one-line mistake, the database a command opens, its logging, the printing
of JSON and of listings.

Its own module so that ``main`` (which gathers the commands) and the command modules (referral, reports,
users) both import it, and neither imports the other back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import GatewayConfig
from gateway.errors import DatabaseUnavailable, GatewayError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Row = TypeVar("Row", bound="DataclassInstance")


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


def print_json(payload: Any, *, ascii_only: bool = True) -> None:
    """``payload`` as indented JSON on stdout (``ascii_only=False`` keeps the notes' letters as they are)."""
    print(json.dumps(payload, indent=2, ensure_ascii=ascii_only))


def print_listing(rows: Sequence[Row], *, as_json: bool, line: Callable[[Row], str]) -> None:
    """A listing command's rows (dataclasses): as a JSON array with ``as_json``, else one ``line(row)`` each."""
    if as_json:
        print_json([asdict(row) for row in rows])
        return
    for row in rows:
        print(line(row))


# What the driver says when there is no database to talk to (psycopg2, sqlite3): only then is the server's state
# the thing to check. Any other failure (a constraint, a lock, a statement the schema refuses) is named as it is.
_NO_CONNECTION = ("could not connect", "connection to server", "server closed the connection", "connection refused",
                  "could not translate host name", "terminating connection", "the database system is",
                  "password authentication failed", "does not exist", "unable to open database file",
                  "connection already closed", "no route to host", "timeout expired")


def database_failure(exc: BaseException) -> str:
    """One line naming what failed in the database: unavailable (no connection: check the server and
    ``storage.database``) or a statement it refused (the error's type and the first line of its message, the
    constraint or lock involved; never the DETAIL line, which quotes the row's values)."""
    import peewee

    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    said = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    if isinstance(exc, peewee.InterfaceError) or (
            isinstance(exc, peewee.OperationalError) and any(sign in first_line.lower() for sign in _NO_CONNECTION)):
        return f"the database is unavailable ({said}); check storage.database and that the database server is running"
    if isinstance(exc, peewee.OperationalError):
        return f"a database operation failed ({said})"
    return f"the database refused a statement ({said})"


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
        raise DatabaseUnavailable(f"cannot open the database: {database_failure(exc)}") from None
    if config.routing.wakeups and wakeup.current() is None:  # in a node's own process, the node's do it
        wakeup.install(wakeup.CommandWakeups(database, config.storage.spool_dir))
