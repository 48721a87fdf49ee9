"""``workset-monitor report``: one row per workset with its run's timings, and a summary, from control items only.

Everything a row shows is on the workset's control item (``started_at_ms``, ``finished_at_ms``, ``step_ms#<step>``,
written by the transactions that end each step), so a report reads the ``list`` way: the index's ids of each state,
then the items in ``BatchGetItem``s of 100 — never one query per workset. Times are UTC, durations seconds.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.clock import iso
from monitor.model import Priority, State, Workset
from monitor.selection import parse_since

FORMATS = ("table", "tsv", "csv", "json")
__all__ = ["FORMATS", "Row", "parse_since"]


@dataclass(frozen=True)
class Row:
    workset_id: str
    state: State
    priority: Priority
    registered_ms: int
    started_ms: int | None
    finished_ms: int | None
    attempts: int
    steps: dict[str, float]  # step -> seconds of its successful run
    samples: int | None = None  # what validation counted at registration (None: not recorded)
    data_bytes: int | None = None

    @property
    def wall_s(self) -> float | None:
        """From the run's first claim to its end (None until it ended)."""
        if self.started_ms is None or self.finished_ms is None:
            return None
        return (self.finished_ms - self.started_ms) / 1000

    @property
    def claim_wait_s(self) -> float | None:
        """From registration to the run's first claim."""
        return None if self.started_ms is None else max(self.started_ms - self.registered_ms, 0) / 1000


def row(ws: Workset) -> Row:
    return Row(
        workset_id=ws.workset_id,
        state=ws.state,
        priority=ws.priority,
        registered_ms=ws.created_at_ms,
        started_ms=ws.started_at_ms,
        finished_ms=ws.finished_at_ms,
        attempts=ws.attempts,
        steps={step: ms / 1000 for step, ms in ws.step_ms},
        samples=ws.samples,
        data_bytes=ws.data_bytes,
    )


def step_columns(configured: Sequence[str], rows: Sequence[Row]) -> list[str]:
    """The pipeline's steps in their order, then any other step a row has (a step since removed), by name."""
    seen = {step for r in rows for step in r.steps}
    return [*configured, *sorted(seen - set(configured))]


@dataclass(frozen=True)
class Summary:
    what: str  # "wall time" or a step's name
    count: int
    median_s: float
    p90_s: float


def summary(rows: Sequence[Row], steps: Sequence[str]) -> list[Summary]:
    """Median and 90th percentile of the wall time and of each step, over the rows that have one."""
    found = [("wall time", [r.wall_s for r in rows if r.wall_s is not None])]
    found += [(step, [r.steps[step] for r in rows if step in r.steps]) for step in steps]
    return [Summary(what, len(values), statistics.median(values), _p90(values)) for what, values in found if values]


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]  # nearest rank


HEADERS = (
    "workset",
    "state",
    "priority",
    "registered",
    "started",
    "finished",
    "wall_s",
    "attempts",
    "claim_wait_s",
    "samples",
    "data_bytes",
)


def _cells(r: Row, steps: Sequence[str], *, human: bool = False) -> list[object]:
    return [
        r.workset_id,
        r.state.value,
        r.priority.value,
        iso(r.registered_ms),
        iso(r.started_ms),
        iso(r.finished_ms),
        _seconds(r.wall_s),
        r.attempts,
        _seconds(r.claim_wait_s),
        r.samples,
        size_text(r.data_bytes) if human and r.data_bytes is not None else r.data_bytes,
        *(_seconds(r.steps.get(step)) for step in steps),
    ]


def size_text(n: int) -> str:
    """Bytes for a person: 128 B, 3.4 KiB, 1.2 GiB."""
    value, unit = float(n), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def delimited(rows: Sequence[Row], steps: Sequence[str], *, dialect: str) -> str:
    """CSV or TSV with a header row, one column per step (``<step>_s``); an empty cell is "not recorded"."""
    out = io.StringIO()
    writer = csv.writer(out, dialect="excel-tab" if dialect == "tsv" else "excel", lineterminator="\n")
    writer.writerow([*HEADERS, *(f"{step}_s" for step in steps)])
    writer.writerows([["" if c is None else c for c in _cells(r, steps)] for r in rows])
    return out.getvalue()


def as_json(rows: Sequence[Row], steps: Sequence[str]) -> str:
    """The rows (seconds as numbers; null: not recorded) and the summary."""
    worksets = [
        {
            "workset": r.workset_id,
            "state": r.state.value,
            "priority": r.priority.value,
            "registered": iso(r.registered_ms),
            "started": iso(r.started_ms),
            "finished": iso(r.finished_ms),
            "wall_s": r.wall_s,
            "attempts": r.attempts,
            "claim_wait_s": r.claim_wait_s,
            "samples": r.samples,
            "data_bytes": r.data_bytes,
            "steps": {step: r.steps[step] for step in steps if step in r.steps},
        }
        for r in rows
    ]
    totals = [
        {"what": s.what, "count": s.count, "median_s": s.median_s, "p90_s": s.p90_s} for s in summary(rows, steps)
    ]
    return json.dumps({"worksets": worksets, "summary": totals}, indent=2)


def table_cells(rows: Sequence[Row], steps: Sequence[str]) -> tuple[list[str], list[list[object]]]:
    """The terminal table's headers and rows (``render.table`` draws them)."""
    headers = [h.upper() for h in HEADERS] + [f"{step.upper()}_S" for step in steps]
    return headers, [_cells(r, steps, human=True) for r in rows]


def summary_lines(rows: Sequence[Row], steps: Sequence[str]) -> list[str]:
    lines = [f"{len(rows)} workset(s)"]
    counted = [r for r in rows if r.samples is not None and r.data_bytes is not None]
    if counted:
        samples, data = sum(r.samples or 0 for r in counted), sum(r.data_bytes or 0 for r in counted)
        lines[0] += f"; {samples} samples, {size_text(data)} of data (of {len(counted)} validated)"
    lines += [f"{s.what}: median {s.median_s:.1f} s, p90 {s.p90_s:.1f} s (of {s.count})" for s in summary(rows, steps)]
    return lines
