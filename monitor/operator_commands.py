"""The operator's everyday commands: ``validate`` a folder before writing ``daylily.ready``, ``run --workset`` one
workset by hand, ``list`` with filters and paging, and the audited transitions (``retry``, ``cancel``, ``ignore``,
``set-priority``, ``release``) on one workset, several, or those a filter selects."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor import (
    actions,
    by_hand,
    config,
    errors,
    fleet_view,
    legacy,
    registration,
    render,
    states,
    steps,
    validation,
    watch,
)
from monitor.app import PROG, App, operator_identity
from monitor.aws.s3 import S3Source
from monitor.clock import iso
from monitor.driver import Ending, drive
from monitor.manifest import Invalid
from monitor.model import FLEET_ID, Event, EventType, Pause, Priority, State, Workset, WorksetId, check_workset_id
from monitor.policy import Policy
from monitor.selection import Position, Selection, parse_since, parse_when
from monitor.states import Action


async def cmd_validate(app: App) -> int:
    """Every problem of one workset folder, each with its file, line and column; nothing is written.

    Cost: the folder's top-level listing, one request for ``sample_data/``, two bounded reads and one HEAD per
    distinct data object the manifest names (what the scanner spends on a new folder)."""
    args = app.args
    if args.folder:
        bucket, folder = args.folder
    else:
        bucket = app.settings.scan.bucket
        if not bucket:
            raise errors.InvalidInput("validate --prefix needs [scan] bucket; or give the folder as s3://BUCKET/…/")
        folder = args.prefix.strip("/") + "/"
    where = f"s3://{bucket}/{folder}"
    source = S3Source(app.clients.get("s3"), bucket)
    listing = await source.top_level(folder)
    problems: list[Invalid] = []
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    try:
        check_workset_id(name)
    except ValueError as exc:
        problems.append(Invalid("folder name", f"{exc}: the scanner registers it under a stand-in id, as invalid"))
    if not listing.files and not listing.folders:
        problems.append(Invalid(where, "is empty or does not exist"))
        verdict = validation.Verdict(kind="invalid")
    else:
        verdict = await validation.validate(
            source, folder=folder, listing=listing, max_manifest_bytes=app.settings.scan.max_manifest_bytes
        )
        problems += verdict.problems
    notes = _notes(app, bucket, folder, legacy.classify(listing.files), valid=not problems)
    data: dict[str, Any] = {
        "folder": where,
        "valid": not problems,
        "priority": verdict.priority.value,
        "samples": verdict.samples,
        "data_objects": verdict.references,
        "problems": [{"file": p.file, "line": p.line, "column": p.column, "message": p.message} for p in problems],
        "notes": notes,
    }
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        lines = [f"{where}: {count}", *(f"  {p}" for p in problems)]
    else:
        lines = [
            f"{where}: valid ({verdict.samples} sample row(s), {verdict.references} data object(s), "
            f"priority {verdict.priority.value})"
        ]
    app.emit(data, "\n".join(lines + [f"note: {n}" for n in notes]))
    return errors.EX_FAILED if problems else errors.EX_OK


def _notes(app: App, bucket: str, folder: str, sentinel: str | None, *, valid: bool) -> list[str]:
    """What will happen to the folder: its sentinels, and whether the scanner looks at it at all."""
    scan, notes = app.settings.scan, []
    watched = bucket == scan.bucket and any(
        folder.startswith(p) and "/" not in folder[len(p) :].rstrip("/") for p in scan.prefixes
    )
    if not watched:
        notes.append(
            "no [scan] prefix of this configuration holds this folder: the scanner will not see it "
            "(a workset folder is <bucket>/<prefix><name>/)"
        )
    if sentinel is None:
        notes.append(
            f"no {legacy.READY} yet: write it to start the run"
            if valid
            else f"no {legacy.READY} yet: fix the problems before writing it"
        )
    elif sentinel == legacy.READY:
        notes.append(
            f"{legacy.READY} is present: the scanner registers it"
            + ("" if valid else " as invalid (state error) unless it is fixed first")
        )
    elif sentinel == legacy.IGNORE:
        notes.append(f"{legacy.IGNORE} is present: the monitor leaves this folder alone")
    else:
        notes.append(f"{sentinel} from the legacy monitor: `workset-monitor migrate` brings it over")
    return notes


async def cmd_run_workset(app: App) -> int:
    """``run --workset ID [--step NAME]``: claim that workset through the normal lease, run its remaining steps (or
    exactly the named one) as a daemon would, record everything; exit 0 once it (or that step) completed."""
    args, settings = app.args, app.settings
    config.require_pipeline(settings, app.loaded.path)
    pipeline = settings.pipeline.steps
    names = [step.name for step in pipeline]
    if args.step is not None and args.step not in names:
        raise errors.InvalidInput(f"--step {args.step[:80]!a} is not a step of [[pipeline.steps]]: {', '.join(names)}")
    owner = f"{operator_identity()}:{os.getpid()}:{random.SystemRandom().getrandbits(32):08x}"

    def say(text: str) -> None:
        if not args.json:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    holding = await by_hand.claim(
        app.store, app.clock, workset_id=args.workset, owner=owner, policy=Policy.from_settings(settings), say=say
    )
    ws = holding.ws
    todo = [args.step] if args.step else [name for name in names if name not in ws.steps_done]
    say(f"claimed {ws.workset_id} (epoch {ws.epoch}, attempt {ws.attempts}); running {', '.join(todo) or 'no step'}")
    stop = asyncio.Event()  # Ctrl-C or SIGTERM: the step is stopped and the workset given back, not left held
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        runner = steps.Runner(
            app.clock,
            base_env=dict(os.environ),
            passthrough=settings.run.step_env_passthrough,
            logs=app.step_logs(),
        )
        ending = await drive(holding, steps=pipeline, runner=runner, drain=asyncio.Event(), kill=stop, only=args.step)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    after = await app.store.get(ws.workset_id) or holding.ws
    ran = {name: ms / 1000 for name, ms in after.step_ms if name in todo}
    done = ending in (Ending.COMPLETE, Ending.STEP_DONE)
    text = f"{after.workset_id}: {_ENDINGS[ending]} ({after.state.value})"
    text += "".join(f"\n  {name}: {seconds:.1f} s" for name, seconds in ran.items())
    if not done and after.last_error:
        text += f"\n  last error: {after.last_error}"
    app.emit(
        {
            "workset_id": after.workset_id,
            "ending": ending.value,
            "state": after.state.value,
            "steps_run": todo,
            "step_seconds": ran,
            "workset": render.workset_dict(after),
        },
        text,
    )
    return errors.EX_OK if done else errors.EX_FAILED


_ENDINGS = {
    Ending.COMPLETE: "every step finished",
    Ending.STEP_DONE: "the step finished; the steps left are given back to the daemons",
    Ending.RETRYING: "a step failed for now; the daemons retry it after its backoff",
    Ending.ERROR: "a step failed",
    Ending.RELEASED: "stopped; given back (no attempt counted)",
    Ending.LOST: "the lease was lost (another holder, or the table unreachable); nothing more was written here",
    Ending.CRASHED: "crashed",
}


# --- list ----------------------------------------------------------------------------------------------------------


def selection(app: App) -> Selection:
    """The filters given on the command line (``--state``, ``--priority``, ``--since``, ``--prefix``,
    ``--error-category``; each only where the command has it)."""
    args = app.args
    since = getattr(args, "since", None)
    return Selection(
        state=getattr(args, "state", None),
        priority=None if args.command == "set-priority" else getattr(args, "priority", None),  # there: the new one
        changed_since_ms=parse_since(since, now_ms=app.clock.now_ms()) if since else None,
        prefix=getattr(args, "prefix", None),
        error_category=getattr(args, "error_category", None),
    )


async def select(
    app: App, chosen: Selection, *, after: Position | None = None, limit: int | None = None
) -> tuple[list[tuple[Position, Workset]], bool]:
    """The worksets ``chosen`` matches, in the listing order, past ``after``, at most ``limit``; and whether more
    match. Reads the index a page at a time (one query page and one ``BatchGetItem`` per 100 entries) and stops as
    soon as it has one more than ``limit``."""
    found: list[tuple[Position, Workset]] = []
    size = 100 if limit is None else min(100, limit + 1)
    pages = app.store.pages(state=chosen.state, priority=chosen.priority, after=after, size=size)
    async with contextlib.aclosing(pages):
        async for page in pages:
            for position, ws in page:
                if not chosen.matches(ws):
                    continue
                if limit is not None and len(found) == limit:
                    return found, True
                found.append((position, ws))
    return found, False


async def cmd_list(app: App) -> int:
    args = app.args
    found, more = await select(app, selection(app), after=args.after, limit=args.limit)
    worksets = [ws for _, ws in found]
    text = render.worksets_table(worksets, now_ms=app.clock.now_ms()) if worksets else "no worksets match"
    app.emit([render.workset_dict(ws) for ws in worksets], text)
    if more:  # the next page: the same command, from past the last one shown
        token = found[-1][0].token
        if args.json:
            print(render.to_json({"more": True, "after": token}), file=sys.stderr)
        else:
            print(f"{PROG}: more worksets match: add --after {token} for the next {args.limit}", file=sys.stderr)
    return errors.EX_OK


# --- the audited transitions, on one workset or many ----------------------------------------------------------------


@dataclass
class Outcome:
    workset_id: str
    from_state: str = ""
    to_state: str = ""
    detail: str = ""  # e.g. the priority change
    result: str = "done"  # done | unchanged | would | failed
    error: str = ""
    event: dict[str, Any] | None = None
    ws: Workset | None = None  # as read for the plan: the write decides on it (and is refused if it changed)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "workset_id": self.workset_id,
            "from_state": self.from_state or None,
            "to_state": self.to_state or None,
            "result": self.result,
        }
        if self.detail:
            data["detail"] = self.detail  # the priority change, or that there was none
        if self.error:
            data["error"] = self.error
        if self.event is not None:
            data["event"] = self.event
        return data


def transition(action: Action | Callable[[argparse.Namespace], Action], default_reason: str) -> Any:
    """A transition command: on the ids given (``-``: one per line on standard input) or on the worksets the
    filters select (then it needs ``--yes``, or ``--dry-run`` to only print). Each workset is its own conditional
    write: a failure is reported for its id and the others go on; exit 1 if any failed."""

    async def command(app: App) -> int:
        chosen = action(app.args) if callable(action) else action
        args = app.args
        ids: list[str] = list(getattr(args, "ids", None) or [])
        if ids == ["-"]:
            ids = _ids_from(sys.stdin)
        if len(ids) == 1 and not getattr(args, "dry_run", False):  # as it always was: one line, its own exit code
            return await _one(app, WorksetId(ids[0]), chosen, default_reason)
        if ids:
            outcomes = [await _plan_id(app, workset_id, chosen) for workset_id in ids]
        else:
            outcomes = await _plan_selection(app, chosen)
            if not args.dry_run and not args.yes:
                shown = ", ".join(o.workset_id for o in outcomes[:5]) + (", ..." if len(outcomes) > 5 else "")
                raise errors.InvalidInput(
                    f"nothing done: the filters select {len(outcomes)} workset(s) ({shown or 'none'}); add --yes to "
                    f"{args.command} them, or --dry-run to list them"
                )
        if not args.dry_run:
            for outcome in outcomes:
                if outcome.result == "would":
                    await _apply(app, outcome, chosen, default_reason)
        _print_outcomes(app, outcomes, heading=_heading(outcomes, dry_run=args.dry_run))
        return errors.EX_FAILED if any(o.result == "failed" for o in outcomes) else errors.EX_OK

    return command


def _ids_from(stream: Any) -> list[str]:
    """Workset ids, one per line (blank lines and ``#`` comments skipped); a bad one is refused with its line."""
    ids: list[str] = []
    for number, line in enumerate(stream, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(check_workset_id(text))
        except ValueError as exc:
            raise errors.InvalidInput(f"standard input line {number}: {exc}") from None
    if not ids:
        raise errors.InvalidInput("no workset ids on standard input")
    return list(dict.fromkeys(ids))


async def _plan_id(app: App, workset_id: str, chosen: Action) -> Outcome:
    ws = await app.store.get(WorksetId(workset_id))  # consistent: the write needs no other read
    if ws is None:
        return Outcome(workset_id, result="failed", error=f"workset {workset_id} is not registered")
    return _plan(app, ws, chosen)


async def _plan_selection(app: App, chosen: Action) -> list[Outcome]:
    """The selected worksets the action applies to (a filter never selects one it would refuse)."""
    found, _ = await select(app, selection(app))
    planned = [_plan(app, ws, chosen) for _, ws in found]
    return [o for o in planned if o.result == "would"]


def _plan(app: App, ws: Workset, chosen: Action) -> Outcome:
    outcome = Outcome(ws.workset_id, from_state=ws.state.value, ws=ws)
    if chosen is Action.SET_PRIORITY and ws.priority is app.args.priority:
        outcome.to_state, outcome.result = ws.state.value, "unchanged"
        outcome.detail = f"already {ws.priority.value}"
        return outcome
    try:
        to = states.target(ws.state, chosen, attempts=ws.attempts, max_attempts=app.settings.run.max_attempts)
    except errors.IllegalTransition as exc:
        outcome.result, outcome.error = "failed", str(exc)
        return outcome
    outcome.to_state, outcome.result = to.value, "would"
    if chosen is Action.SET_PRIORITY:
        outcome.detail = f"priority {ws.priority.value} -> {app.args.priority.value}"
    return outcome


async def _apply(app: App, outcome: Outcome, chosen: Action, reason: str) -> None:
    try:
        decision = await _decide_and_commit(app, WorksetId(outcome.workset_id), chosen, reason, outcome.ws)
    except errors.AwsUnavailable:
        raise  # nothing more will work: exit 69, as for one workset
    except errors.MonitorError as exc:
        outcome.result, outcome.error = "failed", str(exc)
        return
    if decision is None:
        outcome.result = "unchanged"
        return
    outcome.from_state, outcome.to_state = decision.before.state.value, decision.after.state.value
    outcome.result, outcome.event = "done", render.event_dict(decision.event)


async def _decide_and_commit(
    app: App, workset_id: WorksetId, chosen: Action, reason: str, ws: Workset | None
) -> states.Decision | None:
    """One workset's transition, checked on ``ws`` (as just read); None when there is nothing to do. One conditional
    write (plus a read only if the workset changed in between)."""
    if ws is None:
        raise errors.NotFound(f"workset {workset_id} is not registered")
    if chosen is Action.SET_PRIORITY and ws.priority is app.args.priority:
        return None  # no audit event for no change
    if chosen in (Action.RETRY, Action.RETRY_FORCE):
        registration.refuse_stand_in(ws)
    if chosen is Action.RETRY:
        source = S3Source(app.clients.get("s3"), ws.bucket)
        await registration.revalidate(source, ws, max_manifest_bytes=app.settings.scan.max_manifest_bytes)
    return await actions.act(
        app.store,
        workset_id,
        chosen,
        app.context(reason),
        priority=getattr(app.args, "priority", None),
        from_start=getattr(app.args, "from_start", False),
        known=ws,
        until_ms=parse_when(app.args.until, now_ms=app.clock.now_ms()) if chosen is Action.DEFER else None,
    )


async def _one(app: App, workset_id: WorksetId, chosen: Action, reason: str) -> int:
    ws = await app.store.get(workset_id)  # consistent: the write needs no other read
    decision = await _decide_and_commit(app, workset_id, chosen, reason, ws)
    if decision is None:
        priority = app.args.priority.value
        text = f"{workset_id} already has priority {priority}; nothing changed"
        app.emit({"workset_id": workset_id, "priority": priority, "changed": False}, text)
        return errors.EX_OK
    before, after = decision.before, decision.after
    detail = f"priority {before.priority.value} -> {after.priority.value}" if before.state is after.state else ""
    if chosen is Action.DEFER:
        detail = f"not before {iso(after.available_at_ms)}" if states.scheduled(after) else "due now"
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


def _heading(outcomes: list[Outcome], *, dry_run: bool) -> str:
    if dry_run:
        return f"dry run: {sum(o.result == 'would' for o in outcomes)} workset(s) would change; nothing written"
    counts = {r: sum(o.result == r for o in outcomes) for r in ("done", "unchanged", "failed")}
    return ", ".join(f"{n} {r}" for r, n in counts.items() if n) or "no worksets match"


def _print_outcomes(app: App, outcomes: list[Outcome], *, heading: str) -> None:
    rows = [(o.workset_id, o.from_state or "-", o.to_state or "-", o.result, o.error or o.detail) for o in outcomes]
    text = render.table(("WORKSET", "FROM", "TO", "RESULT", "DETAIL"), rows) if rows else ""
    app.emit([o.as_dict() for o in outcomes], "\n".join(t for t in (text, heading) if t))


# --- the fleet -----------------------------------------------------------------------------------------------------


async def cmd_fleet(app: App) -> int:
    """The daemons sharing the table (alive, silent for N s, gone), what each runs and for how long, and which one
    does the chores. Cost: one Query of the presence items, one of the fleet's control items, and what
    ``list --state in_progress`` costs."""
    now_ms = app.clock.now_ms()
    presences = await app.store.presences()
    running = await app.store.list(state=State.IN_PROGRESS)
    fleet = await app.store.fleet()
    paused = fleet.paused
    found = fleet_view.daemons(presences, running, now_ms=now_ms)
    alive = sum(d.status == "alive" for d in found)
    text = (
        render.table(fleet_view.HEADERS, fleet_view.table_rows(found, now_ms=now_ms))
        + f"\n{alive} alive, {len(found) - alive} silent or gone; {len(running)} workset(s) in progress"
        if found
        else "no daemon has written its presence (none running, or all older than presence items)"
    )
    text += "\n" + fleet_view.chores_text(fleet.chores, now_ms=now_ms)
    if paused is not None:
        text += f"\n{_paused_text(paused)}"
    app.emit(
        {
            "daemons": [fleet_view.as_dict(d) for d in found],
            "in_progress": len(running),
            "paused": _pause_dict(paused),
            "chores": fleet_view.chores_dict(fleet.chores),
        },
        text,
    )
    return errors.EX_OK


# --- maintenance pause ----------------------------------------------------------------------------------------------


def _paused_text(p: Pause) -> str:
    return f"intake PAUSED since {iso(p.at_ms)} by {p.by}: {p.reason} (`workset-monitor resume` restarts it)"


def _pause_dict(p: Pause | None) -> dict[str, Any] | None:
    return None if p is None else {"reason": p.reason, "by": p.by, "since": iso(p.at_ms)}


def _fleet_event(app: App, kind: EventType, reason: str) -> Event:
    """A fleet-wide event (``FLEET_ID``), urgent so that no ``min_priority`` drops it; in the outbox if a channel
    wants it (``[notify] events``: ``paused`` and ``resumed`` by default)."""
    ctx = app.context(reason)
    event = Event(
        workset_id=FLEET_ID,
        seq=ctx.now_ms,  # one partition of their own; two in the same millisecond are refused (try again)
        type=kind,
        at_ms=ctx.now_ms,
        actor=ctx.actor,
        from_state=None,
        to_state=None,
        reason=reason,
        priority=Priority.URGENT,
    )
    return dataclasses.replace(event, pending=ctx.notify(event))


async def cmd_pause(app: App) -> int:
    """Stop intake fleet-wide for maintenance: from the moment this write lands, every claim's own transaction is
    refused (no daemon needs to read it first); running work goes on. One transaction: the flag on the fleet's
    control items (the counter and its shards) and the ``paused`` event (notified)."""
    reason = app.args.reason or "maintenance"
    event = _fleet_event(app, EventType.PAUSED, reason)
    already = await app.store.pause(reason=reason, by=event.actor, now_ms=event.at_ms, event=event)
    if already is not None:
        text = (
            f"intake is already paused (since {iso(already.at_ms)} by {already.by}: {already.reason}); nothing changed"
        )
        app.emit({"paused": _pause_dict(already), "changed": False}, text)
        return errors.EX_OK
    text = (
        f"intake paused fleet-wide ({reason}): no daemon claims new work from now on; running work continues. "
        "`workset-monitor resume` restarts intake"
    )
    app.emit({"paused": _pause_dict((await app.store.fleet()).paused), "changed": True}, text)
    return errors.EX_OK


async def cmd_resume(app: App) -> int:
    ended = await app.store.resume(event=_fleet_event(app, EventType.RESUMED, app.args.reason or "maintenance over"))
    if ended is None:
        app.emit({"paused": None, "changed": False}, "intake is not paused; nothing changed")
        return errors.EX_OK
    text = f"intake resumed (it was paused since {iso(ended.at_ms)} by {ended.by}: {ended.reason})"
    app.emit({"paused": None, "changed": True, "ended": _pause_dict(ended)}, text)
    return errors.EX_OK


# --- watch ---------------------------------------------------------------------------------------------------------


async def cmd_watch(app: App) -> int:
    """Redraw the view every ``--interval`` seconds until ``q`` or Ctrl-C (``--once``: print one frame and exit)."""
    watcher = watch.Watcher(app.store, app.clock)
    if app.args.once or not sys.stdout.isatty():
        print("\n".join(watch.screen(await watcher.frame(), width=_width())))
        return errors.EX_OK
    with watch.keys() as pressed:
        sys.stdout.write("\x1b[?25l")  # hide the cursor while drawing
        try:
            while True:
                lines = watch.screen(await watcher.frame(), width=_width())
                sys.stdout.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\n\x1b[J")
                sys.stdout.flush()
                if await pressed(app.args.interval, "qQ"):
                    return errors.EX_OK
        finally:
            sys.stdout.write("\x1b[?25h")
            sys.stdout.flush()


def _width() -> int:
    return shutil.get_terminal_size((120, 40)).columns
