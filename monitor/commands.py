"""What each ``workset-monitor`` command does, given its ``App``; ``cli`` parses arguments and maps errors to exit
codes (0 ok, 1 failed or refused, 2 usage, 69 AWS unreachable, 78 invalid configuration)."""

from __future__ import annotations

import dataclasses
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from monitor import (
    actions,
    config,
    errors,
    iam,
    leases,
    preflight,
    registration,
    render,
    report,
    states,
    steps,
    terminal,
    validation,
)
from monitor.app import PROG, App, operator_identity
from monitor.aws import backup, codec, schema
from monitor.aws.cloudwatch import CloudWatchPublisher
from monitor.aws.s3 import S3Source
from monitor.aws.sqs import SqsQueue
from monitor.clock import iso
from monitor.known_folders import KnownFolders, path_for
from monitor.metrics import Metrics
from monitor.migration import Migration
from monitor.model import (
    Event,
    EventType,
    Priority,
    State,
    WorksetId,
)
from monitor.notify import filters
from monitor.notify.outbox import Doorbell, Outbox
from monitor.selection import parse_when
from monitor.supervisor import Services, Supervisor
from monitor.systemd import Notifier

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
    prefix = registration.hand_prefix(args.prefix, workset_id, app.settings.scan.prefixes)
    priority = args.priority
    not_before_ms = parse_when(args.not_before, now_ms=app.clock.now_ms()) if args.not_before else None
    known = await app.store.get(workset_id)
    verdict = None
    if known is None and not args.no_validate:
        verdict = await validation.inspect(
            S3Source(app.clients.get("s3"), bucket),
            folder=prefix,
            max_manifest_bytes=app.settings.scan.max_manifest_bytes,
        )
        registration.refuse_unless_new(verdict, f"s3://{bucket}/{prefix}")
        priority = priority or verdict.priority
        not_before_ms = not_before_ms or verdict.not_before_ms
    created, ws = await actions.register(
        app.store,
        workset_id=workset_id,
        bucket=bucket,
        prefix=prefix,
        priority=priority or Priority.NORMAL,
        ctx=app.context("registered by hand" + (" (not validated)" if args.no_validate else "")),
        not_before_ms=not_before_ms,
        samples=verdict.samples if verdict is not None else None,
        data_bytes=verdict.data_bytes if verdict is not None else None,
    )
    if created:
        text = f"registered {ws.workset_id} ({ws.priority.value}) at {ws.s3_uri}: {ws.state.value}"
        text += f", not before {iso(ws.available_at_ms)}" if states.scheduled(ws) else ""
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


async def cmd_report(app: App) -> int:
    args = app.args
    since_ms = report.parse_since(args.since, now_ms=app.clock.now_ms()) if args.since else None
    worksets = [
        ws
        for ws in await app.store.list(state=args.state, priority=args.priority)
        if (since_ms is None or ws.created_at_ms >= since_ms) and ws.prefix.startswith(args.prefix or "")
    ]
    rows = sorted((report.row(ws) for ws in worksets), key=lambda r: (r.registered_ms, r.workset_id))
    columns = report.step_columns([step.name for step in app.settings.pipeline.steps], rows)
    fmt = "json" if args.json else args.format or ("table" if sys.stdout.isatty() else "tsv")
    if fmt == "json":
        print(report.as_json(rows, columns))
    elif fmt in ("csv", "tsv"):
        sys.stdout.write(report.delimited(rows, columns, dialect=fmt))
    else:
        headers, cells = report.table_cells(rows, columns)
        table = render.table(headers, cells) if rows else "no worksets match"
        print(terminal.lines_for_terminal("\n".join([table, "", *report.summary_lines(rows, columns)])))
    return errors.EX_OK


async def cmd_stats(app: App) -> int:
    stats = await app.store.stats(now_ms=app.clock.now_ms())
    app.emit(render.stats_dict(stats), render.stats_table(stats))
    return errors.EX_OK


def known_folders(settings: config.Settings, environ: dict[str, str]) -> KnownFolders | None:
    """The known-folders file in ``[run] state_dir``, else in the directory systemd made for the unit
    (``StateDirectory=`` sets ``$STATE_DIRECTORY``); None without either."""
    state_dir = settings.run.state_dir or environ.get("STATE_DIRECTORY", "").split(":")[0]
    return KnownFolders(path_for(state_dir, settings.table.name)) if state_dir else None


