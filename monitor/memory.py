"""An in-memory ``ports.Store`` with the same contract as the DynamoDB one.

It exists so the loops can be tested fast and deterministically; the behavioural suite in
``tests/test_store.py`` runs unchanged against both implementations, which is what keeps them honest. It holds
no lock: on one event loop every method body runs without interleaving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence

from monitor import errors
from monitor.model import Due, Event, Fleet, Priority, State, Stats, Workset, WorksetId
from monitor.states import Decision, gsi_sort_key

_LIST_ORDER = (
    State.READY,
    State.IN_PROGRESS,
    State.RETRYING,
    State.ERROR,
    State.CANCELLED,
    State.COMPLETE,
    State.IGNORED,
)


class MemoryStore:
    def __init__(
        self, *, outbox: Callable[[Event], bool] | None = None, on_pending: Callable[[], None] | None = None
    ) -> None:
        self._worksets: dict[WorksetId, Workset] = {}
        self._events: dict[WorksetId, list[Event]] = {}
        self._outbox = outbox
        self._on_pending = on_pending
        self._claims: dict[str, tuple[str, int]] = {}  # event id -> (owner, until ms): not due before then
        self._retry_seq = 0  # like the fleet counter item's: entries into retrying

    async def register(self, decision: Decision) -> bool:
        ws = decision.after
        if ws.workset_id in self._worksets:
            return False
        self._worksets[ws.workset_id] = ws
        self._events[ws.workset_id] = [self._outboxed(decision.event)]
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
        before = decision.before
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
        entering = decision.after.state is State.IN_PROGRESS and before.state is not State.IN_PROGRESS
        if entering and fleet_cap is not None and (await self.fleet()).running >= fleet_cap:
            raise errors.FleetFull(f"the fleet already runs {fleet_cap} worksets (run.max_fleet_concurrent)")
        # Like the DynamoDB update: only attributes the decision changed are written; counters others own
        # (hb_count, bumped by heartbeats without a version change) keep their current value.
        changed = {
            f.name: getattr(decision.after, f.name)
            for f in dataclasses.fields(Workset)
            if getattr(decision.after, f.name) != getattr(before, f.name)
        }
        after = dataclasses.replace(current, **changed)
        self._worksets[after.workset_id] = after
        self._events[after.workset_id].append(self._outboxed(decision.event))
        self._retry_seq += after.state is State.RETRYING and before.state is not State.RETRYING
        return after

    def _outboxed(self, event: Event) -> Event:
        if not (self._outbox and self._outbox(event)):
            return event
        if self._on_pending is not None:
            self._on_pending()
        return dataclasses.replace(event, pending=True)

    async def pending_events(self, *, limit: int, due_by_ms: int | None = None) -> list[Event]:
        pending = [e for events in self._events.values() for e in events if e.pending]
        due = [(self._claims.get(e.event_id, ("", e.at_ms))[1], e) for e in pending]  # like the index's sort key
        due = [(at, e) for at, e in due if due_by_ms is None or at <= due_by_ms]
        return [e for _, e in sorted(due, key=lambda d: (d[0], d[1].workset_id, d[1].seq))][:limit]

    async def claim_event(self, event: Event, *, owner: str, now_ms: int, hold_ms: int) -> bool:
        current = await self.event(event.workset_id, event.seq)
        holder = self._claims.get(event.event_id)
        if current is None or not current.pending or (holder and holder[0] != owner and holder[1] > now_ms):
            return False
        self._claims[event.event_id] = (owner, now_ms + hold_ms)
        return True

    async def record_delivery(self, event: Event, channel: str, outcome: str) -> None:
        self._replace_event(event, lambda e: dataclasses.replace(e, notified={**e.notified, channel: outcome}))

    async def finish_event(self, event: Event, *, retry_at_ms: int | None = None) -> None:
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
        ws = self._worksets.get(workset_id)
        if ws is None or ws.state is not State.IN_PROGRESS or ws.lease is None or ws.lease.token != token:
            return None
        lease = dataclasses.replace(ws.lease, heartbeat_at_ms=now_ms, expires_at_ms=expires_at_ms)
        self._worksets[workset_id] = dataclasses.replace(ws, lease=lease, hb_count=ws.hb_count + 1, current_step=step)
        return ws.hb_count + 1

    async def event(self, workset_id: WorksetId, seq: int) -> Event | None:
        return next((e for e in self._events.get(workset_id, []) if e.seq == seq), None)

    async def due(self, *, now_ms: int, limit: int, retrying: bool = True) -> Due:
        claimable = (State.READY, State.RETRYING) if retrying else (State.READY,)
        due = [ws for ws in self._worksets.values() if ws.state in claimable and ws.available_at_ms <= now_ms]
        if not retrying:
            return Due(sorted(due, key=gsi_sort_key)[:limit])
        waiting = [
            ws.available_at_ms
            for ws in self._worksets.values()
            if ws.state is State.RETRYING and ws.available_at_ms > now_ms
        ]
        return Due(
            sorted(due, key=gsi_sort_key)[:limit],
            retrying_read=True,
            next_retry_ms=min(waiting, default=None),
            next_retry_known=True,
        )

    async def running(self) -> list[Workset]:
        return await self.list(state=State.IN_PROGRESS)

    async def fleet(self) -> Fleet:
        return Fleet(
            running=sum(ws.state is State.IN_PROGRESS for ws in self._worksets.values()), retry_seq=self._retry_seq
        )

    async def locations(self, workset_ids: Sequence[WorksetId] | None = None) -> dict[WorksetId, str]:
        wanted = self._worksets.keys() if workset_ids is None else set(workset_ids) & self._worksets.keys()
        return {i: f"{self._worksets[i].bucket}/{self._worksets[i].prefix}" for i in wanted}

    async def history(self, workset_id: WorksetId) -> list[Event]:
        return list(self._events.get(workset_id, []))

    async def list(
        self, *, state: State | None = None, priority: Priority | None = None, limit: int | None = None
    ) -> list[Workset]:
        out: list[Workset] = []
        for wanted in (state,) if state else _LIST_ORDER:
            matching = [
                ws
                for ws in self._worksets.values()
                if ws.state is wanted and (priority is None or ws.priority is priority)
            ]
            out += sorted(matching, key=gsi_sort_key)
        return out[:limit] if limit is not None else out

    async def stats(self, *, now_ms: int, states: Collection[State] | None = None) -> Stats:
        wanted = set(State if states is None else states)
        counts = {s: dict.fromkeys(Priority, 0) for s in State if s in wanted}
        chosen = [ws for ws in self._worksets.values() if ws.state in wanted]
        for ws in chosen:
            counts[ws.state][ws.priority] += 1
        ready = [ws.available_at_ms for ws in chosen if ws.state is State.READY]
        age = max(now_ms - min(ready), 0) / 1000 if ready else None
        stalest: dict[State, int] = {}
        for ws in chosen:
            stalest[ws.state] = min(stalest.get(ws.state, ws.updated_at_ms), ws.updated_at_ms)
        ages = {state: max(now_ms - at, 0) / 1000 for state, at in stalest.items()}
        return Stats(counts=counts, oldest_ready_age_s=age, oldest_change_age_s=ages)
