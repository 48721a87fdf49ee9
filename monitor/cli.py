"""The ``workset-monitor`` command line (DESIGN §8): arguments in, exit codes out; the commands are in ``commands``.

Exit codes: 0 ok, 1 failed or refused, 2 usage, 69 AWS unreachable, 78 invalid configuration. Every failure
an operator can cause is one line on stderr; ``-v`` adds the details (the traceback) for bug reports.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from monitor import __version__, config, errors, logs, report, selection, terminal
from monitor.app import PROG, App
from monitor.clock import SystemClock
from monitor.commands import (
    cmd_check,
    cmd_check_config,
    cmd_export,
    cmd_healthcheck,
    cmd_history,
    cmd_iam_policy,
    cmd_import,
    cmd_init,
    cmd_migrate,
    cmd_notify_test,
    cmd_register,
    cmd_report,
    cmd_run,
    cmd_show,
    cmd_stats,
)
from monitor.model import (
    FLEET_ID,
    State,
    check_bucket,
    check_workset_id,
    parse_priority,
    parse_s3_folder,
    parse_state,
)
from monitor.operator_commands import (
    cmd_fleet,
    cmd_list,
    cmd_pause,
    cmd_resume,
    cmd_run_workset,
    cmd_validate,
    cmd_watch,
    transition,
)
from monitor.selection import Position
from monitor.states import Action
from monitor.step_log_view import cmd_logs

# --- argument parsing --------------------------------------------------------------------------------------------


def _arg(check: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be a whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _interval(value: str) -> float:
    """A refresh interval in seconds: 0.1 to 3600."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if not 0.1 <= seconds <= 3600:  # also refuses nan and inf
        raise ValueError(f"must be between 0.1 and 3600 seconds, got {value!r}")
    return seconds


def _trail_id(value: str) -> str:
    """A workset id, or ``#fleet`` (the fleet's own events: pause, resume)."""
    return FLEET_ID if value == FLEET_ID else check_workset_id(value)


def _when(value: str) -> str:
    """``--not-before``/``--until``, checked now (a usage error), kept as written: resolved against the clock later."""
    selection.parse_when(value, now_ms=0)
    return value


def _since(value: str) -> str:
    """``--since``, checked now (a usage error), kept as written: the command resolves it against its clock."""
    report.parse_since(value, now_ms=0)
    return value


def _demo(args: argparse.Namespace) -> int:
    logs.configure(level="warning", fmt="console")
    missing = [name for name in ("moto", "flask", "flask_cors") if importlib.util.find_spec(name) is None]
    if missing:  # the emulator is imported only once the demo runs: say so now, in one line, not mid-way
        raise errors.MonitorError(
            f"the demo needs the local AWS emulator ({', '.join(missing)}), which this installation leaves out: "
            "pip install 'workset-monitor[demo]' (the Docker image: build it with --build-arg EXTRAS=demo)"
        )
    from monitor import demo  # noqa: PLC0415 - lazy: the emulator needs moto (the demo extra)

    return demo.run(until_idle=args.until_idle, as_json=args.json)


