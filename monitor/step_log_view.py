"""``workset-monitor logs ID [--step NAME] [--follow]``: a workset's full step logs from S3 (``[run] step_logs``),
on any host.

- ``--step NAME``: the latest run of that step, byte for byte (piped, it is exactly what the step printed; on a
  terminal, control characters are shown escaped). Without it: every run, oldest first, each under a header line.
- ``--follow``: print what is there, then what is added, every ``--interval`` seconds, until the workset is terminal
  (or, with ``--step``, that step has finished). Each refresh: one GetItem, one ListObjectsV2 (per 1000 objects), and
  one ranged GET per log that grew.
- ``--json``: the index of the runs (epoch, attempt, step, bytes, keys), not their content.
"""

from __future__ import annotations

import asyncio
import codecs
import sys
from collections.abc import Iterable
from typing import BinaryIO

from monitor import errors, loops, step_logs
from monitor.app import App
from monitor.model import Workset
from monitor.step_logs import RunName, StepLog
from monitor.terminal import for_terminal


async def cmd_logs(app: App) -> int:
    args = app.args
    ws = await app.store.get(args.id)
    if ws is None:
        raise errors.NotFound(f"workset {args.id} is not registered")
    order = [step.name for step in app.settings.pipeline.steps]
    found = await _runs(app, ws, order)
    if args.json:
        app.emit([_run_dict(ws, log) for log in found], "")
        return errors.EX_OK
    if not found and not args.follow:
        raise errors.NotFound(_nothing(ws, args.step, app.settings.run.step_logs))
    printer = _Printer(app, ws, whole=args.step is None)
    await printer.show(found)
    current: Workset = ws
    interval: float = args.interval

    async def refresh() -> float | None:
        nonlocal current
        if not args.follow or _over(current, args.step):
            return None
        current = await app.store.get(current.workset_id) or current  # first: the logs are complete once it is over
        await printer.show(await _runs(app, current, order))
        return interval

    if args.follow and not _over(ws, args.step):
        await app.clock.sleep(interval)
    await loops.repeat(app.clock, refresh, until=asyncio.Event())  # until the run is over (or Ctrl-C)
    return errors.EX_OK


async def _runs(app: App, ws: Workset, order: Iterable[str]) -> list[StepLog]:
    """The workset's step runs that have a log, oldest first; with ``--step``, only that step's latest."""
    objects = await app.log_store.sizes(ws.bucket, step_logs.folder(ws.prefix))
    found = step_logs.step_logs(objects, ws.prefix, order=order)
    if app.args.step is None:
        return found
    return [log for log in found if log.run.step == app.args.step][-1:]


def _over(ws: Workset, step: str | None) -> bool:
    """Nothing more will be written to the logs being followed (their last writes come before this record)."""
    return ws.state.terminal or (step is not None and step in ws.steps_done)


def _nothing(ws: Workset, step: str | None, setting: str) -> str:
    what = f"no log of step {step}" if step else "no step log"
    why = (
        'logs are written only by daemons with [run] step_logs = "s3"; this configuration has it off'
        if setting == "off"
        else "no step has run since step logs were turned on"
    )
    return f"{what} for {ws.workset_id} in s3://{ws.bucket}/{step_logs.folder(ws.prefix)} ({why})"


def _run_dict(ws: Workset, log: StepLog) -> dict[str, object]:
    return {
        "epoch": log.run.epoch,
        "attempt": log.run.attempt,
        "step": log.run.step,
        "bytes": log.size,
        "uris": [f"s3://{ws.bucket}/{segment.key}" for segment in log.segments],
    }


class _Printer:
    """Prints each log's bytes once, in order, as they appear."""

    def __init__(self, app: App, ws: Workset, *, whole: bool) -> None:
        self._app, self._bucket = app, ws.bucket
        self._headers = whole  # every run under a header; with --step only a newer run of it gets one
        self._printed: dict[str, int] = {}  # key -> bytes printed
        self._started: set[RunName] = set()
        self._out: BinaryIO = sys.stdout.buffer
        self._tty = sys.stdout.isatty()
        self._text = _decoder()  # on a terminal: a character split between two reads is shown whole

    async def show(self, logs: list[StepLog]) -> None:
        for log in logs:
            if log.run not in self._started:
                if self._headers or self._started:
                    self._header(log)
                self._started.add(log.run)
            for segment in log.segments:
                done = self._printed.get(segment.key, 0)
                if segment.size > done:
                    data = await self._app.log_store.read(self._bucket, segment.key, start=done)
                    self._write(data)
                    self._printed[segment.key] = done + len(data)
        self.flush()

    def flush(self) -> None:
        self._out.flush()

    def _header(self, log: StepLog) -> None:
        first = f"s3://{self._bucket}/{log.segments[0].key}" if log.segments else ""
        blank = "\n" if self._started else ""
        run = log.run
        line = f"{blank}==> step {run.step}, attempt {run.attempt}, epoch {run.epoch}: {first} <==\n"
        if self._tty:
            line = self._text.decode(b"", final=True) + _shown(line)
            self._text = _decoder()
        self._out.write(line.encode())

    def _write(self, data: bytes) -> None:
        if not self._tty:
            self._out.write(data)
            return
        self._out.write(_shown(self._text.decode(data)).encode())


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def _shown(text: str) -> str:
    """Text as a terminal shows it and does not obey: line breaks and tabs kept, other control characters escaped."""
    return "\n".join("\t".join(for_terminal(part) for part in line.split("\t")) for line in text.split("\n"))
