"""The records the whole program passes around: frozen, typed, free of I/O.

A ``Workset`` is the control item of one workset (small: it is rewritten on every heartbeat); an ``Event`` is one
entry of its audit trail, stored as a separate item and numbered by the workset's ``version`` at the time of the
change, so a trail is contiguous by construction (seq 1, 2, 3 ... with no gaps).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

WorksetId = NewType("WorksetId", str)

_WORKSET_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class State(StrEnum):
    READY = "ready"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    COMPLETE = "complete"
    ERROR = "error"
    IGNORED = "ignored"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({State.COMPLETE, State.ERROR, State.IGNORED, State.CANCELLED})
# Terminal and left alone for good: these only grow (``error`` waits for an operator, so it is not among them).
FINISHED_STATES = (State.COMPLETE, State.IGNORED, State.CANCELLED)


class Priority(StrEnum):
    URGENT = "urgent"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Sort rank: 0 is claimed first."""
        return _RANK[self]

    def at_least(self, other: Priority) -> bool:
        """Whether this priority is as important as ``other`` or more (urgent >= normal >= low)."""
        return self.rank <= other.rank


_RANK = {Priority.URGENT: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class EventType(StrEnum):
    REGISTERED = "registered"
    INVALID = "invalid"
    STARTED = "started"
    STEP_FINISHED = "step_finished"
    RELEASED = "released"
    RETRYING = "retrying"
    COMPLETE = "complete"
    ERROR = "error"
    LEASE_EXPIRED = "lease_expired"
    CANCELLED = "cancelled"
    IGNORED = "ignored"
    REOPENED = "reopened"
    PRIORITY_CHANGED = "priority_changed"
    DEFERRED = "deferred"  # a ready workset's run scheduled for later (`defer`), or brought forward
    DUPLICATE = "duplicate"
    IMPORTED = "imported"  # import --force replaced the table's copy with an older one from a file
    PAUSED = "paused"  # intake paused fleet-wide (`workset-monitor pause`): an event of FLEET_ID, not of a workset
    RESUMED = "resumed"  # intake resumed (`workset-monitor resume`)
    TEST = "test"


# Fleet-wide events (pause, resume) are kept, and notified, as the events of this id; '#' cannot start a workset id.
FLEET_ID = WorksetId("#fleet")


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a workset right now. ``token`` is fresh per claim and fences every holder write."""

    token: str
    owner: str
    heartbeat_at_ms: int
    expires_at_ms: int  # the holder's own wall-clock estimate: a hint for humans, never used for safety


@dataclass(frozen=True, slots=True)
class Workset:
    workset_id: WorksetId
    state: State
    priority: Priority
    bucket: str
    prefix: str  # the workset's own folder, ending in "/"
    created_at_ms: int
    updated_at_ms: int
    available_at_ms: int  # claimable (ready/retrying) once this has passed
    attempts: int = 0  # attempts that count: +1 per claim, given back when a claim is released
    version: int = 1  # +1 on every audited change; also the seq of the latest event
    epoch: int = 0  # +1 on every claim; handed to steps as a fencing token
    hb_count: int = 0  # +1 per heartbeat; the liveness signal the sweeper watches
    lease: Lease | None = None
    current_step: str | None = None
    steps_done: tuple[str, ...] = ()
    last_error: str | None = None
    error_category: str | None = None
    # The owner whose lease an operator took away (release, or cancel/ignore of a running workset): it may still be
    # running its step, so no claim until the claimer has seen this mark for a takeover time (``leases.Claimer``).
    held_off_for: str | None = None
    # Timings of the current run (since registration or the latest retry), for ``report`` without reading events:
    started_at_ms: int | None = None  # its first claim
    finished_at_ms: int | None = None  # when it reached a terminal state
    step_ms: tuple[tuple[str, int], ...] = ()  # (step, milliseconds of its successful run), by step name
    # While in progress: which of the fleet's control items counts it (``codec.fleet_slot_sk``): a shard when no
    # fleet cap is set (so that no one item is written by every claim), None for the counter item (a cap is set, or
    # it was claimed before the shards). Set by the store at the claim, cleared when it leaves in_progress.
    fleet_slot: int | None = None
    # What validation found at registration, for ``report`` (None: registered without validation, or before these
    # were recorded): the manifest's rows and the total size of the distinct data objects it names.
    samples: int | None = None
    data_bytes: int | None = None

    def step_seconds(self, step: str) -> float | None:
        """How long ``step``'s successful run took, if it has finished."""
        return next((ms / 1000 for name, ms in self.step_ms if name == step), None)

    @property
    def s3_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class StepRun:
    """One run of a step, as its event records it: when it started, how long it took, how it ended."""

    step: str
    started_at_ms: int
    duration_ms: int
    outcome: str  # steps.Outcome's value: done, temporary, failed, stopped
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    workset_id: WorksetId
    seq: int
    type: EventType
    at_ms: int
    actor: str  # lease owner "<host>:<pid>:<random>", or "operator:<user>@<host>", or "scanner:..."
    from_state: State | None
    to_state: State | None  # None for a fleet-wide event (FLEET_ID)
    reason: str = ""
    attempt: int = 0
    epoch: int = 0
    detail: str = ""  # bounded: an error or output tail, never a growing list
    priority: Priority = Priority.NORMAL
    pending: bool = False  # in the notification outbox: some channel still has to hear about it
    notified: dict[str, str] = field(default_factory=dict)  # channel -> "sent", "skipped" or "failed: why"
    delivery_attempts: int = 0  # delivery rounds that ended with a channel still failing temporarily
    step_run: StepRun | None = None  # the step run this event ends (step_finished, retrying, error, released)

    @property
    def event_id(self) -> str:
        """Stable across retries and restarts: what channels use to recognise a repeat."""
        return f"{self.workset_id}#{self.seq}"


NOTIFIABLE_EVENTS = frozenset(
    {
        EventType.REGISTERED,
        EventType.STARTED,
        EventType.RETRYING,
        EventType.COMPLETE,
        EventType.ERROR,
        EventType.CANCELLED,
        EventType.LEASE_EXPIRED,
        EventType.INVALID,
        EventType.PAUSED,
        EventType.RESUMED,
    }
)
PROBLEM_EVENTS = frozenset({EventType.ERROR, EventType.LEASE_EXPIRED, EventType.INVALID})


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts per state and priority, read from every page of the index."""

    counts: dict[State, dict[Priority, int]] = field(default_factory=dict)
    oldest_ready_age_s: float | None = None
    oldest_change_age_s: dict[State, float] = field(default_factory=dict)  # per state: since its stalest change

    def count(self, state: State, priority: Priority | None = None) -> int:
        per = self.counts.get(state, {})
        return per.get(priority, 0) if priority else sum(per.values())

    @property
    def total(self) -> int:
        return sum(self.count(s) for s in State)


@dataclass(frozen=True, slots=True)
class Pause:
    """Intake paused fleet-wide for maintenance (``workset-monitor pause``): no claim until ``resume``."""

    reason: str
    by: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Role:
    """Who does the fleet's chores (``roles``): the holder's lease on the role item, renewed like a workset's.

    ``token`` and ``hb_count`` are what takeover decisions compare; ``since_ms`` and ``renewed_at_ms`` are the
    holder's clock, for people only."""

    token: str
    owner: str
    hb_count: int = 0
    since_ms: int = 0
    renewed_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Fleet:
    """The fleet's control items, read in one consistent Query of their partition: the counter (how many worksets
    are in progress fleet-wide, how many times any workset has entered ``retrying``, the pause) and the chores role.
    It lets an idle daemon skip the in-progress and retrying queries while neither has anything to show."""

    running: int = 0
    retry_seq: int = 0
    paused: Pause | None = None  # set by `pause`, on the counter item: the sweeper's read carries it at no cost
    chores: Role | None = None  # the chores role's holder, if any (`roles`)


@dataclass(frozen=True, slots=True)
class Held:
    """A workset a daemon runs, as its presence item shows it."""

    workset_id: str
    step: str | None  # the step running now (None between steps)
    since_ms: int  # when the daemon claimed it (the daemon's clock)


@dataclass(frozen=True, slots=True)
class Presence:
    """One daemon's presence item (``workset-monitor fleet``): who it is, what it runs, when it last wrote.

    Written by the daemon itself every ``interval_s`` and deleted when it stops cleanly. Liveness is judged by the
    reader from ``written_at_ms`` (the writer's clock): this is for people, never for a safety decision."""

    owner: str
    host: str
    pid: int
    version: str
    started_at_ms: int
    written_at_ms: int
    interval_s: float
    config_digest: str
    held: tuple[Held, ...] = ()
    ticks: tuple[tuple[str, int], ...] = ()  # engine -> its last completed tick (wall ms)
    seq: int = 0  # writes so far: a reader that looks twice sees it move


@dataclass(frozen=True, slots=True)
class Due:
    """Claim candidates, and what the read learnt about the retrying worksets that are not due yet."""

    candidates: list[Workset]
    retrying_read: bool = False  # the retrying worksets were read at all
    next_retry_ms: int | None = None  # when the earliest not-yet-due retrying workset becomes due (None: none)
    next_retry_known: bool = False  # every retrying workset was seen, so next_retry_ms is exact


def check_workset_id(value: str) -> WorksetId:
    """Return the id if it is a safe folder name, else raise ValueError saying why."""
    if not _WORKSET_ID.fullmatch(value) or value in {".", ".."}:
        raise ValueError(
            f"invalid workset id {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ - (and not '.' or '..')"
        )
    return WorksetId(value)


@dataclass(frozen=True, slots=True)
class Folder:
    """A workset's folder in S3: a bucket, one of the scanned prefixes, and the folder's own name."""

    bucket: str
    prefix: str  # the scanned prefix ("worksets/")
    name: str  # the folder's name under it

    @property
    def key(self) -> str:
        """The folder's key prefix, as stored on the workset (``Workset.prefix``)."""
        return f"{self.prefix}{self.name}/"

    @property
    def location(self) -> str:
        """``bucket/key``: how the table's registered folders are compared (``Store.locations``)."""
        return f"{self.bucket}/{self.key}"

    @property
    def workset_id(self) -> WorksetId:
        """The folder's name, or for a name that is not a valid workset id a stable stand-in derived from where it
        is (so it is registered once, as invalid, and reported, never run)."""
        try:
            return check_workset_id(self.name)
        except ValueError:
            digest = hashlib.sha256(self.location.encode("utf-8", "surrogateescape")).hexdigest()[:16]
            return WorksetId(f"invalid-name-{digest}")

    @property
    def stand_in(self) -> bool:
        return self.workset_id != self.name


def check_bucket(value: str) -> str:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(f"invalid S3 bucket name {value!r}: 3-63 characters from a-z 0-9 . -")
    return value


def parse_s3_folder(value: str) -> tuple[str, str]:
    """``s3://BUCKET/PATH/NAME/`` as (bucket, key prefix ending in '/'): a folder, never the bucket's root."""
    if not value.startswith("s3://"):
        raise ValueError(f"{value[:80]!a} is not an s3://BUCKET/PREFIX/NAME/ folder")
    bucket, _, key = value.removeprefix("s3://").partition("/")
    check_bucket(bucket)
    key = key.strip("/")
    if not key:
        raise ValueError(f"{value[:80]!a} names a whole bucket: give the workset's folder, s3://{bucket}/PREFIX/NAME/")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in key) or len(key) > 1000:
        raise ValueError(f"{value[:80]!a} is not a usable S3 key (control characters, or over 1000 characters)")
    return bucket, key + "/"


def parse_priority(value: str) -> Priority:
    try:
        return Priority(value.strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in Priority)
        raise ValueError(f"invalid priority {value!r}: use one of {choices}") from None


def parse_state(value: str) -> State:
    try:
        return State(value.strip().lower())
    except ValueError:
        choices = ", ".join(s.value for s in State)
        raise ValueError(f"invalid state {value!r}: use one of {choices}") from None
