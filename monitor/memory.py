"""An in-memory ``ports.Store`` with the same contract as the DynamoDB one, and a model of DynamoDB's faults.

It exists so the loops can be tested fast and deterministically; the behavioural suite in
``tests/test_store.py`` runs unchanged against both implementations, which is what keeps them honest. It holds
no lock: on one event loop every method body runs without interleaving.

Like the table, it keeps the fleet counter (``running``, ``retry_seq``) as stored numbers changed in the same
step as the state change they count (+1 entering ``in_progress``, capped by ``fleet_cap``; -1 leaving it; +1 entering
``retrying``), never recounted from the worksets: a counter that drifted (a hand-edited table, a bug) stays wrong
here as it would there. ``set_fleet_counter`` is that hand edit, for tests.

``Faults`` (off by default) makes it behave as DynamoDB can on a bad day:

- **Index lag.** The reads DynamoDB serves from the ``state-priority-index`` (``due``, ``stats``, ``locations()``;
  the ids behind ``running`` and ``list``, whose items are then read consistently and kept only if they still
  match) see the worksets as they were ``index_lag_reads`` index reads ago: one call of those methods is one index
  read, and the first ``index_lag_reads`` reads see the store as it was built (empty). ``get``, ``event``,
  ``history``, ``fleet`` and ``locations(ids)`` are consistent reads, always current, as ``ConsistentRead=True``
  is. The lag is counted in reads, not time, so a test can say exactly when a change shows.
- **Lost responses.** A write (``register``, ``commit``, ``heartbeat``) that was applied raises
  ``errors.AwsUnavailable`` (temporary) instead of returning, as ``DynamoStore`` does when the call's read timed out
  after DynamoDB applied it: on a schedule (the n-th call of a method) or with a probability (seeded). A write that
  was refused keeps its refusal. Writes of the notification outbox are not covered.

Not modelled: lag of the outbox index (``pending_events``), throttling, concurrent writers' interleavings (see
``tests/faults.py`` for scripted ones). It has no ``import``: restoring a backup (``monitor/aws/backup.py``, which
recounts the counter) is a DynamoDB-only path.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import random
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence

from monitor import errors, states
from monitor.model import Due, Event, Fleet, Pause, Presence, Priority, Role, State, Stats, Workset, WorksetId
from monitor.selection import LIST_ORDER, Position
from monitor.states import Decision, gsi_sort_key, list_sort_key


@dataclasses.dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong in a ``MemoryStore``; the default is nothing."""

    index_lag_reads: int = 0  # index reads see the worksets as of this many index reads ago
    lost_responses: Mapping[str, Collection[int]] = dataclasses.field(default_factory=dict)  # "commit": {2}: 2nd call
    lost_response_rate: float = 0.0  # or: each applied write loses its response with this probability
    seed: int = 0


