"""Workset and Event records <-> DynamoDB items (low-level attribute-value form).

Numbers are written as integers and read back as ``int``: a number with a fraction or exponent in the table is
reported as corrupt rather than silently becoming a float (the system we replace crashed on its second retry
because a counter came back as ``float``). Absent optional fields are absent attributes, never NULLs.

Layout (one table): the control item is ``pk=<workset_id>, sk="ws"``; events are ``pk=<workset_id>,
sk="evt#<seq, 10 digits>"``. Only control items carry ``state`` and ``gsi_sk``, so only they appear in the
``state-priority-index``.

Finished worksets (complete, ignored, cancelled: nearly all of a busy table, and only ever more) leave the
``state-priority-index``, which the daemons read: such an item has no ``gsi_sk`` but ``done_pk="<state>#<YYYY-MM>"``
(the month it finished, UTC) and ``done_sk`` (its listing key, by time of finishing), the keys of the sparse
``finished-index`` that ``list`` reads. They are *counted* instead: the transaction that moves a workset into (or
out of) the finished index adds 1 to (or takes 1 from) a counter item ``pk="#fleet",
sk="done#<state>#<YYYY-MM>#<priority rank>#<shard>"`` (the shard from the id, so no one item takes every finish),
and a count of finished worksets is one Query of those few items, whatever the number of worksets. A finished item
written before this layout (a ``gsi_sk``, no ``done_pk``) stays in the state index and is counted from it until
``init`` moves it (``schema.move_finished``).

``lease_owner`` on an item that is not in progress (no ``lease_token``) is the hold-off mark
(``Workset.held_off_for``): the holder an operator took the workset from. It reuses a projected attribute so that
the index shows the mark to claimers without a change to the index's projection.
"""

from __future__ import annotations

import enum
import time
import zlib
from typing import Any, TypeVar

from monitor import errors
from monitor.model import (
    FLEET_ID,
    Event,
    EventType,
    Fleet,
    Held,
    Lease,
    Pause,
    Presence,
    Priority,
    Role,
    State,
    StepRun,
    Workset,
    WorksetId,
)
from monitor.states import finished_sort_key, gsi_sort_key

CONTROL_SK = "ws"
EVENT_SK_PREFIX = "evt#"
FLEET_COUNTER_SK = "counter"
CHORES_SK = "control#chores"  # the chores role (`roles`)
FLEET_KEY = {"pk": {"S": FLEET_ID}, "sk": {"S": FLEET_COUNTER_SK}}  # its fleet-wide events share its partition
CHORES_KEY = {"pk": {"S": FLEET_ID}, "sk": {"S": CHORES_SK}}
# Without a fleet cap, a claim and the end of its run count on one of FLEET_SHARDS shard items (by CRC-32 of the
# workset id), not on the counter item: no single item is written by every transition of a busy fleet. A pause is
# written on all of them, so every claim's own transaction still sees it. ``Fleet`` is their sum.
FLEET_SHARDS = 8
FLEET_SHARD_PREFIX = "control#shard#"
# One Query of sk BETWEEN these reads the fleet's control items (the role, the shards and the counter) and none of
# its events ("control#..." < "counter" < "done#..." < "evt#..."): one consistent read unit for all of them.
FLEET_CONTROL_RANGE = ("control#", FLEET_COUNTER_SK)
PRESENCE_PK = "#daemon"  # one partition of presence items, sort key the daemon's owner id: one Query lists them
PRESENCE_TTL_S = 86_400  # `expires_at` (epoch seconds): DynamoDB TTL deletes a dead daemon's item after a day
GSI_NAME = "state-priority-index"
FINISHED_GSI = "finished-index"  # sparse: only finished worksets, partitioned by state and month of finishing
FINISHED_PROJECTED = ("priority", "bucket", "prefix")  # enough to list, filter by priority and know the folders
DONE_PREFIX = "done#"  # counters of finished worksets, in the fleet's partition (between "counter" and "evt#")
DONE_SHARDS = 8  # counter items per state, month and priority: a busy fleet's finishes do not all meet on one
OUTBOX_GSI = "outbox-index"  # sparse: only events some channel still has to hear about
OUTBOX_PENDING = "pending"
CHANNELS = ("sns", "linear", "webhook")
# Everything but the attributes a heartbeat rewrites, so a claim needs no read first and heartbeats never write the
# index. Every other attribute changes only together with `version`, which is projected anyway.
HEARTBEAT_ATTRIBUTES = ("hb_count", "heartbeat_at_ms", "lease_expires_at_ms", "current_step")
STEP_MS = "step_ms#"  # + a step's name: the milliseconds of its successful run in the current run of the workset
# The run's timings (``report``): not projected, so tables made before them keep their index; a claim needs none.
TIMING_ATTRIBUTES = ("started_at_ms", "finished_at_ms")
# Which fleet control item counts an in-progress workset: not projected either (claims nominate ready and retrying
# worksets, which have none; the end of a run is decided on a consistent read or the holder's own copy).
FLEET_SLOT = "fleet_slot"
# What validation counted at registration (``report``): not projected either (no claim needs them; written once, at
# registration, and left alone by every later write, which sets only what changed).
REGISTRATION_ATTRIBUTES = ("samples", "data_bytes")
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
T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


