"""``workset-monitor watch``: a live terminal view of the queue, the fleet and the running worksets.

A refresh reads only what it shows, never the whole table: the index entries of the active states (ready,
in_progress, retrying, error: one query page per 1 MB of entries each), the presence items (one Query), the fleet
counter (one GetItem: the pause), the in-progress worksets (one ``BatchGetItem`` per 100) and one ``GetItem`` per
workset that left ``in_progress`` since the previous refresh (to say how it ended). The finished states (complete,
cancelled, ignored), which only grow, are counted at the first refresh and every ``FINISHED_EVERY_S`` after.

Plain ANSI redraw (cursor home, clear to the end of the screen): one screen of text needs no library, and the view
works in any terminal and in ``tmux``. ``q`` or Ctrl-C exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from monitor import fleet_view
from monitor.clock import Clock, iso
from monitor.model import Pause, Priority, Role, State, Stats, Workset, WorksetId
from monitor.ports import Store
from monitor.render import age, table
from monitor.terminal import for_terminal

ACTIVE = (State.READY, State.IN_PROGRESS, State.RETRYING, State.ERROR)
FINISHED = (State.COMPLETE, State.CANCELLED, State.IGNORED)
FINISHED_EVERY_S = 60.0
CHANGES_SHOWN = 10


@dataclass
class Frame:
    """What one refresh read."""

    now_ms: int
    counts: dict[State, dict[Priority, int]]
    daemons: list[fleet_view.Daemon]
    running: list[Workset]
    paused: Pause | None
    changes: Sequence[str]
    chores: Role | None = None  # who does the fleet's chores (scan, sweep, queue gauges)


@dataclass
class Watcher:
    """Reads a frame per refresh; remembers what it needs to tell what changed in between."""

    store: Store
    clock: Clock
    _finished: dict[State, dict[Priority, int]] = field(default_factory=dict)
    _finished_at: float | None = None
    _running: dict[WorksetId, Workset] = field(default_factory=dict)
    _changes: deque[str] = field(default_factory=lambda: deque(maxlen=CHANGES_SHOWN))
    _seen: bool = False  # a frame was read: changes are told from the next one on

    async def frame(self) -> Frame:
        now = self.clock.monotonic()
        everything = self._finished_at is None or now - self._finished_at >= FINISHED_EVERY_S
        stats: Stats = await self.store.stats(now_ms=self.clock.now_ms(), states=None if everything else ACTIVE)
        if everything:
            self._finished_at = now
            self._finished = {s: stats.counts.get(s, {}) for s in FINISHED}
        counts = {s: stats.counts.get(s, {}) for s in ACTIVE} | self._finished
        running = await self.store.list(state=State.IN_PROGRESS)
        presences = await self.store.presences()
        fleet = await self.store.fleet()
        now_ms = self.clock.now_ms()
        await self._note_changes(running, now_ms)
        daemons = fleet_view.daemons(presences, running, now_ms=now_ms)
        return Frame(now_ms, counts, daemons, running, fleet.paused, list(self._changes), fleet.chores)

    async def _note_changes(self, running: list[Workset], now_ms: int) -> None:
        """Started: newly in progress. Ended: no longer in progress, and how (one read each)."""
        current = {ws.workset_id: ws for ws in running}
        if self._seen:
            for workset_id in sorted(current.keys() - self._running.keys()):
                ws = current[workset_id]
                who = ws.lease.owner if ws.lease else "?"
                self._changes.appendleft(f"{iso(now_ms)}  {workset_id} started (attempt {ws.attempts}) on {who}")
            for workset_id in sorted(self._running.keys() - current.keys()):
                after = await self.store.get(self._running[workset_id].workset_id)
                state = after.state.value if after is not None else "gone"
                why = f": {after.last_error}" if after is not None and after.last_error and state != "complete" else ""
                self._changes.appendleft(f"{iso(now_ms)}  {workset_id} -> {state}{why}")
        self._running, self._seen = current, True


def screen(frame: Frame, *, width: int = 120) -> list[str]:
    """The view, as lines (each cut to ``width``; every control character in a value shown escaped)."""
    lines = [f"workset-monitor watch — {iso(frame.now_ms)} — q or Ctrl-C to quit"]
    if frame.paused is not None:
        p = frame.paused
        lines.append(f"INTAKE PAUSED since {iso(p.at_ms)} by {p.by}: {p.reason}")
    lines += ["", "QUEUE"]
    rows = [
        (s.value, *(frame.counts.get(s, {}).get(p, 0) for p in Priority), sum(frame.counts.get(s, {}).values()))
        for s in (*ACTIVE, *FINISHED)
    ]
    lines += table(("STATE", *(p.value.upper() for p in Priority), "TOTAL"), rows).splitlines()
    lines += ["", f"FLEET ({sum(d.status == 'alive' for d in frame.daemons)} alive)"]
    if frame.daemons:
        lines += table(fleet_view.HEADERS, fleet_view.table_rows(frame.daemons, now_ms=frame.now_ms)).splitlines()
    else:
        lines.append("no daemon has written its presence")
    lines.append(fleet_view.chores_text(frame.chores, now_ms=frame.now_ms))
    lines += ["", f"RUNNING ({len(frame.running)})"]
    if frame.running:
        running = [
            (
                ws.workset_id,
                ws.priority.value,
                ws.current_step or "-",
                age(frame.now_ms - ws.updated_at_ms),
                ws.attempts,
                ws.lease.owner if ws.lease else "",
            )
            for ws in frame.running
        ]
        lines += table(("WORKSET", "PRIORITY", "STEP", "STEP FOR", "ATTEMPT", "HOLDER"), running).splitlines()
    lines += ["", "RECENT CHANGES", *(frame.changes or ["(none seen since watch started)"])]
    return [for_terminal(line)[:width] for line in lines]


@contextlib.contextmanager
def keys() -> Iterator[Callable[[float, str], Awaitable[bool]]]:
    """The terminal in cbreak mode (keys arrive unbuffered, unechoed; restored on exit), and ``pressed(timeout_s,
    wanted)``: True once one of ``wanted`` is typed or Ctrl-C comes, False after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    quit_ = asyncio.Event()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    typed: list[str] = []

    def readable() -> None:
        assert fd is not None
        typed.append(os.read(fd, 64).decode(errors="replace"))
        quit_.set()

    def interrupted() -> None:
        typed.append("\x03")
        quit_.set()

    if fd is not None:
        tty.setcbreak(fd)
        loop.add_reader(fd, readable)
    loop.add_signal_handler(signal.SIGINT, interrupted)

    async def pressed(timeout_s: float, wanted: str) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(quit_.wait(), timeout_s)
        quit_.clear()
        got, typed[:] = "".join(typed), []
        return any(ch in got for ch in wanted + "\x03")

    try:
        yield pressed
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if fd is not None and saved is not None:
            loop.remove_reader(fd)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
