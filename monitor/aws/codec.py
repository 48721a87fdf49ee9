"""Workset and Event records <-> DynamoDB items (low-level attribute-value form).

Numbers are written as integers and read back as ``int``: a number with a fraction or exponent in the table is
reported as corrupt rather than silently becoming a float (the system we replace crashed on its second retry
because a counter came back as ``float``). Absent optional fields are absent attributes, never NULLs.

Layout (one table): the control item is ``pk=<workset_id>, sk="ws"``; events are ``pk=<workset_id>,
sk="evt#<seq, 10 digits>"``. Only control items carry ``state`` and ``gsi_sk``, so only they appear in the
``state-priority-index``.
"""

from __future__ import annotations

from typing import Any

from monitor.model import Event, EventType, Lease, Priority, State, Workset, WorksetId
from monitor.states import gsi_sort_key

CONTROL_SK = "ws"
EVENT_SK_PREFIX = "evt#"
FLEET_KEY = {"pk": {"S": "#fleet"}, "sk": {"S": "counter"}}  # '#' cannot start a workset id
GSI_NAME = "state-priority-index"
OUTBOX_GSI = "outbox-index"  # sparse: only events some channel still has to hear about
OUTBOX_PENDING = "pending"
CHANNELS = ("sns", "linear", "webhook")
# Everything but the attributes a heartbeat rewrites, so a claim needs no read first and heartbeats never write the
# index. Every other attribute changes only together with `version`, which is projected anyway.
HEARTBEAT_ATTRIBUTES = ("hb_count", "heartbeat_at_ms", "lease_expires_at_ms", "current_step")
GSI_PROJECTED = (
    "priority",
    "bucket",
    "prefix",
    "created_at_ms",
    "updated_at_ms",
    "available_at_ms",
    "attempts",
    "version",
    "epoch",
    "lease_token",
    "lease_owner",
    "steps_done",
    "last_error",
    "error_category",
)

Item = dict[str, dict[str, Any]]


def event_sk(seq: int) -> str:
    return f"{EVENT_SK_PREFIX}{seq:010d}"


def control_key(workset_id: str) -> Item:
    return {"pk": {"S": workset_id}, "sk": {"S": CONTROL_SK}}


def workset_fields(ws: Workset) -> dict[str, Any]:
    """The control item as plain Python values; ``None`` means "attribute absent"."""
    lease = ws.lease
    return {
        "state": ws.state.value,
        "priority": ws.priority.value,
        "bucket": ws.bucket,
        "prefix": ws.prefix,
        "created_at_ms": ws.created_at_ms,
        "updated_at_ms": ws.updated_at_ms,
        "available_at_ms": ws.available_at_ms,
        "attempts": ws.attempts,
        "version": ws.version,
        "epoch": ws.epoch,
        "hb_count": ws.hb_count,
        "lease_token": lease.token if lease else None,
        "lease_owner": lease.owner if lease else None,
        "heartbeat_at_ms": lease.heartbeat_at_ms if lease else None,
        "lease_expires_at_ms": lease.expires_at_ms if lease else None,
        "current_step": ws.current_step,
        "steps_done": list(ws.steps_done) or None,
        "last_error": ws.last_error,
        "error_category": ws.error_category,
        "gsi_sk": gsi_sort_key(ws),
    }


def workset_item(ws: Workset) -> Item:
    return control_key(ws.workset_id) | encode_fields(workset_fields(ws))


def workset_from_item(item: Item) -> Workset:
    v = decode_fields(item)
    lease = None
    if v.get("lease_token"):
        lease = Lease(
            token=v["lease_token"],
            owner=v.get("lease_owner", ""),
            heartbeat_at_ms=v.get("heartbeat_at_ms", 0),
            expires_at_ms=v.get("lease_expires_at_ms", 0),
        )
    return Workset(
        workset_id=WorksetId(v["pk"]),
        state=State(v["state"]),
        priority=Priority(v["priority"]),
        bucket=v["bucket"],
        prefix=v["prefix"],
        created_at_ms=v["created_at_ms"],
        updated_at_ms=v["updated_at_ms"],
        available_at_ms=v["available_at_ms"],
        attempts=v.get("attempts", 0),
        version=v["version"],
        epoch=v.get("epoch", 0),
        hb_count=v.get("hb_count", 0),
        lease=lease,
        current_step=v.get("current_step"),
        steps_done=tuple(v.get("steps_done", ())),
        last_error=v.get("last_error"),
        error_category=v.get("error_category"),
    )