def event_sk(seq: int) -> str:
    return f"{EVENT_SK_PREFIX}{seq:010d}"


def control_key(workset_id: str) -> Item:
    return {"pk": {"S": workset_id}, "sk": {"S": CONTROL_SK}}


def fleet_shard(workset_id: str) -> int:
    """The shard a workset claimed without a fleet cap is counted on."""
    return zlib.crc32(workset_id.encode()) % FLEET_SHARDS


def fleet_slot_key(slot: int | None) -> Item:
    """The key of the fleet control item ``slot`` names: a shard, or the counter item (None)."""
    sk = FLEET_COUNTER_SK if slot is None else f"{FLEET_SHARD_PREFIX}{slot}"
    return {"pk": {"S": FLEET_ID}, "sk": {"S": sk}}


# What a pause is written on: every item a claim's transaction may write, the counter item first.
FLEET_CONTROL_KEYS = (FLEET_KEY, *(fleet_slot_key(k) for k in range(FLEET_SHARDS)))


def counted(ws: Workset) -> bool:
    """Whether ``ws`` is written in the finished layout: out of the state index, in the finished index, counted."""
    return finished_sort_key(ws) is not None


def finished_month(finished_at_ms: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(finished_at_ms // 1000))


def finished_partition(state: State, month: str) -> str:
    return f"{state.value}#{month}"


def done_counter_sk(ws: Workset) -> str:
    """The counter item a counted workset adds 1 to."""
    assert ws.finished_at_ms is not None, "only a counted workset has a counter"
    shard = zlib.crc32(ws.workset_id.encode()) % DONE_SHARDS
    return f"{DONE_PREFIX}{ws.state.value}#{finished_month(ws.finished_at_ms)}#{ws.priority.rank}#{shard}"


def done_count(item: Item, *, table: str) -> tuple[tuple[State, str, Priority], int]:
    """One counter item's ((state, month, priority), count)."""
    a = _Attributes(item, table=table)
    try:
        state, month, rank, _ = a.required("sk", str).removeprefix(DONE_PREFIX).split("#")
        key = (State(state), month, {p.rank: p for p in Priority}[int(rank)])
    except (ValueError, KeyError) as exc:
        problem = "is not <state>#<YYYY-MM>#<priority rank>#<shard>"
        raise errors.CorruptItem(table=table, key=item_key(item), attribute="sk", problem=problem) from exc
    return key, a.optional("n", int) or 0


def counter_add(table: str, sk: str, delta: int) -> dict[str, Any]:
    """A transaction's ``Update`` adding ``delta`` to the finished counter ``sk``."""
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": {"S": FLEET_ID}, "sk": {"S": sk}},
            "UpdateExpression": "ADD #n :delta",
            "ExpressionAttributeNames": {"#n": "n"},
            "ExpressionAttributeValues": {":delta": {"N": str(delta)}},
        }
    }


def listing_key(item: Item) -> str:
    """An index entry's place within its state: its ``gsi_sk``, or in the finished index its ``done_sk``."""
    return str((item.get("gsi_sk") or item["done_sk"])["S"])


