"""The ``workset-monitor`` command line (DESIGN §8) and the composition root for the operator commands.

Exit codes: 0 ok, 1 failed or refused, 2 usage, 69 AWS unreachable, 78 invalid configuration. Every failure
an operator can cause is one line on stderr; ``-v`` adds the details (the traceback) for bug reports.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from monitor import __version__, actions, config, errors, leases, logs, render, steps
from monitor.aws import clients, codec, schema
from monitor.aws.cloudwatch import CloudWatchPublisher
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.aws.sns import SnsChannel
from monitor.aws.sqs import SqsQueue
from monitor.clock import Clock, SystemClock
from monitor.metrics import Metrics, ObservedStore
from monitor.migration import Migration
from monitor.model import (
    Event,
    EventType,
    Priority,
    State,
    WorksetId,
    check_bucket,
    check_workset_id,
    parse_priority,
    parse_state,
)
from monitor.notify import filters
from monitor.notify.linear import LinearChannel
from monitor.notify.outbox import Channel, Doorbell, Outbox, linear_issue_lookup
from monitor.notify.webhook import WebhookChannel
from monitor.ports import Store
from monitor.sentinels import SentinelMirror
from monitor.states import Action, Backoff, Context
from monitor.supervisor import Services, Supervisor
from monitor.systemd import Notifier

PROG = "workset-monitor"


@dataclass
class App:
    """What a command needs, built lazily so that `--help` and config errors never touch AWS."""

    loaded: config.Loaded
    args: argparse.Namespace
    clock: Clock
    metrics: Metrics | None = None  # only the daemon serves metrics

    @property
    def settings(self) -> config.Settings:
        return self.loaded.settings

    @cached_property
    def clients(self) -> clients.Clients:
        return clients.Clients(self.settings.aws, instrument=self.metrics.instrument if self.metrics else None)

    @cached_property
    def store(self) -> Store:
        """The store for operator commands: events they cause go to the outbox for the daemon to deliver."""
        return self.make_store(outbox=lambda event: filters.anyone_wants(self.settings.notify, event))

    def make_store(self, *, outbox: Callable[[Event], bool], on_pending: Callable[[], None] | None = None) -> Store:
        store: Store = DynamoStore(
            self.clients.get("dynamodb"), self.settings.table.name, outbox=outbox, on_pending=on_pending
        )
        if self.settings.scan.write_sentinels and self.settings.scan.bucket:
            store = SentinelMirror(store, self.source)
        if self.metrics is not None:
            store = ObservedStore(store, self.metrics)
        return store

    def channels(self, notify: config.NotifyConfig, store: Store) -> list[Channel]:
        """The configured notification channels, in delivery order."""
        found: list[Channel] = []
        if notify.sns is not None:
            found.append(SnsChannel(self.clients.get("sns"), notify.sns.topic_arn))
        if notify.linear is not None:
            found.append(LinearChannel(notify.linear, has_issue=linear_issue_lookup(store)))
        if notify.webhook is not None:
            found.append(WebhookChannel(notify.webhook))
        return found

    @cached_property
    def source(self) -> S3Source:
        if not self.settings.scan.bucket:
            raise errors.ConfigError(f"this command needs [scan] bucket (or ${config.ENV_PREFIX}SCAN__BUCKET)")
        return S3Source(self.clients.get("s3"), self.settings.scan.bucket)

    def context(self, default_reason: str) -> Context:
        run = self.settings.run
        return Context(
            now_ms=self.clock.now_ms(),
            actor=operator_identity(),
            reason=getattr(self.args, "reason", None) or default_reason,
            max_attempts=run.max_attempts,
            backoff=Backoff(base_s=run.retry_backoff_base_s, cap_s=run.retry_backoff_max_s),
            hold_off_s=self.settings.lease.duration_s,
        )

    def emit(self, data: Any, text: str) -> None:
        print(render.to_json(data) if self.args.json else text)


def operator_identity() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with a numeric user)
        user = "uid-unknown"
    return f"operator:{user}@{socket.gethostname()}"


# --- commands ----------------------------------------------------------------------------------------------------


def cmd_init(app: App) -> int:
    report = schema.ensure_table(app.clients.get("dynamodb"), app.settings.table)
    if report.created:
        text = f"created table {report.table} ({report.billing_mode}) with index {codec.GSI_NAME}; it is active"
    else:
        text = f"table {report.table} already exists with the expected keys and index {codec.GSI_NAME}"
    text += "".join(f"\nnote: {n}" for n in report.notes)
    app.emit(
        {
            "table": report.table,
            "created": report.created,
            "billing_mode": report.billing_mode,
            "notes": report.notes,
        },
        text,
    )
    return errors.EX_OK


async def cmd_register(app: App) -> int:
    args = app.args
    workset_id: WorksetId = args.id
    bucket = args.bucket or app.settings.scan.bucket
    if not bucket:
        raise errors.InvalidInput("register needs --bucket (no [scan] bucket is configured)")
    prefix = args.prefix
    if prefix is None:
        if len(app.settings.scan.prefixes) != 1:
            raise errors.InvalidInput("register needs --prefix (the workset's own folder, e.g. worksets/ws-001/)")
        prefix = f"{app.settings.scan.prefixes[0]}{workset_id}/"
    prefix = _workset_prefix(prefix, workset_id)
    created, ws = await actions.register(
        app.store,
        workset_id=workset_id,
        bucket=bucket,
        prefix=prefix,
        priority=args.priority,
        ctx=app.context("registered by hand"),
    )
    if created:
        text = f"registered {ws.workset_id} ({ws.priority.value}) at {ws.s3_uri}: {ws.state.value}"
    else:
        text = f"{ws.workset_id} is already registered ({ws.state.value}, {ws.s3_uri}); nothing changed"
    app.emit({"registered": created, "workset": render.workset_dict(ws)}, text)
    return errors.EX_OK


async def cmd_show(app: App) -> int:
    ws = await app.store.get(app.args.id)
    if ws is None:
        raise errors.NotFound(f"workset {app.args.id} is not registered")
    app.emit(render.workset_dict(ws), render.workset_text(ws))
    return errors.EX_OK


async def cmd_history(app: App) -> int:
    events = await app.store.history(app.args.id)
    if not events:
        raise errors.NotFound(f"workset {app.args.id} is not registered")
    app.emit([render.event_dict(e) for e in events], render.history_table(events))
    return errors.EX_OK


async def cmd_list(app: App) -> int:
    args = app.args
    worksets = await app.store.list(state=args.state, priority=args.priority, limit=args.limit)
    text = render.worksets_table(worksets) if worksets else "no worksets match"
    app.emit([render.workset_dict(ws) for ws in worksets], text)
    return errors.EX_OK


async def cmd_stats(app: App) -> int:
    stats = await app.store.stats(now_ms=app.clock.now_ms())
    app.emit(render.stats_dict(stats), render.stats_table(stats))
    return errors.EX_OK


async def cmd_run(app: App) -> int:
    settings = app.settings
    if not settings.scan.bucket:
        raise errors.ConfigError(f"run needs [scan] bucket (or ${config.ENV_PREFIX}SCAN__BUCKET)")
    app.metrics = metrics = Metrics()
    queue = None
    if settings.scan.sqs_queue_url:
        queue = SqsQueue(app.clients.get("sqs"), settings.scan.sqs_queue_url)
    environ = dict(os.environ)
    watchdog = environ.get("WATCHDOG_USEC")
    owner = leases.new_owner_id()
    doorbell = Doorbell(settings.notify)
    store = app.make_store(outbox=doorbell.wants, on_pending=doorbell.ring)
    outbox = Outbox(
        store,
        app.clock,
        owner=owner,
        doorbell=doorbell,
        channels=app.channels(settings.notify, store),
        hold_s=settings.notify.claim_s,
    )
    services = Services(
        store=store,
        source=app.source,
        clock=app.clock,
        runner=steps.Runner(
            app.clock, base_env=environ, observe=lambda step, r: metrics.step(step, r.outcome.value, r.seconds)
        ),
        owner=owner,
        notifier=Notifier(environ.get("NOTIFY_SOCKET"), watchdog_usec=int(watchdog) if watchdog else None),
        queue=queue,
        reload=lambda: config.load(app.loaded.path),
        outbox=outbox,
        channels=lambda notify: app.channels(notify, store),
        metrics=metrics,
        cloudwatch=CloudWatchPublisher(app.clients.get("cloudwatch"), settings.metrics.cloudwatch.namespace)
        if settings.metrics.cloudwatch
        else None,
    )
    return await Supervisor(settings, services, config_path=str(app.loaded.path)).run(once=app.args.once)


async def cmd_notify_test(app: App) -> int:
    channels = app.channels(app.settings.notify, app.store)
    if not channels:
        raise errors.MonitorError(
            "no notification channel is configured ([notify.sns], [notify.linear], [notify.webhook])"
        )
    event = Event(
        workset_id=WorksetId("notify-test"),
        seq=0,
        type=EventType.TEST,
        at_ms=app.clock.now_ms(),
        actor=operator_identity(),
        from_state=None,
        to_state=State.READY,
        reason="a test from `workset-monitor notify-test`: this channel works",
    )
    results: dict[str, str] = {}
    for channel in channels:
        try:
            results[channel.name] = await channel.send(event, None)
        except errors.DeliveryError as exc:
            results[channel.name] = f"FAILED: {exc}"
    text = render.table(("CHANNEL", "RESULT"), sorted(results.items()))
    app.emit(results, text)
    return errors.EX_OK if all(r == "sent" for r in results.values()) else errors.EX_FAILED


async def cmd_migrate(app: App) -> int:
    args, scan = app.args, app.settings.scan
    migration = Migration(
        app.store,
        app.source,
        app.clock,
        prefixes=scan.prefixes,
        actor=operator_identity(),
        in_flight=args.in_flight,
        max_manifest_bytes=scan.max_manifest_bytes,
    )
    progress = render.progress_bar("planning") if sys.stderr.isatty() and not args.json else None
    report = await migration.plan(progress)
    if not args.dry_run:
        progress = render.progress_bar("applying") if sys.stderr.isatty() and not args.json else None
        report = await migration.apply(report, progress)
    where = ", ".join(f"s3://{scan.bucket}/{p}" for p in scan.prefixes)
    app.emit(render.migration_dict(report, dry_run=args.dry_run), render.migration_text(report, where, args.dry_run))
    return errors.EX_FAILED if report.mismatches else errors.EX_OK


def _transition(action: Action | Callable[[argparse.Namespace], Action], default_reason: str) -> Any:
    async def command(app: App) -> int:
        chosen = action(app.args) if callable(action) else action
        decision = await actions.act(
            app.store,
            app.args.id,
            chosen,
            app.context(default_reason),
            priority=getattr(app.args, "priority", None),
        )
        before, after = decision.before, decision.after
        detail = f"priority {before.priority.value} -> {after.priority.value}" if before.state is after.state else ""
        text = f"{after.workset_id}: {before.state.value} -> {after.state.value}"
        text += f" ({detail})" if detail else ""
        app.emit(
            {
                "workset_id": after.workset_id,
                "from_state": before.state.value,
                "to_state": after.state.value,
                "event": render.event_dict(decision.event),
            },
            text,
        )
        return errors.EX_OK

    return command


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
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _workset_prefix(prefix: str, workset_id: str) -> str:
    prefix = prefix.lstrip("/")
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    if prefix.rstrip("/").rsplit("/", 1)[-1] != workset_id:
        raise errors.InvalidInput(
            f"--prefix {prefix!r} is not the folder of {workset_id!r}: the workset id is the folder name, "
            f"so the prefix must end in {workset_id}/"
        )
    return prefix


def _demo(args: argparse.Namespace) -> int:
    logs.configure(level="warning", fmt="console")
    try:
        from monitor import demo  # noqa: PLC0415 - lazy: the emulator needs moto (the dev extra)
    except ImportError as exc:
        raise errors.MonitorError(f"the demo needs the emulator: pip install 'workset-monitor[dev]' ({exc})") from exc
    return demo.run(until_idle=args.until_idle)


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
        p.set_defaults(handler=handler)
        return p

    workset_id = _arg(check_workset_id)
    p = sub.add_parser(
        "demo",
        help="the daemon end to end against an embedded AWS emulator (no config needed)",
        description="Run the real daemon against a local AWS emulator, seeded with example worksets.",
    )
    p.add_argument("--until-idle", action="store_true", help="stop once every workset is terminal; print a summary")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="details on errors")
    p.set_defaults(handler=None)

    p = add("run", cmd_run, "the daemon, in the foreground (systemd and Docker run this)")
    p.add_argument("--once", action="store_true", help="one scan and claim round, finish those worksets, exit")
    add("init", cmd_init, "create the table and index, or verify an existing table")

    p = add("register", cmd_register, "register a workset by hand")
    p.add_argument("id", type=workset_id, metavar="ID")
    p.add_argument("--bucket", type=_arg(check_bucket), help="default: [scan] bucket")
    p.add_argument("--prefix", help="the workset's own folder, e.g. worksets/ws-001/")
    p.add_argument("--priority", type=_arg(parse_priority), default=Priority.NORMAL, help="urgent, normal or low")
    p.add_argument("--reason", help="recorded in the audit trail")

    add("show", cmd_show, "show one workset").add_argument("id", type=workset_id, metavar="ID")
    add("history", cmd_history, "show a workset's audit trail").add_argument("id", type=workset_id, metavar="ID")

    p = add("list", cmd_list, "list worksets, urgent first then oldest first")
    p.add_argument("--state", type=_arg(parse_state), help=", ".join(s.value for s in State))
    p.add_argument("--priority", type=_arg(parse_priority), help="urgent, normal or low")
    p.add_argument("--limit", type=_arg(_positive), help="at most this many (default: all)")

    add("stats", cmd_stats, "count worksets per state and priority")

    _add_transitions(add, workset_id)
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


def _add_transitions(add: Callable[..., argparse.ArgumentParser], workset_id: Callable[[str], Any]) -> None:
    """The audited operator transitions: retry, ignore, cancel, release, set-priority."""
    p = add(
        "retry",
        _transition(lambda a: Action.RETRY_FORCE if a.force else Action.RETRY, "retry requested"),
        "re-open an error, cancelled or retrying workset (--force: also complete or ignored)",
    )
    p.add_argument("id", type=workset_id, metavar="ID")
    p.add_argument("--force", action="store_true", help="also re-open complete and ignored worksets")
    p.add_argument("--reason", help="recorded in the audit trail")

    for name, action, text in (
        ("ignore", Action.IGNORE, "hands off: the monitor will never touch this workset again"),
        ("cancel", Action.CANCEL, "cancel a workset; a running one is stopped at its next heartbeat"),
    ):
        p = add(name, _transition(action, f"{name} requested"), text)
        p.add_argument("id", type=workset_id, metavar="ID")
        p.add_argument("--reason", help="recorded in the audit trail")

    p = add(
        "release",
        _transition(Action.FORCE_RELEASE, "released by operator"),
        "take a running workset away from its holder (-> ready, no failure counted; claimable after one lease)",
    )
    p.add_argument("id", type=workset_id, metavar="ID")
    p.add_argument("--reason", required=True, help="recorded in the audit trail (required)")

    p = add("set-priority", _transition(Action.SET_PRIORITY, "priority changed"), "change a workset's priority")
    p.add_argument("id", type=workset_id, metavar="ID")
    p.add_argument("priority", type=_arg(parse_priority), metavar="PRIORITY", help="urgent, normal or low")
    p.add_argument("--reason", help="recorded in the audit trail")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    try:
        if args.command == "demo":
            return _demo(args)
        loaded = config.load(args.config)
        logs.configure(level=loaded.settings.log.level, fmt=loaded.settings.log.format)
        app = App(loaded=loaded, args=args, clock=SystemClock())
        result = args.handler(app)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except errors.MonitorError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not an operator mistake: say so, details with -v
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        return errors.EX_FAILED
