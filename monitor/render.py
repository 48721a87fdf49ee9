"""How records look to an operator: plain dicts for ``--json``, aligned text tables otherwise.

Text goes through ``monitor.terminal``'s rule: table cells and values are escaped one by one (a newline in a value
does not start a line), and ``lines_for_terminal`` guards whole messages (their own line breaks kept)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from monitor.clock import iso
from monitor.migration import Report
from monitor.model import Event, Priority, State, Stats, StepRun, Workset
from monitor.states import scheduled
from monitor.terminal import for_terminal


def workset_dict(ws: Workset) -> dict[str, Any]:
    return {
        "workset_id": ws.workset_id,
        "state": ws.state.value,
        "priority": ws.priority.value,
        "s3_uri": ws.s3_uri,
        "bucket": ws.bucket,
        "prefix": ws.prefix,
        "created_at": iso(ws.created_at_ms),
        "updated_at": iso(ws.updated_at_ms),
        "available_at": iso(ws.available_at_ms),
        "not_before": iso(ws.available_at_ms) if scheduled(ws) else None,  # a ready workset's schedule
        "attempts": ws.attempts,
        "version": ws.version,
        "epoch": ws.epoch,
        "heartbeats": ws.hb_count,
        "lease_owner": ws.lease.owner if ws.lease else None,
        "lease_heartbeat_at": iso(ws.lease.heartbeat_at_ms) if ws.lease else None,
        "lease_expires_at_hint": iso(ws.lease.expires_at_ms) if ws.lease else None,
        "current_step": ws.current_step,
        "steps_done": list(ws.steps_done),
        "last_error": ws.last_error,
        "error_category": ws.error_category,
        "held_off_for": ws.held_off_for,
        "started_at": iso(ws.started_at_ms),  # this run's first counted claim
        "finished_at": iso(ws.finished_at_ms),
        "step_seconds": {step: ms / 1000 for step, ms in ws.step_ms},  # each finished step's successful run
    }


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "workset_id": event.workset_id,
        "seq": event.seq,
        "type": event.type.value,
        "at": iso(event.at_ms),
        "actor": event.actor,
        "from_state": event.from_state.value if event.from_state else None,
        "to_state": event.to_state.value if event.to_state else None,
        "reason": event.reason,
        "attempt": event.attempt,
        "epoch": event.epoch,
        "priority": event.priority.value,
        "detail": event.detail,
        "notified": dict(sorted(event.notified.items())),  # channel -> sent, skipped or failed: why
        "delivery_rounds": event.delivery_attempts,  # rounds that ended with a channel failing for now
        "notification_pending": event.pending,  # some channel still has to hear about it
        "step_run": _step_run_dict(event.step_run),
    }


def _step_run_dict(run: StepRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "step": run.step,
        "started_at": iso(run.started_at_ms),
        "seconds": run.duration_ms / 1000,
        "outcome": run.outcome,
        "exit_code": run.exit_code,
    }


def stats_dict(stats: Stats) -> dict[str, Any]:
    return {
        "counts": {s.value: {p.value: stats.count(s, p) for p in Priority} for s in State},
        "totals": {s.value: stats.count(s) for s in State},
        "total": stats.total,
        "oldest_ready_age_s": stats.oldest_ready_age_s,
    }


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else for_terminal(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def workset_text(ws: Workset) -> str:
    data = workset_dict(ws)
    data["steps_done"] = ", ".join(ws.steps_done) or None
    data["step_seconds"] = ", ".join(f"{step} {ms / 1000:.1f} s" for step, ms in ws.step_ms) or None
    width = max(len(k) for k in data)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else for_terminal(v)}" for k, v in data.items())


def worksets_table(worksets: Sequence[Workset], *, now_ms: int) -> str:
    """``list``: each workset's state, the step it runs, its age (since registered) and how long it has been in its
    state (since its last change), and who holds it or why it failed."""
    rows = [
        (
            ws.workset_id,
            ws.state.value,
            ws.priority.value,
            ws.current_step or "-",
            age(now_ms - ws.created_at_ms),
            age(now_ms - ws.updated_at_ms),
            ws.attempts,
            ws.lease.owner if ws.lease else (ws.last_error or ""),
        )
        for ws in worksets
    ]
    return table(("WORKSET", "STATE", "PRIORITY", "STEP", "AGE", "IN_STATE", "ATTEMPTS", "OWNER/ERROR"), rows)


def age(ms: int) -> str:
    """A duration as an operator reads it at a glance: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    seconds = max(ms, 0) // 1000
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def history_table(events: Sequence[Event]) -> str:
    rows = [
        (
            e.seq,
            iso(e.at_ms),
            e.type.value,
            f"{e.from_state.value if e.from_state else '-'} -> {e.to_state.value if e.to_state else '-'}",
            e.actor,
            e.reason,
            _took(e.step_run),
            _notified(e),
        )
        for e in events
    ]
    return table(("SEQ", "AT", "EVENT", "TRANSITION", "BY", "REASON", "STEP RUN", "NOTIFIED"), rows)


