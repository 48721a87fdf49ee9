"""``workset-monitor fleet``: the daemons sharing the table, from their presence items, each with what it runs.

Pure: given the presence items, the in-progress worksets and the reader's clock, who is alive, silent or gone, and
whether what a silent daemon held has been taken over. Liveness compares the writer's clock with the reader's: it is
for people (a daemon whose clock is off by more than an interval shows as silent or as written in the future), never
for a safety decision (leases decide those, by observation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.clock import iso
from monitor.model import Presence, Role, Workset
from monitor.presence import STALE_AFTER_S
from monitor.render import age

SILENT_AFTER_INTERVALS = 2  # a daemon is silent once it has missed this many presence writes


@dataclass(frozen=True, slots=True)
class Daemon:
    presence: Presence
    status: str  # alive | silent | gone
    silent_s: float  # since its last write, by the reader's clock
    holdings: tuple[dict[str, Any], ...]


def daemons(presences: Sequence[Presence], running: Sequence[Workset], *, now_ms: int) -> list[Daemon]:
    holders: dict[str, Workset] = {ws.workset_id: ws for ws in running}
    found = []
    for p in presences:
        silent_s = max(now_ms - p.written_at_ms, 0) / 1000
        if silent_s > STALE_AFTER_S:
            status = "gone"
        elif silent_s > SILENT_AFTER_INTERVALS * p.interval_s + 5:  # + 5 s: a write's own latency, clock jitter
            status = "silent"
        else:
            status = "alive"
        holdings = []
        for held in p.held:
            ws = holders.get(held.workset_id)
            owner = ws.lease.owner if ws is not None and ws.lease is not None else None
            holdings.append(
                {
                    "workset_id": held.workset_id,
                    "step": held.step,
                    "since": iso(held.since_ms),
                    "seconds": max(now_ms - held.since_ms, 0) / 1000,
                    # what the table says now: still ours, taken over by another daemon, or no longer running
                    "now": "held" if owner == p.owner else f"taken over by {owner}" if owner else "not running",
                }
            )
        found.append(Daemon(presence=p, status=status, silent_s=silent_s, holdings=tuple(holdings)))
    return found


def as_dict(d: Daemon) -> dict[str, Any]:
    p = d.presence
    return {
        "owner": p.owner,
        "host": p.host,
        "pid": p.pid,
        "version": p.version,
        "status": d.status,
        "silent_s": round(d.silent_s, 1),
        "started_at": iso(p.started_at_ms),
        "last_write": iso(p.written_at_ms),
        "interval_s": p.interval_s,
        "config_digest": p.config_digest,
        "writes": p.seq,
        "holdings": list(d.holdings),
        "last_ticks": {name: iso(at) for name, at in p.ticks},
    }


def table_rows(found: Sequence[Daemon], *, now_ms: int) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for d in found:
        p = d.presence
        status = d.status if d.status == "alive" else f"{d.status} for {age(round(d.silent_s * 1000))}"
        first = (p.owner, p.version, p.config_digest, status, age(now_ms - p.started_at_ms))
        if not d.holdings:
            rows.append((*first, "-", "-", "-", ""))
        for i, h in enumerate(d.holdings):
            lead = first if i == 0 else ("", "", "", "", "")
            note = "" if h["now"] == "held" else h["now"]
            rows.append((*lead, h["workset_id"], h["step"] or "-", age(round(h["seconds"] * 1000)), note))
    return rows


HEADERS = ("DAEMON", "VERSION", "CONFIG", "STATUS", "UP", "WORKSET", "STEP", "FOR", "NOW")


def chores_text(role: Role | None, *, now_ms: int) -> str:
    """Which daemon does the chores (the S3 scan, the sweep, the queue gauges); ages by the holder's clock."""
    if role is None:
        return (
            "chores (S3 scan, sweep, queue gauges): nobody holds the role; a running daemon takes it at its next look"
        )
    renewed = age(max(now_ms - role.renewed_at_ms, 0))
    return (
        f"chores (S3 scan, sweep, queue gauges): {role.owner}, renewed {renewed} ago, held since {iso(role.since_ms)}"
    )


def chores_dict(role: Role | None) -> dict[str, Any] | None:
    if role is None:
        return None
    return {
        "owner": role.owner,
        "since": iso(role.since_ms),
        "renewed_at": iso(role.renewed_at_ms),
        "renewals": role.hb_count,
    }
