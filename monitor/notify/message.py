"""What a notification says, per channel; pure functions of the event and its workset."""

from __future__ import annotations

from monitor.clock import iso
from monitor.model import FLEET_ID, Event, Workset

SUBJECT_MAX = 100  # SNS refuses longer subjects
SNS_MAX_BYTES = 256 * 1024
_DETAIL_CAP = 3000


def subject(event: Event) -> str:
    """One line of at most 100 characters (SNS's rule): workset, what happened, its priority (a fleet-wide event:
    what happened, and why)."""
    text = f"[workset-monitor] {event.workset_id}: {event.type.value} ({event.priority.value})"
    if event.workset_id == FLEET_ID:
        text = f"[workset-monitor] intake {event.type.value} fleet-wide: {event.reason}"
    text = " ".join(text.split())
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 1] + "…"


def fields(event: Event, ws: Workset | None) -> dict[str, str]:
    """The facts every channel shows, in reading order."""
    out = {
        "workset": event.workset_id,
        "event": event.type.value,
        "state": event.to_state.value if event.to_state else "",
        "priority": event.priority.value,
        "reason": event.reason,
        "attempt": str(event.attempt),
        "at": iso(event.at_ms) or "",
        "by": event.actor,
        "event_id": event.event_id,
    }
    if ws is not None:
        out["s3_uri"] = ws.s3_uri
    if event.detail:
        out["error_tail"] = event.detail[-_DETAIL_CAP:]
    return out


def body(event: Event, ws: Workset | None) -> str:
    """A readable plain-text body (SNS e-mail subscribers read exactly this), within SNS's 256 KiB."""
    facts = fields(event, ws)
    lines = [f"{name.replace('_', ' ')}: {value}" for name, value in facts.items() if value and name != "error_tail"]
    if "error_tail" in facts:
        lines += ["", "last output:", facts["error_tail"]]
    text = "\n".join(lines)
    return text.encode()[:SNS_MAX_BYTES].decode("utf-8", "ignore")


def slack_text(event: Event, ws: Workset | None) -> str:
    where = f" <{ws.s3_uri}|{ws.s3_uri}>" if ws else ""
    reason = f": {event.reason}" if event.reason else ""
    return f"*{event.workset_id}* {event.type.value} ({event.priority.value}, attempt {event.attempt}){reason}{where}"