def _run(app: App) -> Any:
    return cmd_run_workset(app) if app.args.workset else cmd_run(app)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"config file (default: $WORKSET_MONITOR_CONFIG or {config.DEFAULT_CONFIG_PATH})",
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="details on errors")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(prog=PROG, description="Operate the workset monitor.")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: $WORKSET_MONITOR_CONFIG or {config.DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="details on errors")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler, command_parser=p)  # for the checks after parsing: the command's usage
        return p

    workset_id = _arg(check_workset_id)
    p = sub.add_parser(
        "demo",
        help="the daemon end to end against an embedded AWS emulator (no config needed)",
        description="Run the real daemon against a local AWS emulator, seeded with example worksets.",
    )
    p.add_argument("--until-idle", action="store_true", help="stop once every workset is terminal; print a summary")
    p.add_argument("--json", action="store_true", help="the summary as JSON on stdout (progress on stderr)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="details on errors")
    p.set_defaults(handler=None)

    p = add("run", _run, "the daemon, in the foreground (systemd and Docker run this); or one workset by hand")
    once = p.add_mutually_exclusive_group()
    once.add_argument("--once", action="store_true", help="one scan and claim round, finish those worksets, exit")
    once.add_argument(
        "--workset",
        type=workset_id,
        metavar="ID",
        help="claim this ready or retrying workset through the normal lease and run its remaining steps here",
    )
    p.add_argument("--step", metavar="NAME", help="with --workset: run exactly this step (again, if it finished)")
    add("init", cmd_init, "create the table and its indexes, or verify an existing one and bring it up to date")

    p = add("register", cmd_register, "register a workset by hand")
    p.add_argument("id", type=workset_id, metavar="ID")
    p.add_argument("--bucket", type=_arg(check_bucket), help="default: [scan] bucket")
    p.add_argument("--prefix", help="the workset's own folder, e.g. worksets/ws-001/")
    p.add_argument(
        "--priority", type=_arg(parse_priority), help="urgent, normal or low (default: the folder's daylily_info.yaml)"
    )
    p.add_argument("--no-validate", action="store_true", help="register the folder without checking it")
    p.add_argument(
        "--not-before",
        type=_arg(_when),
        metavar="WHEN",
        help="not run before then: +DURATION (+30s, +2h) or a time (default: the folder's daylily_info.yaml)",
    )
    p.add_argument("--reason", help="recorded in the audit trail")

    _add_views(add, workset_id)
    _add_transitions(add, workset_id)
    _add_service_commands(add)
    add("notify-test", cmd_notify_test, "send a test event through every configured notification channel")

    p = add("migrate", cmd_migrate, "import worksets from legacy daylily.* sentinel files (see docs/migration.md)")
    p.add_argument("--dry-run", action="store_true", help="report what would be done; write nothing")
    p.add_argument(
        "--in-flight",
        choices=("skip", "ready", "error"),
        default="skip",
        help="folders left daylily.in_progress or daylily.lock by the legacy monitor: leave them (skip, default), "
        "run them again (ready), or record them as failed (error)",
    )

    return parser


def _add_views(add: Callable[..., argparse.ArgumentParser], workset_id: Callable[[str], Any]) -> None:
    """The commands that only read: show, history, list, stats, report, validate."""
    add("show", cmd_show, "show one workset").add_argument("id", type=workset_id, metavar="ID")
    add("history", cmd_history, "show a workset's audit trail ('#fleet': the pauses and resumes)").add_argument(
        "id", type=_arg(_trail_id), metavar="ID"
    )
    p = add(
        "logs",
        cmd_logs,
        'print a workset\'s full step logs from S3 ([run] step_logs = "s3"); --json lists the runs instead',
    )
    p.add_argument("id", type=workset_id, metavar="ID")
    p.add_argument("--step", metavar="NAME", help="only the latest run of this step, byte for byte")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing what is added until the workset ends")
    p.add_argument("--interval", type=_arg(_interval), default=2.0, help="seconds between --follow refreshes (2)")

    p = add(
        "list",
        cmd_list,
        "list worksets by state (ready, in_progress, retrying, error, cancelled, complete, ignored), each state "
        "urgent first, then oldest first, then by id",
    )
    _add_filters(p)
    p.add_argument("--priority", type=_arg(parse_priority), help="urgent, normal or low")
    p.add_argument("--limit", type=_arg(_positive), help="at most this many (default: all); says how to get the next")
    p.add_argument(
        "--after", type=_arg(Position.parse), metavar="POSITION", help="start past this (printed by --limit)"
    )

    add("stats", cmd_stats, "count worksets per state and priority")
    add("fleet", cmd_fleet, "the daemons sharing the table (alive, silent, gone) and what each runs")
    p = add("pause", cmd_pause, "stop intake fleet-wide for maintenance: no new claims; running work continues")
    p.add_argument("--reason", help="shown by fleet and in the logs (default: maintenance)")
    p = add("resume", cmd_resume, "end a pause: the daemons claim again")
    p.add_argument("--reason", help="in the resumed event and its notification (default: maintenance over)")
    p = add("watch", cmd_watch, "a live view of the queue, the fleet and the running worksets (q or Ctrl-C quits)")
    p.add_argument("--interval", type=_arg(_interval), default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (also when stdout is not a terminal)")

    p = add("report", cmd_report, "a row per workset with its run's times and each step's duration, and a summary")
    p.add_argument("--state", type=_arg(parse_state), help=", ".join(s.value for s in State))
    p.add_argument("--priority", type=_arg(parse_priority), help="urgent, normal or low")
    p.add_argument("--since", type=_arg(_since), help="registered since: a duration (90s, 30m, 12h, 7d, 2w) or a time")
    p.add_argument("--prefix", help="only worksets whose folder starts with this (e.g. worksets/2026-12/)")
    p.add_argument("--format", choices=report.FORMATS, help="default: table on a terminal, else tsv; --json means json")

    p = add(
        "validate",
        cmd_validate,
        "check a workset folder before writing daylily.ready: every problem, with file, line and column; "
        "writes nothing (exit 0 valid, 1 problems)",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "folder", nargs="?", type=_arg(parse_s3_folder), metavar="S3_URI", help="s3://BUCKET/PREFIX/NAME/"
    )
    where.add_argument("--prefix", help="the folder in the configured [scan] bucket, e.g. worksets/ws-001/")


def _add_filters(p: argparse.ArgumentParser) -> None:
    """The filters of ``list`` and the bulk transitions."""
    p.add_argument("--state", type=_arg(parse_state), help=", ".join(s.value for s in State))
    p.add_argument(
        "--since", type=_arg(_since), help="in its current state since: a duration (90s, 30m, 12h, 7d) or a time"
    )
    p.add_argument("--prefix", help="only worksets whose folder starts with this (e.g. worksets/2026-12/)")
    p.add_argument(
        "--error-category", dest="error_category", metavar="CATEGORY", help="validation, step, lease, imported, ..."
    )


def _add_bulk(p: argparse.ArgumentParser) -> None:
    """Ids, ``-`` for ids on standard input, or filters; ``--yes`` and ``--dry-run``."""
    p.add_argument("ids", nargs="*", metavar="ID", help="one or more workset ids, or - to read them from stdin")
    _add_filters(p)
    p.add_argument("--yes", action="store_true", help="do it to every workset the filters select")
    p.add_argument("--dry-run", action="store_true", dest="dry_run", help="only print what would be done")


def _check_bulk(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A bulk transition takes ids or filters, not both, not neither; ids are checked here (``-`` alone)."""
    ids = getattr(args, "ids", None)
    if ids is None:
        return
    filtered = any(getattr(args, f, None) is not None for f in ("state", "since", "prefix", "error_category"))
    if ids and filtered:
        parser.error(
            f"{args.command}: give workset ids or filters (--state, --since, --prefix, --error-category), not both"
        )
    if not ids and not filtered:
        parser.error(f"{args.command}: give one or more workset ids, - to read them from stdin, or filters")
    if "-" in ids and len(ids) > 1:
        parser.error(f"{args.command}: - (ids on standard input) stands alone")
    for value in ids:
        if value != "-":
            try:
                check_workset_id(value)
            except ValueError as exc:
                parser.error(f"argument ID: {exc}")
    if not filtered and args.yes:
        parser.error(f"{args.command}: --yes is for a filter's selection; ids are acted on as given")


def _add_service_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Commands for setting the service up and keeping it healthy."""
    add("check-config", cmd_check_config, "validate the config file and exit (0, or 78 with the problem)")
    p = add("healthcheck", cmd_healthcheck, "probe the running daemon's /healthz (the Docker HEALTHCHECK)")
    p.add_argument("--url", help="default: http://127.0.0.1:<[metrics] port>/healthz")
    p.add_argument("--timeout-s", type=float, default=3.0, dest="timeout_s")
    add("check", cmd_check, "preflight: try credentials, bucket, table, topic, queue, Linear and the metrics port")
    p = add("iam-policy", cmd_iam_policy, "print the least-privilege IAM policy for this config")
    p.add_argument(
        "--role",
        choices=("daemon", "admin"),
        default="daemon",
        help="daemon: run and operator commands; admin: also init, export and import",
    )
    p.add_argument("--account", help="AWS account id (default: from the topic or queue, else *)")
    p.add_argument("--region", help="default: [aws] region")
    p.add_argument(
        "--read-bucket",
        action="append",
        metavar="BUCKET",
        help="another bucket manifests reference with s3:// URIs (repeatable)",
    )
    p = add("export", cmd_export, "back up the whole table as JSON lines")
    p.add_argument("--out", help="a file (written completely or not at all); default: standard output")
    p = add("import", cmd_import, "restore an export; never overwrites newer worksets unless --force")
    p.add_argument("file", metavar="FILE", help="an export file, or - for standard input")
    p.add_argument("--force", action="store_true", help="overwrite worksets even when the table's copy is newer")


def _add_transitions(add: Callable[..., argparse.ArgumentParser], workset_id: Callable[[str], Any]) -> None:
    """The audited operator transitions: retry, ignore, cancel and set-priority (on one workset, several, or a
    filter's selection), and release (one workset)."""
    p = add(
        "retry",
        transition(lambda a: Action.RETRY_FORCE if a.force else Action.RETRY, "retry requested"),
        "re-open error, cancelled or retrying worksets (--force: also complete or ignored); the new attempt starts "
        "at the first step not finished yet (a complete workset's: the first step)",
    )
    _add_bulk(p)
    p.add_argument("--force", action="store_true", help="also re-open complete and ignored worksets")
    p.add_argument("--from-start", action="store_true", help="run every step again, the finished ones too")
    p.add_argument("--reason", help="recorded in the audit trail")

    for name, action, text in (
        ("ignore", Action.IGNORE, "hands off: the monitor will never touch these worksets again"),
        ("cancel", Action.CANCEL, "cancel worksets; a running one is stopped at its next heartbeat"),
    ):
        p = add(name, transition(action, f"{name} requested"), text)
        _add_bulk(p)
        p.add_argument("--reason", help="recorded in the audit trail")

    p = add(
        "release",
        transition(Action.FORCE_RELEASE, "released by operator"),
        "take a running workset away from its holder (-> ready, no failure counted; held off until it has stopped)",
    )
    p.add_argument("ids", nargs=1, type=workset_id, metavar="ID")
    p.add_argument("--reason", required=True, help="recorded in the audit trail (required)")

    p = add(
        "defer",
        transition(Action.DEFER, "scheduled"),
        "schedule a ready workset: not claimed before --until (a time passed brings it forward: due now)",
    )
    p.add_argument("ids", nargs=1, type=workset_id, metavar="ID")
    p.add_argument("--until", type=_arg(_when), required=True, metavar="WHEN", help="+DURATION (+2h) or a time")
    p.add_argument("--reason", help="recorded in the audit trail")

    p = add(
        "set-priority",
        transition(Action.SET_PRIORITY, "priority changed"),
        "change the priority of worksets: set-priority ID [ID ...] PRIORITY, or set-priority --state ready PRIORITY",
    )
    _add_bulk(p)
    p.add_argument("priority", type=_arg(parse_priority), metavar="PRIORITY", help="urgent, normal or low")
    p.add_argument("--reason", help="recorded in the audit trail")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parser = getattr(args, "command_parser", None) or build_parser()
    if args.command == "run" and args.step is not None and args.workset is None:
        parser.error("run --step needs --workset ID")
    if args.command not in ("release", "defer"):
        _check_bulk(parser, args)
    verbose = bool(getattr(args, "verbose", False))
    as_json = bool(getattr(args, "json", False))

    def fail(message: str, code: int) -> int:
        """One line on stderr: ``workset-monitor: message``, or with --json ``{"error": ..., "exit_code": ...}``."""
        if as_json:
            print(json.dumps({"error": message, "exit_code": code}), file=sys.stderr)
        else:
            print(f"{PROG}: {terminal.for_terminal(message)}", file=sys.stderr)
        return code

    try:
        if args.command == "demo":
            return _demo(args)
        loaded = config.load(args.config)
        logs.configure(level=loaded.settings.log.level, fmt=loaded.settings.log.format)
        for warning in loaded.warnings:
            if args.command == "run":  # the daemon's own log (the journal) says it
                logs.get("monitor.config").warning("config file exposes secrets", detail=warning)
            elif as_json:
                print(json.dumps({"warning": warning}), file=sys.stderr)
            else:
                print(f"{PROG}: warning: {terminal.for_terminal(warning)}", file=sys.stderr)
        app = App(loaded=loaded, args=args, clock=SystemClock())
        try:
            result = args.handler(app)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            return int(result)
        finally:
            app.close()
    except errors.MonitorError as exc:
        if verbose:
            traceback.print_exc()
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:  # the reader went away (`export | head`): stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        return errors.EX_FAILED
    except Exception as exc:  # a bug, not an operator mistake: say so, details with -v
        if verbose:
            traceback.print_exc()
        return fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for details)", errors.EX_FAILED)
