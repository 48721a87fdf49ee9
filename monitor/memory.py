"""An in-memory ``ports.Store`` with the same contract as the DynamoDB one.

It exists so the loops can be tested fast and deterministically; the behavioural suite in
``tests/test_store.py`` runs unchanged against both implementations, which is what keeps them honest. It holds
no lock: on one event loop every method body runs without interleaving.
"""

from __future__ import annotations

import dataclasses

from monitor import errors
from monitor.model import Event, Priority, State, Stats, Workset, WorksetId
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
    def __init__(self) -> None:
        self._worksets: dict[WorksetId, Workset] = {}
        self._events: dict[WorksetId, list[Event]] = {}

    async def register(self, decision: Decision) -> bool:
        ws = decision.after
        if ws.workset_id in self._worksets:
            return False
        self._worksets[ws.workset_id] = ws
        self._events[ws.workset_id] = [decision.event]
        return True

    async def get(self, workset_id: WorksetId) -> Workset | None:
        return self._worksets.get(workset_id)

    async def commit(self, decision: Decision, *, fence_token: str | None = None) -> Workset:
        before = decision.before
        current = self._worksets.get(before.workset_id)
        if current is None:
            raise errors.Conflict(f"{before.workset_id} does not exist or changed concurrently")
        if fence_token is not None and (current.lease is None or current.lease.token != fence_token):
            raise errors.LeaseLost(
                f"{before.workset_id}: our lease is gone (now {current.state.value}, epoch {current.epoch})"
            )
        if current.state is not before.state or current.version != before.version:
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
        self._events[after.workset_id].append(decision.event)
        return after

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

    async def stats(self, *, now_ms: int) -> Stats:
        counts = {s: dict.fromkeys(Priority, 0) for s in State}
        for ws in self._worksets.values():
            counts[ws.state][ws.priority] += 1
        ready = [ws.available_at_ms for ws in self._worksets.values() if ws.state is State.READY]
        age = max(now_ms - min(ready), 0) / 1000 if ready else None
        return Stats(counts=counts, oldest_ready_age_s=age)
