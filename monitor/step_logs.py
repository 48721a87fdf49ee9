"""Full step logs in S3 (``[run] step_logs = "s3"``): every step run's complete output, readable from any host with
``workset-monitor logs``.

Layout, in the workset's own folder::

    <prefix>.workset-monitor/logs/<epoch>-<attempt>-<step>.log       the output, or its first 8 MiB
    <prefix>.workset-monitor/logs/<epoch>-<attempt>-<step>.log.1     the next 8 MiB, and so on

The epoch is the lease's: one claim runs a step at most once, so the name is unique per step run, and a stale
holder's late writes land under its own epoch's name and never overwrite the new holder's log.

Why segments and not one multipart upload: the parts of a multipart upload cannot be read until it is completed,
so ``logs --follow`` could not show a running step, and a daemon killed mid-step would leave an invisible (and
billed) incomplete upload instead of the output up to its death, which is the log an operator wants most. Here the
open segment is rewritten whole as it grows, at most every ``FLUSH_S`` seconds times its size in MiB: a step's output
is readable ~10 s behind, a segment is rewritten at most ~100 KiB/s worth, and a quiet step costs nothing.

Bounded memory: one segment (≤ ``SEGMENT_BYTES``) per running step, plus its copy while it is uploaded. A full
segment that cannot be written (S3 down, access denied) is dropped, counted and logged, and the next segment begins
with a line saying how many bytes are missing; a failed rewrite of the open segment is tried again at the next flush.
Nothing here ever fails or stops a step.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from monitor import errors, logs, loops
from monitor.clock import SystemClock
from monitor.ports import LogStore

log = logs.get("monitor.step_logs")

SEGMENT_BYTES = 8 << 20
FLUSH_S = 10.0
# The last upload of a step run: its outcome is recorded after it, and a daemon stopping waits for it, so a hung S3
# must not hold either for long (systemd's TimeoutStopSec is 60 s); past this, the end of the log is lost (counted).
CLOSE_TIMEOUT_S = 10.0
_MIB = 1 << 20
_CONTINUED = re.compile(r"\.log\.([1-9][0-9]*)$")
_RUN = re.compile(r"^([0-9]+)-([0-9]+)-([A-Za-z0-9_.-]{1,64})$")


@dataclass(frozen=True, slots=True, order=True)
class RunName:
    """One step run: the lease epoch it ran under, the workset's attempt then, the step."""

    epoch: int
    attempt: int
    step: str

    def key(self, prefix: str, seq: int = 0) -> str:
        """The S3 key of segment ``seq`` of this run's log, for the workset folder ``prefix`` (ends in '/')."""
        base = f"{folder(prefix)}{self.epoch}-{self.attempt}-{self.step}.log"
        return base if seq == 0 else f"{base}.{seq}"


def folder(prefix: str) -> str:
    """Where a workset's step logs live."""
    return f"{prefix}.workset-monitor/logs/"


def parse(name: str) -> tuple[RunName, int] | None:
    """``(run, segment number)`` of a log object's name (the part after ``folder``); None for anything else."""
    continued = _CONTINUED.search(name)
    if continued:
        stem, seq = name[: continued.start()], int(continued.group(1))
    elif name.endswith(".log"):
        stem, seq = name.removesuffix(".log"), 0
    else:
        return None
    match = _RUN.match(stem)
    if not match:
        return None
    return RunName(int(match.group(1)), int(match.group(2)), match.group(3)), seq


@dataclass(frozen=True, slots=True)
class Segment:
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class StepLog:
    """A step run's log as S3 has it now: its segments in order."""

    run: RunName
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)


def step_logs(objects: Mapping[str, int], prefix: str, *, order: Iterable[str] = ()) -> list[StepLog]:
    """The step runs whose logs are among ``objects`` (key -> size, under ``folder(prefix)``): oldest epoch first,
    and within an epoch in pipeline ``order`` (the steps of one claim run one after the other in that order)."""
    found: dict[RunName, dict[int, Segment]] = {}
    base = folder(prefix)
    for key, size in objects.items():
        parsed = parse(key.removeprefix(base)) if key.startswith(base) else None
        if parsed is not None:
            run, seq = parsed
            found.setdefault(run, {})[seq] = Segment(key, size)
    position = {step: index for index, step in enumerate(order)}
    runs = sorted(found, key=lambda r: (r.epoch, position.get(r.step, len(position)), r.step, r.attempt))
    return [StepLog(run, tuple(found[run][seq] for seq in sorted(found[run]))) for run in runs]


