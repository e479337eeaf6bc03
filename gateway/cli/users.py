"""``spine-gateway user add|list|disable``: portal accounts (thin: parse, call :mod:`gateway.accounts.users`)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from gateway.cli.common import UsageError, configure_logging, open_command_database, print_listing
from gateway.config import GatewayConfig

if TYPE_CHECKING:
    from gateway.accounts.users import Account

__all__ = ["add_user_commands"]

EXIT_OK = 0


def add_user_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``user add``, ``user list`` and ``user disable`` on the CLI's sub-command parser."""
    user = commands.add_parser("user", help="web portal accounts: referrers, reviewers, operators")
    actions = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create an account (the password is asked for, or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("referrer", "reviewer", "ops"))
    who = add.add_mutually_exclusive_group()
    who.add_argument("--source", help="for a referrer: the configured source it writes for")
    who.add_argument("--reviewer", help="for a reviewer: the configured reviewer it is")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(func=cmd_user_add)
    listing = actions.add_parser("list", help="the accounts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_user_list)
    disable = actions.add_parser("disable", help="disable an account and sign it out everywhere")
    disable.add_argument("name")
    disable.set_defaults(func=cmd_user_disable)


def _open(config: GatewayConfig) -> None:
    configure_logging(config, to_file=True)  # the audit event goes to the log file, as for retry and release
    open_command_database(config)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("password again: "):
        raise UsageError("the two passwords differ")
    return first


def cmd_user_add(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.accounts.users import AccountError, add_user
    from gateway.ops import audit
    from gateway.storage.models import db

    password = _password(args.password_stdin)
    _open(config)
    try:
        with db.connection_context():
            add_user(config, args.name, args.role, password, source=args.source, reviewer=args.reviewer)
            audit.record("user_added", actor_ae=None, actor_host=getpass.getuser()[:64], study_key=None,
                         detail=f"user {args.name} role {args.role}")
    except AccountError as exc:
        raise UsageError(str(exc)) from None
    print(f"user {args.name} added ({args.role})")
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.accounts.users import list_users
    from gateway.storage.models import db

    _open(config)
    with db.connection_context():
        accounts = list_users()
    print_listing(accounts, as_json=args.json, line=_account_line)
    return EXIT_OK


def _account_line(a: Account) -> str:
    scope = a.source or a.reviewer or "-"
    return (f"{a.name:24} {a.role:9} {scope:20} {'enabled' if a.enabled else 'disabled':9} "
            f"last login {a.last_login_at or 'never'}")


def cmd_user_disable(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.accounts.users import AccountError, disable_user
    from gateway.ops import audit
    from gateway.storage.models import db

    _open(config)
    try:
        with db.connection_context():
            disable_user(args.name)
            audit.record("user_disabled", actor_ae=None, actor_host=getpass.getuser()[:64], study_key=None,
                         detail=f"user {args.name}")
    except AccountError as exc:
        raise UsageError(str(exc)) from None
    print(f"user {args.name} disabled")
    return EXIT_OK