def _took(run: StepRun | None) -> str:
    """``stage 12.3 s, exit 0`` for an event that ends a step run."""
    if run is None:
        return ""
    return f"{run.step} {run.duration_ms / 1000:.1f} s" + (
        f", exit {run.exit_code}" if run.exit_code is not None else ""
    )


def _notified(event: Event) -> str:
    """What each channel made of an event: ``sns: failed: ...; webhook: sent`` (+ pending, rounds)."""
    parts = [f"{channel}: {outcome}" for channel, outcome in sorted(event.notified.items())]
    if event.pending:
        parts.append("pending" + (f" after {event.delivery_attempts} round(s)" if event.delivery_attempts else ""))
    return "; ".join(parts)


def stats_table(stats: Stats) -> str:
    rows = [(s.value, *(stats.count(s, p) for p in Priority), stats.count(s)) for s in State]
    rows.append(("total", *(sum(stats.count(s, p) for s in State) for p in Priority), stats.total))
    text = table(("STATE", *(p.value.upper() for p in Priority), "TOTAL"), rows)
    age = stats.oldest_ready_age_s
    return text + "\n\noldest ready: " + ("none waiting" if age is None else f"{age:.0f} s")


def migration_dict(report: Report, *, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "folders": len(report.plans),
        "by_sentinel": dict(report.by_sentinel()),
        "by_decision": dict(report.by_decision()),
        "written": report.written,
        "mismatches": report.mismatches,
        "worksets": [
            {
                "workset_id": p.workset_id,
                "folder": p.folder,
                "sentinel": p.sentinel,
                "decision": p.decision,
                "target": p.target.value if p.target else None,
                "priority": p.priority.value,
                "reason": p.reason,
            }
            for p in report.plans
        ],
    }


def migration_text(report: Report, where: str, dry_run: bool) -> str:
    rows = [
        (p.workset_id, p.sentinel or "-", p.decision, p.target.value if p.target else "-", p.reason)
        for p in report.plans
    ]
    parts = [
        f"{len(report.plans)} folders under {where}",
        "",
        table(("LEGACY SENTINEL", "FOLDERS"), sorted(report.by_sentinel().items())),
        "",
        table(("DECISION", "FOLDERS"), sorted(report.by_decision().items())),
        "",
        table(("WORKSET", "SENTINEL", "DECISION", "BECOMES", "REASON"), rows) if rows else "no folders",
    ]
    undecided = [p for p in report.plans if p.decision == "decide"]
    if undecided:
        parts += [
            "",
            f"{len(undecided)} folder(s) left in progress by the legacy monitor were not touched; "
            "re-run with --in-flight ready (run again) or --in-flight error (record as failed).",
        ]
    if dry_run:
        parts += ["", "dry run: nothing was written."]
    else:
        parts += ["", f"applied: {report.written} workset(s) registered."]
        parts += [f"verified: {'0 mismatches' if not report.mismatches else f'{len(report.mismatches)} MISMATCHES'}"]
        parts += [f"  {m}" for m in report.mismatches]
    return "\n".join(parts)


def progress_bar(label: str, width: int = 30) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr (for terminals only)."""

    def show(done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