async def cmd_run(app: App) -> int:
    settings = app.settings
    config.require_pipeline(settings, app.loaded.path)
    if not settings.scan.bucket:
        raise errors.ConfigError(f"run needs [scan] bucket (or ${config.ENV_PREFIX}SCAN__BUCKET)")
    app.metrics = metrics = Metrics()
    queue = None
    if settings.scan.sqs_queue_url:
        queue = SqsQueue(app.clients.get("sqs"), settings.scan.sqs_queue_url)
    environ = dict(os.environ)
    watchdog = environ.get("WATCHDOG_USEC")
    owner = leases.new_owner_id()
    doorbell = Doorbell()
    store = app.make_store(on_pending=doorbell.ring)
    outbox = Outbox(
        store,
        app.clock,
        owner=owner,
        doorbell=doorbell,
        notify=settings.notify,
        channels=app.channels(settings.notify, store),
        hold_s=settings.notify.claim_s,
        recorder=metrics,
    )
    services = Services(
        store=store,
        source=app.source,
        clock=app.clock,
        runner=steps.Runner(
            app.clock,
            base_env=environ,
            passthrough=settings.run.step_env_passthrough,
            observe=lambda step, r: metrics.step(step, r.outcome.value, r.seconds),
            logs=app.step_logs(),
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
        known_folders=known_folders(settings, environ),
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


def cmd_check_config(app: App) -> int:
    s = app.settings
    config.require_pipeline(s, app.loaded.path)
    text = (
        f"{app.loaded.path}: valid (table {s.table.name}, bucket {s.scan.bucket or '-'}, "
        f"{len(s.scan.prefixes)} prefix(es), {len(s.pipeline.steps)} step(s))"
    )
    app.emit(s.redacted(), text)
    return errors.EX_OK


def cmd_healthcheck(app: App) -> int:
    metrics = app.settings.metrics
    host = "127.0.0.1" if metrics.host in ("0.0.0.0", "::", "") else metrics.host  # noqa: S104 - only compared
    url = app.args.url or f"http://{host}:{metrics.port}/healthz"
    as_json = bool(app.args.json)
    try:
        with urllib.request.urlopen(url, timeout=app.args.timeout_s) as response:  # noqa: S310 - our side port
            body = response.read().decode().strip()
            print(
                render.to_json({"healthy": True, "url": url, "status": response.status, "body": body})
                if as_json
                else body
            )
            return errors.EX_OK
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read().decode().strip()
        report = {"healthy": False, "url": url, "status": exc.code, "body": body}
        text = f"{PROG}: unhealthy ({exc.code}): {terminal.for_terminal(body)}"
    except OSError as exc:
        reason = str(getattr(exc, "reason", exc))
        report = {"healthy": False, "url": url, "status": None, "error": f"no answer: {reason}"}
        text = f"{PROG}: no answer from {url}: {terminal.for_terminal(reason)}"
    if as_json:
        print(render.to_json(report))
    else:
        print(text, file=sys.stderr)
    return errors.EX_FAILED


def cmd_iam_policy(app: App) -> int:
    policy = iam.render(
        app.settings,
        role=app.args.role,
        account=app.args.account,
        region=app.args.region,
        read_buckets=tuple(app.args.read_bucket or ()),
    )
    print(render.to_json(policy))
    return errors.EX_OK


def cmd_check(app: App) -> int:
    config.require_pipeline(app.settings, app.loaded.path)
    results = preflight.run(app.settings, app.clients, config_path=str(app.loaded.path))
    rows = [(c.status, c.name, c.detail) for c in results]
    app.emit(
        [{"check": c.name, "status": c.status, "detail": c.detail} for c in results],
        render.table(("RESULT", "CHECK", "DETAIL"), rows),
    )
    if any(c.unreachable for c in results):
        return errors.EX_UNAVAILABLE
    return errors.EX_FAILED if any(c.status == "FAIL" for c in results) else errors.EX_OK


def cmd_export(app: App) -> int:
    client, table = app.clients.get("dynamodb"), app.settings.table.name
    now = iso(app.clock.now_ms()) or ""
    if app.args.out in (None, "-"):
        count = backup.export(client, table, sys.stdout, now_iso=now)
    else:
        target = Path(app.args.out)
        partial = target.with_name(target.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8") as out:
                count = backup.export(client, table, out, now_iso=now)
            partial.replace(target)  # a complete export or none
        except OSError as exc:
            raise errors.InvalidInput(f"{target}: cannot write the export ({exc.strerror or exc})") from None
        finally:
            partial.unlink(missing_ok=True)
        if app.args.json:
            print(render.to_json({"exported": count, "table": table, "file": str(target)}))
        else:
            print(f"exported {count} items of table {table} to {target}", file=sys.stderr)
    return errors.EX_OK


def cmd_import(app: App) -> int:
    source = app.args.file
    try:
        handle = sys.stdin if source == "-" else Path(source).open(encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise errors.InvalidInput(f"{source}: cannot read ({exc.strerror or exc})") from None
    with handle:
        items = backup.read(handle, source="stdin" if source == "-" else source)
    ctx = app.context("import")
    report = backup.load(
        app.clients.get("dynamodb"),
        app.settings.table.name,
        items,
        force=app.args.force,
        actor=ctx.actor,
        source="stdin" if source == "-" else source,
        now_ms=ctx.now_ms,
    )
    text = (
        f"worksets: {report.worksets_written} written, {report.worksets_kept} kept (the table's were as new); "
        f"events: {report.events_written} written, {report.events_kept} already there; "
        f"fleet counter set to {report.in_progress} in progress"
    )
    app.emit(dataclasses.asdict(report), text)
    return errors.EX_OK


async def cmd_migrate(app: App) -> int:
    args, scan = app.args, app.settings.scan
    migration = Migration(
        app.store,
        app.source,
        app.clock,
        prefixes=scan.prefixes,
        actor=operator_identity(),
        notify=filters.wanted(app.settings.notify),
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
