"""The referral commands of ``spine-gateway``: ``referral add FILE``, ``notes show CASE``, ``notes approve CASE``.

Thin: parse, open the database, call the library, print, return an exit code. A user's mistake is one line
on stderr and exit 2; for an invalid referral that is one line per problem, each naming the field.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Literal

from gateway.cli.common import UsageError, open_command_database, print_json
from gateway.config import GatewayConfig

__all__ = ["add_referral_commands", "cmd_notes_approve", "cmd_notes_show", "cmd_referral_add"]

EXIT_OK, EXIT_USAGE = 0, 2
_YAML_SUFFIXES = {".yaml", ".yml"}


def add_referral_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``referral`` and ``notes`` on the CLI's sub-command parser."""
    referral = commands.add_parser("referral", help="referrals: add one from a JSON or YAML file")
    referral_commands = referral.add_subparsers(dest="referral_command", required=True, metavar="ACTION")
    add = referral_commands.add_parser("add", help="validate and store a referral (JSON or YAML)")
    add.add_argument("file", type=Path, help="the referral document (.json, .yaml or .yml)")
    add.set_defaults(func=cmd_referral_add)

    notes = commands.add_parser("notes", help="the scrubbed notes of a case: show, approve")
    notes_commands = notes.add_subparsers(dest="notes_command", required=True, metavar="ACTION")
    show = notes_commands.add_parser("show", help="original and scrubbed notes of a case, side by side")
    show.add_argument("case", help="the case (study key)")
    show.add_argument("--json", action="store_true", help="machine-readable output (the same content)")
    show.set_defaults(func=cmd_notes_show)
    approve = notes_commands.add_parser("approve", help="approve the scrubbed notes of a case")
    approve.add_argument("case", help="the case (study key)")
    approve.set_defaults(func=cmd_notes_approve)


def _open(config: GatewayConfig) -> None:
    from gateway.ops.logs import configure_logging

    configure_logging(config.logging, strict=os.environ.get("SPINE_GATEWAY_LOG_STRICT") == "1", console=False)
    open_command_database(config)  # with the command's wake-ups: a referral or approval wakes the node


def cmd_referral_add(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.referral.document import parse_referral
    from gateway.referral.errors import ReferralValidationError
    from gateway.referral.intake import store_referral
    from gateway.storage.models import db

    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    fmt: Literal["json", "yaml"] = "yaml" if path.suffix.lower() in _YAML_SUFFIXES else "json"
    try:
        referral = parse_referral(data, fmt)
        _open(config)
        with db.connection_context():
            row = store_referral(referral, "cli")
    except ReferralValidationError as exc:
        for problem in exc.problems:
            print(f"spine-gateway: {path.name}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    matched = f", matched to case {row.study.key}" if row.study is not None else ", waiting for its study"
    print(f"referral {row.id} stored{matched}")
    return EXIT_OK


def _stage(config: GatewayConfig):  # noqa: ANN202 - a NotesStage (imported late to keep the CLI light)
    from gateway.stages.referral import NotesStage
    from gateway.storage.spool import Spool

    return NotesStage.of(config, Spool(config.storage.spool_dir, config.storage.min_free_bytes))


def cmd_notes_show(args: argparse.Namespace, config: GatewayConfig) -> int:
    from rich.console import Console

    from gateway.referral.review import UnknownCase, preview_as_dict, preview_notes, render_preview
    from gateway.stages.referral import NotesStageError
    from gateway.storage.models import db

    _open(config)
    try:
        with db.connection_context():
            preview = preview_notes(_stage(config), args.case)
    except (UnknownCase, NotesStageError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(preview_as_dict(preview), ascii_only=False)
    else:
        render_preview(preview, Console())
    return EXIT_OK


def cmd_notes_approve(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.referral.review import ApprovalRefused, UnknownCase, approve_notes
    from gateway.storage.models import db

    _open(config)
    try:
        with db.connection_context():
            who = approve_notes(args.case)
    except UnknownCase as exc:
        raise UsageError(str(exc)) from None
    except ApprovalRefused as exc:
        raise UsageError(f"case {args.case}: {exc} (redact on the case's portal page, /ops/cases/{args.case}; "
                         "an identifier in the images: spine-gateway release)") from None
    print(f"notes of case {args.case} approved by {who}")
    return EXIT_OK