def event_item(event: Event) -> Item:
    fields: dict[str, Any] = {
        "pk": event.workset_id,
        "sk": event_sk(event.seq),
        "type": event.type.value,
        "at_ms": event.at_ms,
        "actor": event.actor,
        "from_state": event.from_state.value if event.from_state else None,
        "to_state": event.to_state.value,
        "reason": event.reason or None,
        "attempt": event.attempt,
        "epoch": event.epoch,
        "detail": event.detail or None,
        "priority": event.priority.value,
        "outbox": OUTBOX_PENDING if event.pending else None,
        "outbox_sk": outbox_sort_key(event) if event.pending else None,
        **{f"notify_{channel}": outcome for channel, outcome in event.notified.items()},
        "notify_attempts": event.delivery_attempts or None,
    }
    return encode_fields(fields)


def outbox_sort_key(event: Event, *, due_ms: int | None = None) -> str:
    """When the event is due (``due_ms``, else when it was committed), then oldest first across all worksets: an
    event held by a claim or waiting out a retry sorts after, and is queried apart from, the ones due now."""
    return f"{event.at_ms if due_ms is None else due_ms:015d}#{event.workset_id}#{event.seq:010d}"


def outbox_due_bound(now_ms: int) -> str:
    """Every outbox sort key below this is due at ``now_ms``."""
    return f"{now_ms + 1:015d}"


def event_key(workset_id: str, seq: int) -> Item:
    return {"pk": {"S": workset_id}, "sk": {"S": event_sk(seq)}}


def event_from_item(item: Item) -> Event:
    v = decode_fields(item)
    return Event(
        workset_id=WorksetId(v["pk"]),
        seq=int(v["sk"].removeprefix(EVENT_SK_PREFIX)),
        type=EventType(v["type"]),
        at_ms=v["at_ms"],
        actor=v["actor"],
        from_state=State(v["from_state"]) if v.get("from_state") else None,
        to_state=State(v["to_state"]),
        reason=v.get("reason", ""),
        attempt=v.get("attempt", 0),
        epoch=v.get("epoch", 0),
        detail=v.get("detail", ""),
        priority=Priority(v.get("priority", Priority.NORMAL.value)),
        pending=v.get("outbox") == OUTBOX_PENDING,
        notified={c: v[f"notify_{c}"] for c in CHANNELS if f"notify_{c}" in v},
        delivery_attempts=v.get("notify_attempts", 0),
    )


def encode_fields(fields: dict[str, Any]) -> Item:
    return {name: encode(value) for name, value in fields.items() if value is not None}


def decode_fields(item: Item) -> dict[str, Any]:
    return {name: decode(value, name=name) for name, value in item.items()}


def encode(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list | tuple):
        return {"L": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {k: encode(v) for k, v in value.items()}}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB (floats are deliberately unsupported)")


def decode(value: dict[str, Any], *, name: str = "?") -> Any:
    (kind, raw), *_ = value.items()
    if kind == "S":
        return raw
    if kind == "N":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"attribute {name} holds {raw!r}; only integers are expected") from None
    if kind == "BOOL":
        return bool(raw)
    if kind == "NULL":
        return None
    if kind == "L":
        return [decode(v, name=name) for v in raw]
    if kind == "M":
        return {k: decode(v, name=f"{name}.{k}") for k, v in raw.items()}
    if kind == "SS":
        return sorted(raw)
    raise ValueError(f"attribute {name} has unsupported DynamoDB type {kind}")


def item_size_bytes(item: Item) -> int:
    """DynamoDB's own item-size rule: attribute names plus values (UTF-8), numbers ~1 byte per 2 digits."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, raw), *_ = value.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        digits = raw.lstrip("-").replace(".", "")
        return (len(digits) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in raw.items())
    if kind == "SS":
        return sum(len(s.encode()) for s in raw)
    raise ValueError(f"unsupported DynamoDB type {kind}")
