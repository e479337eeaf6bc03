"""``spine-gateway dicomweb token issue|revoke|list``: the reviewers' DICOMweb bearer tokens (thin: parse, call
:mod:`gateway.accounts.tokens`). A token is printed once, at issue; the database keeps only its hash."""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING

from gateway.cli.common import UsageError, configure_logging, open_command_database, print_listing
from gateway.config import GatewayConfig

if TYPE_CHECKING:
    from gateway.accounts.tokens import TokenInfo

__all__ = ["add_dicomweb_commands"]

EXIT_OK = 0


def add_dicomweb_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``dicomweb token issue``, ``revoke`` and ``list`` on the CLI's sub-command parser."""
    dicomweb = commands.add_parser("dicomweb", help="DICOMweb for reviewers: bearer tokens of their viewers")
    what = dicomweb.add_subparsers(dest="dicomweb_command", required=True, metavar="WHAT")
    token = what.add_parser("token", help="issue, revoke or list a reviewer's DICOMweb bearer tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = actions.add_parser("issue", help="a new token for a configured reviewer (printed once)")
    issue.add_argument("reviewer", help="the configured reviewer's name")
    issue.add_argument("--label", default="", help="what it is for, e.g. 'home workstation' (no patient data)")
    issue.set_defaults(func=cmd_token_issue)
    revoke = actions.add_parser("revoke", help="revoke a token by its id (the part before the dot; see list)")
    revoke.add_argument("token_id")
    revoke.set_defaults(func=cmd_token_revoke)
    listing = actions.add_parser("list", help="every token (never its secret)")
    listing.add_argument("--reviewer", default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_token_list)


def _open(config: GatewayConfig) -> None:
    configure_logging(config, to_file=True)  # the audit event goes to the log file, as for user add
    open_command_database(config)


def cmd_token_issue(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.accounts.tokens import TokenError, issue
    from gateway.ops import audit
    from gateway.storage.models import db

    _open(config)
    operator = getpass.getuser()[:64]
    try:
        with db.connection_context():
            token = issue(config, args.reviewer, args.label, issued_by=operator)
            audit.record("dicomweb_token_issued", actor_ae=None, actor_host=operator, study_key=None,
                         detail=f"token {token.split('.')[0]} for reviewer {args.reviewer}")
    except TokenError as exc:
        raise UsageError(str(exc)) from None
    print(token)
    print(f"# DICOMweb token {token.split('.')[0]} for reviewer {args.reviewer}: shown only now. The viewer sends "
          "it as 'Authorization: Bearer <token>'.")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.accounts.tokens import TokenError, revoke
    from gateway.ops import audit
    from gateway.storage.models import db

    _open(config)
    try:
        with db.connection_context():
            info = revoke(args.token_id)
            audit.record("dicomweb_token_revoked", actor_ae=None, actor_host=getpass.getuser()[:64],
                         study_key=None, detail=f"token {info.token_id} of reviewer {info.reviewer}")
    except TokenError as exc:
        raise UsageError(str(exc)) from None
    print(f"DICOMweb token {info.token_id} of reviewer {info.reviewer} revoked")
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.accounts.tokens import listed
    from gateway.storage.models import db

    _open(config)
    with db.connection_context():
        rows = listed(args.reviewer)
    print_listing(rows, as_json=args.json, line=_token_line)
    return EXIT_OK


def _token_line(row: TokenInfo) -> str:
    state = f"revoked {row.revoked_at}" if row.revoked_at else "live"
    return (f"{row.token_id}  {row.reviewer:20} {state:28} issued {row.issued_at} by {row.issued_by or '-':12} "
            f"last used {row.last_used_at or 'never'}  {row.label}")