def workset_fields(ws: Workset, *, in_finished_index: bool | None = None) -> dict[str, Any]:
    """The control item as plain Python values; ``None`` means "attribute absent". ``in_finished_index`` says which
    layout a finished workset is stored in, when that is not ``counted(ws)`` (an item written before the finished
    index, say)."""
    lease = ws.lease
    finished = counted(ws) if in_finished_index is None else in_finished_index
    done_sk = finished_sort_key(ws) if finished else None
    if finished and (done_sk is None or ws.finished_at_ms is None):
        raise ValueError(f"{ws.workset_id}: only a finished workset with its finishing time goes in the finished index")
    done_pk = finished_partition(ws.state, finished_month(ws.finished_at_ms)) if ws.finished_at_ms and done_sk else None
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
        "lease_owner": lease.owner if lease else ws.held_off_for,
        "heartbeat_at_ms": lease.heartbeat_at_ms if lease else None,
        "lease_expires_at_ms": lease.expires_at_ms if lease else None,
        "current_step": ws.current_step,
        "steps_done": list(ws.steps_done) or None,
        "last_error": ws.last_error,
        "error_category": ws.error_category,
        "started_at_ms": ws.started_at_ms,
        "finished_at_ms": ws.finished_at_ms,
        FLEET_SLOT: ws.fleet_slot,
        "samples": ws.samples,
        "data_bytes": ws.data_bytes,
        "gsi_sk": None if finished else gsi_sort_key(ws),
        "done_pk": done_pk,
        "done_sk": done_sk,
        # One attribute per step, not one map: a holder's copy of a workset claimed from the index (which does not
        # project them) changes only its own step's attribute, never the others'.
        **{STEP_MS + step: ms for step, ms in ws.step_ms},
    }


def workset_item(ws: Workset) -> Item:
    return control_key(ws.workset_id) | encode_fields(workset_fields(ws))


def workset_from_item(item: Item, *, table: str) -> Workset:
    a = _Attributes(item, table=table)
    lease = None
    if token := a.optional("lease_token", str):
        lease = Lease(
            token=token,
            owner=a.optional("lease_owner", str) or "",
            heartbeat_at_ms=a.optional("heartbeat_at_ms", int) or 0,
            expires_at_ms=a.optional("lease_expires_at_ms", int) or 0,
        )
    return Workset(
        workset_id=WorksetId(a.required("pk", str)),
        state=a.member(State, "state"),
        priority=a.member(Priority, "priority"),
        bucket=a.required("bucket", str),
        prefix=a.required("prefix", str),
        created_at_ms=a.required("created_at_ms", int),
        updated_at_ms=a.required("updated_at_ms", int),
        available_at_ms=a.required("available_at_ms", int),
        attempts=a.optional("attempts", int) or 0,
        version=a.required("version", int),
        epoch=a.optional("epoch", int) or 0,
        hb_count=a.optional("hb_count", int) or 0,
        lease=lease,
        current_step=a.optional("current_step", str),
        steps_done=a.strings("steps_done"),
        last_error=a.optional("last_error", str),
        error_category=a.optional("error_category", str),
        held_off_for=None if lease else a.optional("lease_owner", str),
        started_at_ms=a.optional("started_at_ms", int),
        finished_at_ms=a.optional("finished_at_ms", int),
        step_ms=a.step_ms(),
        fleet_slot=a.optional(FLEET_SLOT, int),
        samples=a.optional("samples", int),
        data_bytes=a.optional("data_bytes", int),
    )


def event_item(event: Event) -> Item:
    fields: dict[str, Any] = {
        "pk": event.workset_id,
        "sk": event_sk(event.seq),
        "type": event.type.value,
        "at_ms": event.at_ms,
        "actor": event.actor,
        "from_state": event.from_state.value if event.from_state else None,
        "to_state": event.to_state.value if event.to_state else None,
        "reason": event.reason or None,
        "attempt": event.attempt,
        "epoch": event.epoch,
        "detail": event.detail or None,
        "priority": event.priority.value,
        "outbox": OUTBOX_PENDING if event.pending else None,
        "outbox_sk": outbox_sort_key(event) if event.pending else None,
        **{f"notify_{channel}": outcome for channel, outcome in event.notified.items()},
        "notify_attempts": event.delivery_attempts or None,
        **_step_run_fields(event.step_run),
    }
    return encode_fields(fields)


def _step_run_fields(run: StepRun | None) -> dict[str, Any]:
    if run is None:
        return {}
    return {
        "run_step": run.step,
        "run_started_ms": run.started_at_ms,
        "run_ms": run.duration_ms,
        "run_outcome": run.outcome,
        "run_exit": run.exit_code,
    }


def outbox_sort_key(event: Event, *, due_ms: int | None = None) -> str:
    """When the event is due (``due_ms``, else when it was committed), then oldest first across all worksets: an
    event held by a claim or waiting out a retry sorts after, and is queried apart from, the ones due now."""
    return f"{event.at_ms if due_ms is None else due_ms:015d}#{event.workset_id}#{event.seq:010d}"


def outbox_due_bound(now_ms: int) -> str:
    """Every outbox sort key below this is due at ``now_ms``."""
    return f"{now_ms + 1:015d}"


def event_key(workset_id: str, seq: int) -> Item:
    return {"pk": {"S": workset_id}, "sk": {"S": event_sk(seq)}}


