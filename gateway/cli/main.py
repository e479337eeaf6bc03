"""``spine-gateway``: a thin shell. Parse, load the configuration, call one stage, print, return an exit code.

Exit codes: 0 success, 1 the operation failed (e.g. a peer did not answer), 2 a user's mistake
(bad configuration, bad arguments). A user's mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.cli.common import VERBOSE, UsageError, configure_logging, database_failure, open_command_database
from gateway.cli.dicomweb import add_dicomweb_commands
from gateway.cli.referral import add_referral_commands
from gateway.cli.reports import add_report_commands
from gateway.cli.users import add_user_commands
from gateway.config import (
    CONFIG_PATH_ENV,
    REPOSITORY_CONFIG_PATH,
    SYSTEM_CONFIG_PATH,
    GatewayConfig,
    load_config,
)
from gateway.errors import ConfigError, DatabaseUnavailable, GatewayError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spine-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None,
                        help=f"configuration file (default: ${CONFIG_PATH_ENV}, else {SYSTEM_CONFIG_PATH}, else "
                             f"{REPOSITORY_CONFIG_PATH})")
    parser.add_argument("--version", action="version", version=f"spine-gateway {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print a command's log events on stderr (they always go to the log file)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (DICOM SCP) until stopped")
    serve.add_argument("--port", type=int, help="override node.port")
    serve.add_argument("--host", help="override node.host")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.set_defaults(func=cmd_check_config)

    echo = commands.add_parser("echo", help="C-ECHO a configured peer (by name) or HOST:PORT")
    echo.add_argument("peer", help="reviewer name, source name (its return address) or HOST:PORT")
    echo.add_argument("--called-ae", default=None, help="called AE title for HOST:PORT (default: ANY-SCP)")
    echo.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")
    echo.set_defaults(func=cmd_echo)

    status = commands.add_parser("status", help="studies and instances by state, spool use; or one accession's "
                                                "or referral's cases")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    lookup = status.add_mutually_exclusive_group()
    lookup.add_argument("--accession", metavar="A", help="only the case(s) and referral(s) of this accession number")
    lookup.add_argument("--referral", metavar="N", type=int, help="only the case of this referral id")
    status.set_defaults(func=cmd_status)

    retry = commands.add_parser("retry", help="send a failed case again on the leg that failed (study to the "
                                              "reviewer, or report to the source); that leg's attempts start over")
    retry.add_argument("case", help="the case's key (as shown by status and the log)")
    retry.set_defaults(func=cmd_retry)

    release = commands.add_parser("release", help="send a quarantined or not-spine case through the pipeline again")
    release.add_argument("case", help="the case's key")
    release.set_defaults(func=cmd_release)

    tail = commands.add_parser("tail", help="the routing log, one line per event (follows rotation with -f)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep reading as events arrive")
    tail.add_argument("--case", help="only this case (study key)")
    tail.add_argument("--source", help="only this source")
    tail.add_argument("--reviewer", help="only this reviewer")
    tail.add_argument("--level", default="debug", help="minimum level: debug, info, warning, error")
    tail.add_argument("--since", help="only events newer than this, e.g. 30m, 1h, 2d")
    tail.add_argument("--json", action="store_true", help="print the JSON lines as they are")
    tail.set_defaults(func=cmd_tail)

    audit = commands.add_parser("audit", help="the audit trail of actions on patient data")
    audit.add_argument("--case", help="only this case (study key)")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    purge = commands.add_parser("purge", help="delete originals of cases reported more than N days ago")
    purge.add_argument("--days", type=int, default=None, help="retention in days (default: retention.days)")
    purge.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    purge.set_defaults(func=cmd_purge)

    deid = commands.add_parser("deid", help="de-identify a folder of DICOM files offline")
    deid.add_argument("in_dir", type=Path)
    deid.add_argument("out_dir", type=Path)
    deid.set_defaults(func=cmd_deid)

    demo = commands.add_parser("demo-study", help="write a synthetic lumbar spine MR study (Part 10 files)")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--instances", type=int, default=300, help="number of images (default: 300)")
    demo.add_argument("--seed", type=int, default=0,
                      help="another study of another patient (name, ID, birth date, accession) for each seed; "
                           "0 (the default): Jane Doe, MRN0012345, A1234567")
    demo.set_defaults(func=cmd_demo_study, needs_config=False)
    add_referral_commands(commands)
    add_report_commands(commands)
    add_user_commands(commands)
    add_dicomweb_commands(commands)
    _accept_config_after_command(parser)
    return parser


def _accept_config_after_command(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` is taken after any command too (``spine-gateway status --config FILE``); given only
    there it does not hide the one given before the command (``argparse.SUPPRESS``)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for command in set(action.choices.values()):
            if "--config" not in command._option_string_actions:
                command.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                                     help="configuration file (also accepted before the command)")
            _accept_config_after_command(command)


def main(argv: list[str] | None = None) -> int:
    import peewee

    from gateway.deid.secret import SecretError
    from gateway.storage import wakeup

    args = _parser().parse_args(argv)
    VERBOSE[0] = args.verbose
    hub = wakeup.current()  # a command run inside a process with a node keeps that node's wake-ups
    try:
        config = None if getattr(args, "needs_config", True) is False else load_config(args.config)
        return args.func(args, config)
    except (ConfigError, UsageError, DatabaseUnavailable) as exc:
        print(f"spine-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SecretError as exc:
        print(f"spine-gateway: {exc} (set it to at least 32 hex digits, or unset it to use the key file)",
              file=sys.stderr)
        return EXIT_USAGE
    except (peewee.DatabaseError, peewee.InterfaceError) as exc:  # an outage, a refused statement: no traceback
        print(f"spine-gateway: {database_failure(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"spine-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a file or directory the command needs (the database's, a findings file, ...)
        print(f"spine-gateway: {exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        wakeup.install(hub)  # the command's own wake-ups (open_command_database) end with it


def started_line(config: GatewayConfig) -> str:
    """The one human line a node prints once it listens: where, and how to use it."""
    node, http = config.node, config.http
    portal = f"; portal and API http://{http.host}:{http.port}/" if http.enabled else ""
    log = f"; log {config.logging.file}" if config.logging.file else ""
    return (f"spine-gateway {__version__} listening: DICOM AE {node.ae_title} on {node.host}:{node.port}{portal}"
            f"{log}. In another terminal: spine-gateway status, spine-gateway tail -f. Ctrl-C stops.")


def cmd_serve(args: argparse.Namespace, config: GatewayConfig) -> int:
    overrides = {k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
    if overrides:
        config = load_config(args.config, overrides={"node": overrides})
    configure_logging(config, to_file=True, console=True)
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # kill -USR2 <pid>: every thread's stack to stderr
    from gateway.ops.memory import limit_malloc_arenas, quiet_value_warnings, trace_allocations_if_asked

    quiet_value_warnings()  # a fuzzed request's UIDs would each stay in Python's warning registry
    limit_malloc_arenas()  # before the node's threads start (gateway.ops.memory), for its children too
    trace_allocations_if_asked()  # SPINE_GATEWAY_TRACEMALLOC=FRAMES: kill -USR1 <pid> writes the allocation sites
    from gateway.node import GatewayNode

    try:
        GatewayNode(config).serve_forever(on_started=lambda: print(started_line(config), file=sys.stderr,
                                                                   flush=True))
    except OSError as exc:
        raise GatewayError(f"cannot start: {exc.strerror or exc} (node.host {config.node.host}, "
                           f"node.port {config.node.port})") from None
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.routing.assignment import unsatisfiable_rules

    print(f"configuration OK: AE {config.node.ae_title} on port {config.node.port}, "
          f"{len(config.sources)} source(s), {len(config.reviewers)} reviewer(s)")
    for warning in unsatisfiable_rules(config.reviewers):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _echo_target(peer: str, config: GatewayConfig, called_ae: str | None) -> tuple[str, str, int, Any]:
    """The peer's AE title, host, port and TLS arguments (a configured peer's TLS is used as the node uses it)."""
    from gateway.dicom.tls import tls_args

    for reviewer in config.reviewers:
        if reviewer.name == peer:
            return reviewer.ae_title, reviewer.host, reviewer.port, tls_args(reviewer)
    for source in config.sources:
        if source.name == peer and source.return_ is not None:
            return source.return_.ae_title, source.return_.host, source.return_.port, tls_args(source.return_)
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"unknown peer {peer!r}: give a reviewer or source name, or HOST:PORT")
    return called_ae or "ANY-SCP", host, int(port), None


def cmd_echo(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.dicom.echo import echo

    configure_logging(config, to_file=False)
    ae_title, host, port, tls = _echo_target(args.peer, config, args.called_ae)
    result = echo(config.node.ae_title, ae_title, host, port, args.timeout, tls)
    print(f"{args.peer}: {result.message} ({result.duration_ms} ms)")
    _record_peer_health(args.peer, result, config)
    return EXIT_OK if result.ok else EXIT_FAILED


def _record_peer_health(name: str, result: Any, config: GatewayConfig) -> None:
    """A configured peer's C-ECHO is its health check too (as the node's own): a reviewer found answering again
    is eligible at the next assignment. Without a database at hand the echo's answer stands alone."""
    from gateway.stages.health import configured_peers, record_health
    from gateway.storage.models import db, utcnow

    peer = next((p for p in configured_peers(config) if p.name in (f"reviewer:{name}", f"source:{name}")), None)
    if peer is None:
        return
    try:
        open_command_database(config)
        with db.connection_context():
            record_health(peer, result, utcnow())
    except DatabaseUnavailable:
        print("spine-gateway: the peer's state in the database is not updated (the database is unavailable)",
              file=sys.stderr)


