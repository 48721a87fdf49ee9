"""The chaos step's record of its runs, and the check that no two runs of a workset overlap in time.

The step (``tests/chaos.py``'s ``STEP``) appends one line when it starts and one when it stops::

    <workset> <epoch> <attempt> <pid> <daemon pid> <monotonic s> start|end|fail|stopped

Times are ``time.monotonic()`` (``CLOCK_MONOTONIC``): one clock for every process on the host, which no process's
wall clock (a ``faketime``'d operator, an NTP step) can move. The harness takes its own times (kills, pauses) from
the same clock. ``stopped`` is written by the step's SIGTERM handler: a timeout, a cancel, a lost lease and a
shutdown all stop a step with SIGTERM first (``monitor/steps.py``).

A run without a stop line was SIGKILLed. Its stop is taken to be the moment the harness SIGKILLed its daemon and the
daemon's process tree (``fleet.Daemon.kill`` freezes the daemon first, so no step escapes the kill); a run that has
neither a stop line nor a killed daemon is held open until the end of the run and reported (a step that outlived
everything is a leak). Both choices can only make a run look longer than it was, never shorter.

Overlaps are pairs of runs of one workset under different epochs whose [start, stop] intervals intersect. One kind is
the documented limit, not a bug: the earlier run's daemon was frozen (SIGSTOP) between the two starts, so its lease
lapsed while its step, which the freeze does not reach, ran on (DESIGN: a paused holder's children keep running;
external effects must check ``WORKSET_EPOCH``). Those are counted as excused, not as violations.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_STOPS = ("end", "fail", "stopped")


@dataclass(frozen=True)
class Run:
    workset: str
    epoch: int
    pid: int
    daemon_pid: int
    start: float
    stop: float
    how: str  # end, fail, stopped (SIGTERM), killed (its daemon's tree was SIGKILLed), open (never stopped)


def parse(lines: Iterable[str], *, kills: Mapping[int, float], end: float) -> list[Run]:
    """Every started run, with its stop: its own stop line, else its daemon's kill time, else ``end``."""
    starts: dict[int, tuple[str, int, int, float]] = {}
    stops: dict[int, tuple[float, str]] = {}
    for line in lines:
        fields = line.split()
        if len(fields) != 7:
            continue  # a line cut short: its writer was SIGKILLed in the middle of the write
        ws, epoch, _attempt, pid, daemon_pid, at, what = fields
        if what == "start":
            starts[int(pid)] = (ws, int(epoch), int(daemon_pid), float(at))
        elif what in _STOPS:
            stops.setdefault(int(pid), (float(at), what))
    runs = []
    for pid, (ws, epoch, daemon_pid, start) in starts.items():
        if pid in stops:
            stop, how = stops[pid]
        elif daemon_pid in kills:
            stop, how = kills[daemon_pid], "killed"
        else:
            stop, how = end, "open"
        runs.append(Run(ws, epoch, pid, daemon_pid, start, stop, how))
    return sorted(runs, key=lambda r: (r.workset, r.start))


def overlaps(runs: Sequence[Run], *, paused: Mapping[int, Sequence[tuple[float, float]]]) -> tuple[list[str], int]:
    """(one violation per overlapping pair of runs of a workset under different epochs, the excused pairs)."""
    violations, excused = [], 0
    by_workset: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs:
        by_workset[run.workset].append(run)
    for ws, mine in sorted(by_workset.items()):
        mine.sort(key=lambda r: r.start)
        for i, first in enumerate(mine):
            for second in mine[i + 1 :]:
                if second.start >= first.stop:
                    continue
                if second.epoch == first.epoch:
                    continue  # one epoch run twice: its own check says so
                if any(a < second.start and b > first.start for a, b in paused.get(first.daemon_pid, ())):
                    excused += 1
                    continue
                overlap_s = min(first.stop, second.stop) - second.start
                violations.append(
                    f"{ws}: runs overlap: epoch {first.epoch} (pid {first.pid}, {first.how}) still ran "
                    f"{overlap_s:.2f} s after epoch {second.epoch} (pid {second.pid}, {second.how}) started"
                )
    violations += [
        f"{r.workset}: the run under epoch {r.epoch} (pid {r.pid}) never stopped and its daemon was never killed"
        for r in runs
        if r.how == "open"
    ]
    return violations, excused
