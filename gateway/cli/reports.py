"""The report command of ``spine-gateway``: ``report create CASE --findings FILE [--pdf] [--key-images] [--as ...]
[--critical [--call WHOM]]``.

Thin: parse, open the database, call ``gateway.reports.create``, print one line per object, return an exit
code (0 all stored, 1 a refusal or no answer, 2 a user mistake: bad findings file, unknown case or image).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.cli.common import UsageError, open_command_database
from gateway.config import GatewayConfig

__all__ = ["add_report_commands", "cmd_report_create"]

EXIT_OK, EXIT_FAILED = 0, 1
CALL_MAX = 200  # CriticalResult.contact, as the portal's reviewer form


def add_report_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``report create`` on the CLI's sub-command parser."""
    report = commands.add_parser("report", help="reports: build one for a reviewer without an SR workstation")
    actions = report.add_subparsers(dest="report_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="build the report of a case from a findings file and send it in "
                                               "as the case's reviewer")
    create.add_argument("case", help="the case (study key)")
    create.add_argument("--findings", type=Path, required=True,
                        help="YAML or JSON: findings (text, images), impressions, recommendations")
    create.add_argument("--as", dest="sr_class", choices=("basic", "enhanced", "comprehensive"), default="basic",
                        help="the SR class to send (default: basic, which every SR-capable PACS takes)")
    create.add_argument("--pdf", action="store_true", help="also send the report as an Encapsulated PDF")
    create.add_argument("--key-images", action="store_true", help="also send a Key Object Selection")
    create.add_argument("--out", type=Path, help="also write the objects into this directory")
    create.add_argument("--no-send", action="store_true", help="build (and --out) only; send nothing")
    create.add_argument("--critical", action="store_true",
                        help="flag the result critical or urgent once the report is stored: the source's "
                             "critical_emails and critical_webhooks are told, the operators if not acknowledged")
    create.add_argument("--call", default="", metavar="WHOM",
                        help=f"with --critical: whom the referrer should call (name, role, telephone; at most "
                             f"{CALL_MAX} characters), shown only in the referrer's portal, never in a notice")
    create.set_defaults(func=cmd_report_create)


def cmd_report_create(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.ops.logs import configure_logging
    from gateway.reports import codes
    from gateway.reports.create import (
        build_report_objects,
        case_images,
        report_content,
        reviewer_ae_title,
        send_as_reviewer,
    )
    from gateway.reports.errors import FindingsError, ReportBuildError
    from gateway.reports.findings import load_findings
    from gateway.storage.models import Study, db
    from gateway.storage.spool import Spool

    configure_logging(config.logging, strict=os.environ.get("SPINE_GATEWAY_LOG_STRICT") == "1", console=False)
    _check_critical(args)
    try:
        document = load_findings(args.findings)
        open_command_database(config)
        with db.connection_context():
            study = Study.get_or_none(Study.key == args.case)
            if study is None:
                raise UsageError(f"no case {args.case!r}")
            calling_ae = reviewer_ae_title(study, config)
            images = case_images(study, Spool(config.storage.spool_dir))
        content = report_content(document, images)
        objects = build_report_objects(content, images.evidence, sr_class=codes.SR_CLASS_BY_NAME[args.sr_class],
                                       pdf=args.pdf, key_images=args.key_images)
    except (FindingsError, ReportBuildError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for dataset in objects:
            dataset.save_as(args.out / f"{dataset.Modality.lower()}-{dataset.SOPInstanceUID}.dcm",
                            enforce_file_format=True)
    if args.no_send:
        print(f"case {args.case}: built {len(objects)} object(s), not sent")
        return EXIT_OK
    try:
        statuses = send_as_reviewer(objects, calling_ae, config)
    except ReportBuildError as exc:
        print(f"spine-gateway: {exc}")
        return EXIT_FAILED
    for dataset, code in zip(objects, statuses):
        answer = "no answer" if code is None else f"0x{code:04X}"
        print(f"case {args.case}: {dataset.Modality} {dataset.SOPClassUID.name}: {answer}")
    if not all(code == 0 for code in statuses):
        if args.critical:
            print(f"case {args.case}: not flagged critical (the report was not stored): send it again")
        return EXIT_FAILED
    if args.critical:
        print(_flag_critical(args, config))
    return EXIT_OK


def _check_critical(args: argparse.Namespace) -> None:
    """The portal's rules for the critical flag, as usage errors."""
    if args.call and not args.critical:
        raise UsageError("--call says whom to call about a critical result: add --critical, or leave --call out")
    if args.critical and args.no_send:
        raise UsageError("--critical flags a report that is sent: leave out --no-send")
    if len(args.call) > CALL_MAX:
        raise UsageError(f"--call must be at most {CALL_MAX} characters (got {len(args.call)})")


def _flag_critical(args: argparse.Namespace, config: GatewayConfig) -> str:
    """Flag the case's result critical (as the portal does, after the report is stored); the line to print."""
    from gateway.stages.critical import flag_critical
    from gateway.storage.models import CriticalNotice, Study, db

    with db.connection_context():
        study = Study.get(Study.key == args.case)
        critical = flag_critical(study, args.call.strip(), "cli", config.sources)
        notices = (CriticalNotice.select().where(CriticalNotice.critical == critical).count()
                   if critical is not None else 0)
    if critical is None:
        return f"case {args.case}: flagged critical already (the first flag and its notices stand)"
    return f"case {args.case}: flagged critical; {notices} notice(s) to send"
