"""The operator's everyday commands beyond a single transition: ``validate`` a folder before writing
``daylily.ready``, and (``cli`` maps exit codes) the commands that act on several worksets at once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from typing import Any

from monitor import by_hand, config, errors, legacy, render, steps, validation
from monitor.app import PROG, App, operator_identity
from monitor.aws.s3 import S3Source
from monitor.driver import Ending, drive
from monitor.manifest import Invalid
from monitor.model import check_workset_id
from monitor.policy import Policy


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
        runner = steps.Runner(app.clock, base_env=dict(os.environ), passthrough=settings.run.step_env_passthrough)
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
