"""The interfaces the loops and the CLI are written against; adapters in ``monitor.aws`` and ``monitor.memory``
implement them.

Store guarantees (both implementations, one behavioural test suite):
- ``register`` is an idempotent conditional create: an existing id is left untouched and ``False`` returned.
- ``commit`` writes a ``Decision`` only if the item is still in ``decision.before.state`` at
  ``decision.before.version`` (and, when ``fence_token`` is given, still holds that lease token); the control item,
  the audit event and the fleet counter are written together or not at all. A lost condition raises ``Conflict``
  (``LeaseLost`` when the token no longer matches).
- A heartbeat changes neither ``version`` nor anything an operator decision depends on.
- Reads are strongly consistent for single worksets; listings follow every page and never truncate silently.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from monitor.model import Due, Event, Fleet, Pause, Presence, Priority, Role, State, Stats, Workset, WorksetId
from monitor.selection import Position
from monitor.states import Decision


class Store(Protocol):
    async def register(self, decision: Decision) -> bool:
        """Create the workset with its first event; False (and no write) if the id exists."""
        ...

    async def get(self, workset_id: WorksetId) -> Workset | None: ...

    async def commit(
        self,
        decision: Decision,
        *,
        fence_token: str | None = None,
        expect_heartbeats: int | None = None,
        fleet_cap: int | None = None,
    ) -> Workset:
        """Conditionally apply ``decision``; returns the new record.

        ``fence_token``: only while this lease token is on the item (holder writes). ``expect_heartbeats``: only
        while the heartbeat counter is unchanged (the sweeper's takeover). ``fleet_cap``: refuse with FleetFull a
        move into in_progress when that many worksets are in progress fleet-wide.
        """
        ...

    async def heartbeat(
        self, workset_id: WorksetId, *, token: str, now_ms: int, expires_at_ms: int, step: str | None = None
    ) -> int | None:
        """Renew the lease held under ``token`` and record the running ``step``: the new heartbeat count, or None if
        the token is not on the item."""
        ...

    async def event(self, workset_id: WorksetId, seq: int) -> Event | None:
        """One event of the trail (to tell whether a write whose response was lost was applied)."""
        ...

    async def due(self, *, now_ms: int, limit: int, retrying: bool = True) -> Due:
        """Up to ``limit`` claim candidates (every ready one; retrying ones, unless ``retrying`` is False, once their
        available_at has passed):
        urgent first, then FIFO; plus when the earliest retrying workset that is not due yet will be.

        Possibly stale: a candidate is only a nomination, the claim's conditional write decides."""
        ...

    async def running(self) -> list[Workset]:
        """Every in_progress workset, read consistently."""
        ...

    async def fleet(self) -> Fleet:
        """The fleet's control items, read consistently (one Query): in progress fleet-wide (what the fleet cap is
        enforced against), how many times a workset entered retrying, the pause, the chores role's holder."""
        ...

    async def take_chores(self, *, token: str, owner: str, now_ms: int, expect: Role | None) -> None:
        """Take the chores role with a new ``token`` (heartbeat count 0): when nobody holds it (``expect`` None), or
        from the holder ``expect`` (its token and heartbeat count must be unchanged). ``Conflict`` otherwise."""
        ...

    async def renew_chores(self, *, token: str, now_ms: int) -> None:
        """Bump the role's heartbeat count, conditioned on ``token``; ``Conflict`` once the role is not ours."""
        ...

    async def release_chores(self, *, token: str) -> None:
        """Give the role up (delete its item) if ``token`` still holds it; nothing otherwise."""
        ...

    async def pause(self, *, reason: str, by: str, now_ms: int, event: Event) -> Pause | None:
        """Pause intake fleet-wide: one transaction of a conditional update of the fleet's control items (one of
        which every claim's transaction already writes: from then on each claim is refused with ``Paused``) and the
        ``paused``
        ``event`` of ``FLEET_ID`` (in the outbox if a channel wants it). Returns the pause already in force,
        unchanged and nothing written, if there was one; else None."""
        ...

    async def resume(self, *, event: Event) -> Pause | None:
        """End the pause and record the ``resumed`` ``event`` (a read, then one transaction); the pause it ended,
        or None (nothing written) if intake was not paused."""
        ...

    async def put_presence(self, presence: Presence) -> None:
        """Write this daemon's presence item whole (one PutItem)."""
        ...

    async def delete_presence(self, owner: str) -> None:
        """Remove a daemon's presence item (one DeleteItem; nothing there is fine)."""
        ...

    async def presences(self) -> builtins.list[Presence]:
        """Every presence item (one Query of their partition per page), by owner."""
        ...

    async def history(self, workset_id: WorksetId) -> list[Event]:
        """Every event of the workset, oldest first."""
        ...

    def pages(
        self,
        *,
        state: State | None = None,
        priority: Priority | None = None,
        after: Position | None = None,
        size: int = 100,
    ) -> AsyncGenerator[builtins.list[tuple[Position, Workset]], None]:
        """The worksets in the listing order (``selection.LIST_ORDER``, then the index's order within a state), past
        ``after``, ``size`` at a time (one index query page and one ``BatchGetItem`` each), as the table has them now
        and only if they still match. A consumer may stop early: nothing more is read."""
        ...

    async def list(
        self, *, state: State | None = None, priority: Priority | None = None, limit: int | None = None
    ) -> list[Workset]:
        """Worksets by state (all states when None), urgent first, then FIFO by available_at."""
        ...

    async def stats(self, *, now_ms: int, states: Collection[State] | None = None) -> Stats:
        """Counts and ages of ``states`` (all when None); reads every index entry in them."""
        ...

    async def pending_events(self, *, limit: int, due_by_ms: int | None = None) -> builtins.list[Event]:
        """Events in the notification outbox, the earliest due first; with ``due_by_ms`` only those due by then
        (not held by a live claim, not waiting out a retry)."""
        ...

    async def claim_event(
        self, event: Event, *, owner: str, now_ms: int, hold_ms: int, outcomes: Mapping[str, str] | None = None
    ) -> bool:
        """Take the delivery of ``event`` for ``hold_ms`` (False when another daemon holds it or it is done); with
        ``outcomes`` (channel -> outcome, as ``record_delivery``), record them in the same write, only if it is
        taken."""
        ...

    async def record_delivery(self, event: Event, channel: str, outcome: str) -> None:
        """Note one channel's outcome ("sent", "skipped", "failed: ...") so it is never sent there again."""
        ...

    async def finish_event(
        self, event: Event, *, retry_at_ms: int | None = None, outcomes: Mapping[str, str] | None = None
    ) -> None:
        """Take ``event`` out of the outbox, or (``retry_at_ms``) give back its claim, count a failed round and leave
        it due again at that time; with ``outcomes``, record them in the same write."""
        ...

    async def identity(self) -> str:
        """What tells this table from another of the same name, or from itself deleted and created again (its ARN
        and creation time): a local copy of what it holds is valid for this identity only."""
        ...

    async def locations(self, workset_ids: Sequence[WorksetId] | None = None) -> dict[WorksetId, str]:
        """``bucket/prefix`` of the given worksets that exist (all registered worksets when None), every page."""
        ...


@dataclass(frozen=True, slots=True)
class Listing:
    """One folder's direct contents: file name -> size, and sub-folder names."""

    files: Mapping[str, int] = field(default_factory=dict)
    folders: frozenset[str] = frozenset()


class TooLarge(Exception):
    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(f"{key} is larger than {max_bytes} bytes")
        self.key, self.max_bytes = key, max_bytes


class Source(Protocol):
    """Where worksets arrive (S3). Keys are relative to ``bucket``; folders end in '/'."""

    bucket: str

    async def folders(self, prefix: str) -> list[str]:
        """Child folder names of ``prefix``, every page."""
        ...

    async def top_level(self, folder: str) -> Listing: ...

    async def has_objects(self, prefix: str) -> bool: ...

    async def size(self, bucket: str, key: str) -> int | None:
        """The object's size in bytes (one HEAD), or None when it does not exist."""
        ...

    async def read(self, key: str, *, max_bytes: int) -> bytes:
        """The object's bytes, or TooLarge."""
        ...

    async def write(self, key: str, body: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...


class LogStore(Protocol):
    """Where full step logs go (``monitor.step_logs``): objects in any bucket, by key."""

    async def put(self, bucket: str, key: str, body: bytes) -> None: ...

    async def sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        """Key -> size of every object under ``prefix``, every page."""
        ...

    async def read(self, bucket: str, key: str, *, start: int = 0) -> bytes:
        """The object's bytes from ``start`` on (b"" when it has no more)."""
        ...


@dataclass(frozen=True, slots=True)
class Message:
    body: str
    receipt: str


class Queue(Protocol):
    """Notifications of new objects (SQS)."""

    async def receive(self, *, wait_s: int, max_messages: int = 10) -> list[Message]: ...

    async def delete(self, message: Message) -> None: ...