def event_from_item(item: Item, *, table: str) -> Event:
    a = _Attributes(item, table=table)
    sk = a.required("sk", str)
    if not (sk.startswith(EVENT_SK_PREFIX) and sk.removeprefix(EVENT_SK_PREFIX).isdigit()):
        raise a.corrupt("sk", f"holds {sk!r}, not {EVENT_SK_PREFIX}<sequence number>")
    from_state = a.optional("from_state", str)
    pk = a.required("pk", str)
    return Event(
        workset_id=WorksetId(pk),
        seq=int(sk.removeprefix(EVENT_SK_PREFIX)),
        type=a.member(EventType, "type"),
        at_ms=a.required("at_ms", int),
        actor=a.required("actor", str),
        from_state=a.member(State, "from_state") if from_state else None,
        to_state=None if pk == FLEET_ID and "to_state" not in item else a.member(State, "to_state"),
        reason=a.optional("reason", str) or "",
        attempt=a.optional("attempt", int) or 0,
        epoch=a.optional("epoch", int) or 0,
        detail=a.optional("detail", str) or "",
        priority=a.member(Priority, "priority") if "priority" in item else Priority.NORMAL,
        pending=a.optional("outbox", str) == OUTBOX_PENDING,
        notified={c: outcome for c in CHANNELS if (outcome := a.optional(f"notify_{c}", str)) is not None},
        delivery_attempts=a.optional("notify_attempts", int) or 0,
        step_run=_step_run(a),
    )


def _step_run(a: _Attributes) -> StepRun | None:
    """The step run an event records, if it records one (events written before timings were kept do not)."""
    if (step := a.optional("run_step", str)) is None:
        return None
    return StepRun(
        step=step,
        started_at_ms=a.required("run_started_ms", int),
        duration_ms=a.required("run_ms", int),
        outcome=a.required("run_outcome", str),
        exit_code=a.optional("run_exit", int),
    )


def fleet_from_items(items: list[Item], *, table: str) -> Fleet:
    """The fleet as its control items (the counter, its shards, the chores role; any may be absent) say: in
    progress and retry_seq summed over the counter and the shards, the pause as the counter item has it."""
    by_sk = {item.get("sk", {}).get("S"): item for item in items}
    a = _Attributes(by_sk.get(FLEET_COUNTER_SK, {}), table=table)
    shards = [item for sk, item in by_sk.items() if sk and sk.startswith(FLEET_SHARD_PREFIX)]
    counts = [a, *(_Attributes(item, table=table) for item in shards)]
    role = by_sk.get(CHORES_SK)
    return Fleet(
        running=sum(c.optional("running", int) or 0 for c in counts),
        retry_seq=sum(c.optional("retry_seq", int) or 0 for c in counts),
        paused=pause(a),
        chores=None if role is None else role_from_item(role, table=table),
    )


def role_from_item(item: Item, *, table: str) -> Role | None:
    """The role's holder; None when nobody holds it (a released role keeps no token)."""
    a = _Attributes(item, table=table)
    token = a.optional("token", str)
    if token is None:
        return None
    return Role(
        token=token,
        owner=a.optional("owner", str) or "",
        hb_count=a.optional("hb_count", int) or 0,
        since_ms=a.optional("since_ms", int) or 0,
        renewed_at_ms=a.optional("renewed_at_ms", int) or 0,
    )


def pause_from_item(item: Item, *, table: str) -> Pause | None:
    return pause(_Attributes(item, table=table))


def pause(a: _Attributes) -> Pause | None:
    at_ms = a.optional("paused_at_ms", int)
    if at_ms is None:
        return None
    return Pause(reason=a.optional("paused_reason", str) or "", by=a.optional("paused_by", str) or "", at_ms=at_ms)


def presence_key(owner: str) -> Item:
    return {"pk": {"S": PRESENCE_PK}, "sk": {"S": owner}}