class MemoryStore:
    def __init__(
        self,
        *,
        on_pending: Callable[[Event, Workset], None] | None = None,
        faults: Faults | None = None,
    ) -> None:
        self._worksets: dict[WorksetId, Workset] = {}
        self._events: dict[WorksetId, list[Event]] = {}
        self._on_pending = on_pending
        self._claims: dict[str, tuple[str, int]] = {}  # event id -> (owner, until ms): not due before then
        self._running = 0  # the fleet counter item's: in progress fleet-wide
        self._retry_seq = 0  # the fleet counter item's: entries into retrying
        self._presence: dict[str, Presence] = {}  # the daemons' presence items, by owner
        self._pause: Pause | None = None  # the fleet counter item's pause, if intake is paused
        self._chores: Role | None = None  # the chores role item's holder
        self.faults = faults or Faults()
        if self.faults.index_lag_reads < 0:
            raise ValueError("index_lag_reads must be >= 0")
        # The index as of each of the latest index reads; the oldest is what the current read is served.
        self._views: collections.deque[dict[WorksetId, Workset]] = collections.deque(
            maxlen=self.faults.index_lag_reads + 1
        )
        self._writes: collections.Counter[str] = collections.Counter()  # calls per write method
        self._rng = random.Random(self.faults.seed)
        self.lost: list[tuple[str, int]] = []  # (method, call number) of every response lost so far

    async def register(self, decision: Decision) -> bool:
        call = self._call("register")
        ws = decision.after
        if ws.workset_id in self._worksets:
            return False
        self._worksets[ws.workset_id] = ws
        self._events[ws.workset_id] = [self._outboxed(decision.event, ws)]
        self._respond("register", call)
        return True

    async def get(self, workset_id: WorksetId) -> Workset | None:
        return self._worksets.get(workset_id)

    async def commit(
        self,
        decision: Decision,
        *,
        fence_token: str | None = None,
        expect_heartbeats: int | None = None,
        fleet_cap: int | None = None,
    ) -> Workset:
        call = self._call("commit")
        before = decision.before
        entering = decision.after.state is State.IN_PROGRESS and before.state is not State.IN_PROGRESS
        leaving = before.state is State.IN_PROGRESS and decision.after.state is not State.IN_PROGRESS
        # DynamoDB checks every condition of the transaction and DynamoStore reports a full fleet first.
        if entering and self._pause is not None:
            raise errors.Paused(f"intake is paused fleet-wide: {self._pause.reason}")
        if entering and fleet_cap is not None and self._running >= fleet_cap:
            raise errors.FleetFull(f"the fleet already runs {fleet_cap} worksets (run.max_fleet_concurrent)")
        current = self._worksets.get(before.workset_id)
        if current is None:
            raise errors.Conflict(f"{before.workset_id} does not exist or changed concurrently")
        if fence_token is not None and (current.lease is None or current.lease.token != fence_token):
            raise errors.LeaseLost(
                f"{before.workset_id}: our lease is gone (now {current.state.value}, epoch {current.epoch})"
            )
        stale = current.state is not before.state or current.version != before.version
        if stale or (expect_heartbeats is not None and current.hb_count != expect_heartbeats):
            raise errors.Conflict(
                f"{before.workset_id} changed concurrently: expected {before.state.value} v{before.version}, "
                f"found {current.state.value} v{current.version}"
            )
        # Like the DynamoDB update: only attributes the decision changed are written; counters others own
        # (hb_count, bumped by heartbeats without a version change) keep their current value.
        changed = {
            f.name: getattr(decision.after, f.name)
            for f in dataclasses.fields(Workset)
            if getattr(decision.after, f.name) != getattr(before, f.name)
        }
        after = dataclasses.replace(current, **changed)
        self._worksets[after.workset_id] = after
        self._events[after.workset_id].append(self._outboxed(decision.event, after))
        self._running += entering - leaving
        self._retry_seq += after.state is State.RETRYING and before.state is not State.RETRYING
        self._respond("commit", call)
        return after

    def _outboxed(self, event: Event, ws: Workset) -> Event:
        if event.pending and self._on_pending is not None:
            self._on_pending(event, ws)
        return event

    async def pending_events(self, *, limit: int, due_by_ms: int | None = None) -> list[Event]:
        pending = [e for events in self._events.values() for e in events if e.pending]
        due = [(self._claims.get(e.event_id, ("", e.at_ms))[1], e) for e in pending]  # like the index's sort key
        due = [(at, e) for at, e in due if due_by_ms is None or at <= due_by_ms]
        return [e for _, e in sorted(due, key=lambda d: (d[0], d[1].workset_id, d[1].seq))][:limit]

    async def claim_event(
        self, event: Event, *, owner: str, now_ms: int, hold_ms: int, outcomes: Mapping[str, str] | None = None
    ) -> bool:
        current = await self.event(event.workset_id, event.seq)
        holder = self._claims.get(event.event_id)
        if current is None or not current.pending or (holder and holder[0] != owner and holder[1] > now_ms):
            return False
        self._claims[event.event_id] = (owner, now_ms + hold_ms)
        self._record(event, outcomes)
        return True

    async def record_delivery(self, event: Event, channel: str, outcome: str) -> None:
        self._record(event, {channel: outcome})

    def _record(self, event: Event, outcomes: Mapping[str, str] | None) -> None:
        if outcomes:
            self._replace_event(event, lambda e: dataclasses.replace(e, notified={**e.notified, **outcomes}))

    async def finish_event(
        self, event: Event, *, retry_at_ms: int | None = None, outcomes: Mapping[str, str] | None = None
    ) -> None:
        self._record(event, outcomes)
        if retry_at_ms is None:
            self._claims.pop(event.event_id, None)
            self._replace_event(event, lambda e: dataclasses.replace(e, pending=False))
        else:
            self._claims[event.event_id] = ("", retry_at_ms)  # nobody's claim: not due before then
            self._replace_event(event, lambda e: dataclasses.replace(e, delivery_attempts=e.delivery_attempts + 1))

    def _replace_event(self, event: Event, change: Callable[[Event], Event]) -> None:
        events = self._events[event.workset_id]
        for index, stored in enumerate(events):
            if stored.seq == event.seq:
                events[index] = change(stored)

    async def heartbeat(
        self, workset_id: WorksetId, *, token: str, now_ms: int, expires_at_ms: int, step: str | None = None
    ) -> int | None:
        call = self._call("heartbeat")
        ws = self._worksets.get(workset_id)
        if ws is None or ws.state is not State.IN_PROGRESS or ws.lease is None or ws.lease.token != token:
            return None
        lease = dataclasses.replace(ws.lease, heartbeat_at_ms=now_ms, expires_at_ms=expires_at_ms)
        self._worksets[workset_id] = dataclasses.replace(ws, lease=lease, hb_count=ws.hb_count + 1, current_step=step)
        self._respond("heartbeat", call)
        return ws.hb_count + 1

    async def event(self, workset_id: WorksetId, seq: int) -> Event | None:
        return next((e for e in self._events.get(workset_id, []) if e.seq == seq), None)

    async def due(self, *, now_ms: int, limit: int, retrying: bool = True) -> Due:
        index = self._index()
        claimable = (State.READY, State.RETRYING) if retrying else (State.READY,)
        due = [  # like DynamoStore: ready unless scheduled for later, retrying once its backoff has passed
            _projected(ws) for ws in index.values() if ws.state in claimable and states.due(ws, now_ms)
        ]
        if not retrying:
            return Due(sorted(due, key=gsi_sort_key)[:limit])
        waiting = [
            ws.available_at_ms for ws in index.values() if ws.state is State.RETRYING and ws.available_at_ms > now_ms
        ]
        return Due(
            sorted(due, key=gsi_sort_key)[:limit],
            retrying_read=True,
            next_retry_ms=min(waiting, default=None),
            next_retry_known=True,
        )

    async def running(self) -> list[Workset]:
        """Every in_progress workset the index knows of, as the table has it now (DynamoStore reads them again)."""
        return await self.list(state=State.IN_PROGRESS)

    async def fleet(self) -> Fleet:
        return Fleet(running=self._running, retry_seq=self._retry_seq, paused=self._pause, chores=self._chores)

    async def take_chores(self, *, token: str, owner: str, now_ms: int, expect: Role | None) -> None:
        held = self._chores
        if (held is None) != (expect is None) or (
            held is not None and expect is not None and (held.token, held.hb_count) != (expect.token, expect.hb_count)
        ):
            raise errors.Conflict("taking the chores role: the role is not as this daemon last saw it")
        call = self._call("take_chores")
        self._chores = Role(token=token, owner=owner, hb_count=0, since_ms=now_ms, renewed_at_ms=now_ms)
        self._respond("take_chores", call)

    async def renew_chores(self, *, token: str, now_ms: int) -> None:
        held = self._chores
        if held is None or held.token != token:
            raise errors.Conflict("renewing the chores role: the role is not as this daemon last saw it")
        call = self._call("renew_chores")
        self._chores = dataclasses.replace(held, hb_count=held.hb_count + 1, renewed_at_ms=now_ms)
        self._respond("renew_chores", call)

    async def release_chores(self, *, token: str) -> None:
        if self._chores is not None and self._chores.token == token:
            self._chores = None

    async def pause(self, *, reason: str, by: str, now_ms: int, event: Event) -> Pause | None:
        if self._pause is not None:
            return self._pause
        self._fleet_event(event)
        self._pause = Pause(reason=reason, by=by, at_ms=now_ms)
        return None

    async def resume(self, *, event: Event) -> Pause | None:
        if self._pause is None:
            return None
        self._fleet_event(event)
        ended, self._pause = self._pause, None
        return ended

    def _fleet_event(self, event: Event) -> None:
        events = self._events.setdefault(event.workset_id, [])
        if any(e.seq == event.seq for e in events):
            raise errors.Conflict("another fleet event has the same time; try again")
        events.append(event)

    async def put_presence(self, presence: Presence) -> None:
        self._presence[presence.owner] = presence

    async def delete_presence(self, owner: str) -> None:
        self._presence.pop(owner, None)

    async def presences(self) -> builtins.list[Presence]:
        return [self._presence[owner] for owner in sorted(self._presence)]

    def set_fleet_counter(self, *, running: int | None = None, retry_seq: int | None = None) -> None:
        """Overwrite the stored fleet counter, as an operator editing the table's counter item could (tests only)."""
        self._running = self._running if running is None else running
        self._retry_seq = self._retry_seq if retry_seq is None else retry_seq

    async def identity(self) -> str:
        return f"memory:{id(self):x}"

    async def locations(self, workset_ids: Sequence[WorksetId] | None = None) -> dict[WorksetId, str]:
        source = self._index() if workset_ids is None else self._worksets
        wanted = source.keys() if workset_ids is None else set(workset_ids) & source.keys()
        return {i: f"{source[i].bucket}/{source[i].prefix}" for i in wanted}

    async def history(self, workset_id: WorksetId) -> list[Event]:
        return list(self._events.get(workset_id, []))

    async def list(
        self, *, state: State | None = None, priority: Priority | None = None, limit: int | None = None
    ) -> list[Workset]:
        index = self._index()
        ids: list[WorksetId] = []
        for wanted in (state,) if state else LIST_ORDER:
            matching = [
                ws for ws in index.values() if ws.state is wanted and (priority is None or ws.priority is priority)
            ]
            ids += [ws.workset_id for ws in sorted(matching, key=list_sort_key)]
        # Like DynamoStore: the ids come from the index, the worksets from the table now, if they still match.
        found = [self._worksets[i] for i in (ids[:limit] if limit is not None else ids)]
        return [ws for ws in found if state in (None, ws.state) and priority in (None, ws.priority)]

    async def pages(
        self,
        *,
        state: State | None = None,
        priority: Priority | None = None,
        after: Position | None = None,
        size: int = 100,
    ) -> AsyncGenerator[builtins.list[tuple[Position, Workset]], None]:
        entries = sorted(
            (Position.at(ws.state, list_sort_key(ws)), ws.workset_id)
            for ws in self._index().values()
            if state in (None, ws.state) and priority in (None, ws.priority)
        )
        chosen = [(position, i) for position, i in entries if after is None or position > after]
        for start in range(0, len(chosen), size):
            page = chosen[start : start + size]
            # Like DynamoStore: the index's order, the worksets as the table has them now, if they still match.
            yield [
                (position, self._worksets[i])
                for position, i in page
                if self._worksets[i].state is position.state and priority in (None, self._worksets[i].priority)
            ]

    async def stats(self, *, now_ms: int, states: Collection[State] | None = None) -> Stats:
        wanted = set(State if states is None else states)
        counts = {s: dict.fromkeys(Priority, 0) for s in State if s in wanted}
        chosen = [ws for ws in self._index().values() if ws.state in wanted]
        for ws in chosen:
            counts[ws.state][ws.priority] += 1
        ready = [ws.available_at_ms for ws in chosen if ws.state is State.READY]
        age = max(now_ms - min(ready), 0) / 1000 if ready else None
        stalest: dict[State, int] = {}
        for ws in chosen:
            stalest[ws.state] = min(stalest.get(ws.state, ws.updated_at_ms), ws.updated_at_ms)
        ages = {state: max(now_ms - at, 0) / 1000 for state, at in stalest.items()}
        return Stats(counts=counts, oldest_ready_age_s=age, oldest_change_age_s=ages)

    # --- the fault model ---------------------------------------------------------------------------------------

    def _index(self) -> Mapping[WorksetId, Workset]:
        """The worksets as the state-priority index shows them to this read: ``index_lag_reads`` index reads old."""
        if self.faults.index_lag_reads == 0:
            return self._worksets
        self._views.append(dict(self._worksets))
        return self._views[0] if len(self._views) == self._views.maxlen else {}

    def _call(self, method: str) -> int:
        """Number this call of a write method (the lost-response schedule counts calls)."""
        self._writes[method] += 1
        return self._writes[method]

    def _respond(self, method: str, call: int) -> None:
        """The write was applied; lose its response if the faults say so."""
        scheduled = call in self.faults.lost_responses.get(method, ())
        if scheduled or (self.faults.lost_response_rate and self._rng.random() < self.faults.lost_response_rate):
            self.lost.append((method, call))
            raise errors.AwsUnavailable(f"{method} #{call}: applied, but the response was lost (injected read timeout)")


def _projected(ws: Workset) -> Workset:
    """A candidate as the index holds it: without the run's timings, which it does not project (``GSI_PROJECTED``)."""
    return dataclasses.replace(ws, started_at_ms=None, finished_at_ms=None, step_ms=())