def cmd_status(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.ops.status import collect_status, render_status

    open_command_database(config)
    if args.accession is not None or args.referral is not None:
        return _status_lookup(args)
    snapshot = collect_status(config.storage.spool_dir, config.reviewers)
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
    else:
        from rich.console import Console

        render_status(snapshot, Console())
    return EXIT_OK


def _status_lookup(args: argparse.Namespace) -> int:
    """``status --accession A`` / ``--referral N``: that accession's or referral's case(s); exit 1 when none."""
    from gateway.ops.status import lookup_cases, render_lookup

    entries = lookup_cases(accession=args.accession, referral_id=args.referral)
    what = f"accession {args.accession}" if args.accession is not None else f"referral {args.referral}"
    if args.json:
        print(json.dumps({"lookup": what, "cases": entries}, indent=2, sort_keys=True))
    elif entries:
        from rich.console import Console

        render_lookup(entries, Console())
    if not entries:
        print(f"spine-gateway: no case or referral for {what}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.stages.deliver import retry_case
    from gateway.storage.models import db

    configure_logging(config, to_file=True)
    open_command_database(config)
    with db.connection_context():
        study = _case(args.case)
        state = study.state
        leg = retry_case(study)
        if leg is None:
            raise UsageError(f"case {args.case} is {state}; only a failed or report_failed case can be retried")
    if leg == "report":
        print(f"case {args.case}: sending the report to the source again")
    else:
        print(f"case {args.case}: delivering the study to the reviewer again")
    return EXIT_OK


def cmd_release(args: argparse.Namespace, config: GatewayConfig) -> int:
    """QUARANTINED or REJECTED_NOT_SPINE → COMPLETE: the case is de-identified (and checked) again from scratch."""
    import getpass

    from gateway.ops import audit
    from gateway.storage import cases
    from gateway.storage.models import CaseState, db

    configure_logging(config, to_file=True)
    open_command_database(config)
    with db.connection_context():
        study = _case(args.case)
        if study.state not in (CaseState.QUARANTINED, CaseState.REJECTED_NOT_SPINE):
            raise UsageError(f"case {args.case} is {study.state}; only a quarantined or rejected case is released")
        if not cases.move(study, CaseState.COMPLETE, reason="released"):
            raise GatewayError(f"case {args.case} changed state meanwhile; look again with status")
        audit.record("released", actor_ae=None, actor_host=getpass.getuser()[:64], study_key=study.key)
    print(f"case {args.case}: released, it goes through de-identification again")
    return EXIT_OK


def _case(key: str) -> Any:
    """The case (study row) with this key, or a one-line usage error."""
    from gateway.storage.models import Study

    study = Study.get_or_none(Study.key == key)
    if study is None:
        raise UsageError(f"no case {key!r}")
    return study


def cmd_tail(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.ops.tail import TailFilter, follow_log, format_event, format_json, parse_since

    if config.logging.file is None:
        raise UsageError("logging.file is null: there is no log file to read")
    try:
        since = parse_since(args.since) if args.since else None
        filters = TailFilter(case=args.case, source=args.source, reviewer=args.reviewer, min_level=args.level)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    color = sys.stdout.isatty()
    try:
        for event in follow_log(config.logging.file, follow=args.follow, filters=filters, since=since):
            print(format_json(event) if args.json else format_event(event, color), flush=True)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.ops.audit import query, render_audit

    open_command_database(config)
    events = query(case=args.case, limit=args.limit)
    if args.json:
        print(json.dumps(events, indent=2, default=str))
    else:
        from rich.console import Console

        render_audit(events, Console())
    return EXIT_OK


def cmd_purge(args: argparse.Namespace, config: GatewayConfig) -> int:
    import datetime as dt

    from gateway.ops.retention import plan_purge, purge

    days = args.days if args.days is not None else config.retention.days
    if days < 0:
        raise UsageError("--days must be 0 or more")
    open_command_database(config)
    items = plan_purge(dt.datetime.now(dt.UTC), days, spool_dir=config.storage.spool_dir)
    result = purge(items, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for item in items:
        print(f"{verb} case {item.study_key}: {item.instances} instance(s), {item.bytes / 1e6:.1f} MB")
    print(f"{verb} {len(result.studies)} case(s), {result.files_deleted} file(s), {result.bytes_freed / 1e6:.1f} MB"
          + (f"; skipped {len(result.skipped)} whose state changed" if result.skipped else ""))
    return EXIT_OK


def cmd_deid(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.deid.offline import deidentify_folder
    from gateway.deid.secret import load_or_create_secret

    if not args.in_dir.is_dir():
        raise UsageError(f"{args.in_dir}: not a directory")
    secret, _created = load_or_create_secret(config.deid.secret_env, config.secret_path())
    summary = deidentify_folder(args.in_dir, args.out_dir, config.deid.options(), secret,
                                progress=sys.stderr.isatty())
    print(f"de-identified {summary.done} file(s) into {args.out_dir}; quarantined {summary.quarantined_count}")
    for reason, count in sorted(summary.reasons().items()):
        print(f"  quarantined {count}: {reason}")
    return EXIT_OK if summary.done or not summary.quarantined_count else EXIT_FAILED


def cmd_demo_study(args: argparse.Namespace, _config: None) -> int:
    from gateway.demo import demo_patient, write_demo_study

    if args.instances < 1:
        raise UsageError("--instances must be at least 1")
    patient = demo_patient(args.seed)
    paths = write_demo_study(args.out_dir, args.instances, seed=args.seed, patient=patient)
    print(f"wrote {len(paths)} instances to {args.out_dir}: patient {patient.name}, ID {patient.patient_id}, "
          f"accession {patient.accession}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