def presence_item(p: Presence) -> Item:
    """The item ``put_presence`` writes whole (a few hundred bytes: one write unit)."""
    return {
        **presence_key(p.owner),
        "host": {"S": p.host},
        "pid": {"N": str(p.pid)},
        "version": {"S": p.version},
        "started_at_ms": {"N": str(p.started_at_ms)},
        "written_at_ms": {"N": str(p.written_at_ms)},
        "interval_s": {"N": repr(float(p.interval_s))},
        "config_digest": {"S": p.config_digest},
        "seq": {"N": str(p.seq)},
        "held": {
            "L": [
                {
                    "M": {
                        "w": {"S": h.workset_id},
                        "t": {"N": str(h.since_ms)},
                        **({"s": {"S": h.step}} if h.step else {}),
                    }
                }
                for h in p.held
            ]
        },
        "ticks": {"M": {name: {"N": str(at)} for name, at in p.ticks}},
        "expires_at": {"N": str(p.written_at_ms // 1000 + PRESENCE_TTL_S)},
    }


def presence_from_item(item: Item, *, table: str) -> Presence:
    a = _Attributes(item, table=table)
    try:
        held = tuple(
            Held(workset_id=h["M"]["w"]["S"], step=h["M"].get("s", {}).get("S"), since_ms=int(h["M"]["t"]["N"]))
            for h in item.get("held", {}).get("L", [])
        )
        ticks = tuple(sorted((name, int(v["N"])) for name, v in item.get("ticks", {}).get("M", {}).items()))
        interval_s = float(item["interval_s"]["N"])
    except (KeyError, TypeError, ValueError):
        raise a.corrupt("held", "is not a presence item's list of holdings") from None
    return Presence(
        owner=a.required("sk", str),
        host=a.required("host", str),
        pid=a.required("pid", int),
        version=a.required("version", str),
        started_at_ms=a.required("started_at_ms", int),
        written_at_ms=a.required("written_at_ms", int),
        interval_s=interval_s,
        config_digest=a.optional("config_digest", str) or "",
        held=held,
        ticks=ticks,
        seq=a.optional("seq", int) or 0,
    )


def location(item: Item, *, table: str) -> str:
    """``bucket/prefix`` of a control item (or its index entry)."""
    a = _Attributes(item, table=table)
    return f"{a.required('bucket', str)}/{a.required('prefix', str)}"


def index_entry(item: Item, *, table: str) -> tuple[int, int, int | None]:
    """(priority rank, available_at_ms, updated_at_ms) of a ``state-priority-index`` entry."""
    a = _Attributes(item, table=table)
    rank, available_at, _ = a.required("gsi_sk", str).split("#", 2)  # our own key, always well formed
    return int(rank), int(available_at), a.optional("updated_at_ms", int)


def item_key(item: Item) -> str:
    """The item's key, for messages: ``pk='ws-1', sk='ws'``."""
    return ", ".join(f"{name}={item.get(name, {}).get('S', '?')!r}" for name in ("pk", "sk"))


class _Attributes:
    """One item's attributes, each decoded as it is read: one that is missing, of the wrong type or not a known value
    is a ``CorruptItem`` naming the table, the item and the attribute."""

    def __init__(self, item: Item, *, table: str) -> None:
        self._item, self._table = item, table

    def corrupt(self, name: str, problem: str) -> errors.CorruptItem:
        return errors.CorruptItem(table=self._table, key=item_key(self._item), attribute=name, problem=problem)

    def optional(self, name: str, kind: type[T]) -> T | None:
        if name not in self._item:
            return None
        try:
            value = decode(self._item[name], name=name)
        except Undecodable as exc:
            raise self.corrupt(exc.name, exc.problem) from None
        if not isinstance(value, kind):
            raise self.corrupt(name, f"holds {value!r}, not a {kind.__name__}")
        return value

    def required(self, name: str, kind: type[T]) -> T:
        value = self.optional(name, kind)
        if value is None:
            raise self.corrupt(name, "is missing")
        return value

    def member(self, kind: type[E], name: str) -> E:
        value = self.required(name, str)
        try:
            return kind(value)
        except ValueError:
            raise self.corrupt(name, f"holds {value!r}, not a known {kind.__name__}") from None

    def step_ms(self) -> tuple[tuple[str, int], ...]:
        """The ``step_ms#<step>`` attributes, by step name (as ``decide`` keeps them)."""
        names = sorted(name for name in self._item if name.startswith(STEP_MS))
        return tuple((name.removeprefix(STEP_MS), self.required(name, int)) for name in names)

    def strings(self, name: str) -> tuple[str, ...]:
        values = self.optional(name, list) or []
        if not all(isinstance(v, str) for v in values):
            raise self.corrupt(name, f"holds {values!r}, not a list of strings")
        return tuple(values)


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


class Undecodable(ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"attribute {name} {problem}")
        self.name, self.problem = name, problem


def decode(value: dict[str, Any], *, name: str = "?") -> Any:
    if not isinstance(value, dict) or len(value) != 1:
        raise Undecodable(name, f"holds {value!r}, not one DynamoDB typed value")
    (kind, raw), *_ = value.items()
    if kind == "S":
        return raw
    if kind == "N":
        try:
            return int(raw)
        except ValueError:
            raise Undecodable(name, f"holds {raw!r}; only integers are expected") from None
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
    raise Undecodable(name, f"has unsupported DynamoDB type {kind}")


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