class Sink:
    """Where one step run's output goes: written to S3 as it comes (see the module's docstring).

    ``write`` takes the output's bytes unchanged; ``close`` writes what is left (an empty log for a silent step, so
    ``logs`` can tell "ran, printed nothing" from "no log"). ``write`` waits while a full segment is uploaded: that
    is the bound on memory, and a step writing faster than S3 takes its output is slowed by its pipe, not lost."""

    def __init__(
        self,
        put: Callable[[str, bytes], Awaitable[None]],
        key: Callable[[int], str],
        *,
        wrote: Callable[[bool], None] = lambda ok: None,
        segment_bytes: int = SEGMENT_BYTES,
        flush_s: float = FLUSH_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self._put, self._key, self._wrote = put, key, wrote
        self._segment_bytes, self._flush_s, self._close_timeout_s = segment_bytes, flush_s, close_timeout_s
        self._buffer = bytearray()
        self._seq = 0
        self._uploaded = 0  # bytes of the open segment S3 has
        self._ever = False  # anything written at all
        self._flushed_at = time.monotonic()
        self._lock = asyncio.Lock()
        self._clock = SystemClock()
        self._closing = asyncio.Event()
        self._timer = asyncio.create_task(self._flush_on_time(), name="step log flush")

    async def write(self, data: bytes) -> None:
        async with self._lock:
            while data:
                room = self._segment_bytes - len(self._buffer)
                self._buffer += data[:room]
                data = data[room:]
                if len(self._buffer) >= self._segment_bytes:
                    await self._upload(final=True)

    async def close(self) -> None:
        """Write what is left; within ``close_timeout_s`` whatever S3 does (then the end of the log is lost)."""
        self._closing.set()
        try:
            await asyncio.wait_for(self._finish(), timeout=self._close_timeout_s)
        except TimeoutError:
            self._timer.cancel()
            self._wrote(False)
            log.warning("the end of a step's log could not be written in time", key=self._key(self._seq))

    async def _finish(self) -> None:
        await self._timer  # a flush under way ends first
        async with self._lock:
            if len(self._buffer) > self._uploaded or not self._ever:
                await self._upload(final=True)

    async def _flush_on_time(self) -> None:
        async def flush() -> float | None:
            if self._closing.is_set():
                return None
            due = self._flushed_at + self._flush_s * max(1.0, len(self._buffer) / _MIB)
            now = time.monotonic()
            if now < due:
                return due - now
            if len(self._buffer) > self._uploaded:
                async with self._lock:
                    await self._upload(final=False)
            return self._flush_s

        await loops.repeat(self._clock, flush, until=self._closing)

    async def _upload(self, *, final: bool) -> None:
        """Write the open segment; ``final``: it is full (or the run is over) and the next one begins."""
        key, body = self._key(self._seq), bytes(self._buffer)
        self._flushed_at = time.monotonic()
        try:
            await self._put(key, body)
        except Exception as exc:  # whatever S3 (or a bug here) does, the step goes on
            self._wrote(False)
            detail = str(exc) if isinstance(exc, errors.MonitorError) else repr(exc)
            log.warning("could not write a step's log to S3", key=key, bytes=len(body), error=detail)
            if not final:
                return  # the open segment is kept, and tried again at the next flush
            missing = len(body) - self._uploaded
            self._next(f"[workset-monitor: {missing} bytes of output are missing here: {detail}]\n".encode())
            return
        self._wrote(True)
        self._ever = True
        self._uploaded = len(body)
        if final:
            self._next(b"")

    def _next(self, start: bytes) -> None:
        self._seq += 1
        self._buffer = bytearray(start)
        self._uploaded = 0


Opener = Callable[[str, Mapping[str, object]], Sink]


def opener(store: LogStore, *, wrote: Callable[[bool], None] = lambda ok: None) -> Opener:
    """How the runner starts a step run's log: under the run's workset folder, epoch, attempt and step."""

    def open_log(step: str, values: Mapping[str, object]) -> Sink:
        bucket, prefix = str(values["bucket"]), str(values["prefix"])
        run = RunName(int(str(values["epoch"])), int(str(values["attempt"])), step)

        async def put(key: str, body: bytes) -> None:
            await store.put(bucket, key, body)

        return Sink(put, lambda seq: run.key(prefix, seq), wrote=wrote)

    return open_log
