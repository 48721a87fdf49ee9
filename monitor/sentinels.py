"""Dual-write of legacy sentinels: with ``scan.write_sentinels = true`` every change also rewrites the workset's
``daylily.*`` files, so legacy reports keep working and a rollback to the legacy monitor finds every folder in the
state the table says (see ``legacy.mirror``).

A store decorator: the table is written first and stays the truth. Sentinel writes are best effort (three tries
with backoff on temporary errors, then a logged error); they never fail or delay a transition beyond that. Only
worksets in the configured bucket are mirrored.
"""

from __future__ import annotations

from typing import Any

import tenacity

from monitor import errors, legacy, logs
from monitor.model import Event, Workset
from monitor.ports import Source, Store
from monitor.states import Decision

log = logs.get("monitor.sentinels")


class SentinelMirror:
    def __init__(self, store: Store, source: Source) -> None:
        self._store = store
        self._source = source
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def register(self, decision: Decision) -> bool:
        created = await self._store.register(decision)
        if created and decision.after.state.terminal:
            await self.mirror(decision.after, decision.event)
        return created

    async def commit(self, decision: Decision, **kwargs: Any) -> Workset:
        after = await self._store.commit(decision, **kwargs)
        if after.state is not decision.before.state:
            await self.mirror(after, decision.event)
        return after

    async def mirror(self, ws: Workset, event: Event) -> None:
        if ws.bucket != self._source.bucket:
            return
        plan = legacy.mirror(ws.state, now_ms=event.at_ms, reason=ws.last_error or event.reason)
        try:
            for name, body in plan.write.items():
                await _retrying(self._source.write, ws.prefix + name, body)
            for name in plan.remove:
                await _retrying(self._source.delete, ws.prefix + name)
        except errors.MonitorError as exc:
            self.failures += 1
            log.error(
                "could not write legacy sentinels", workset_id=ws.workset_id, state=ws.state.value, error=str(exc)
            )


async def _retrying(fn: Any, *args: Any) -> None:
    async for attempt in tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(max=2),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, errors.MonitorError) and e.temporary),
        reraise=True,
    ):
        with attempt:
            await fn(*args)
