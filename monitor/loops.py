"""The one way the daemon repeats work: ``Loops.poll``, and the liveness record every loop keeps through it.

``poll`` runs a tick every interval, drift-free (the time the tick took is subtracted), early when its ``wake`` event
is set, and stops when the daemon's ``stop`` event is set. It applies the one policy for trouble in a tick: temporary
AWS trouble is logged and retried at the next tick, and so is a corrupt item (logged once per item: a restart could
not repair it, and listings leave it out); anything else propagates, so the task's guard brings the daemon down.

Each completed tick is recorded. A loop started with ``stale_after_s`` counts in the health verdict (``/healthz``
and the systemd watchdog ping): unhealthy once it has not completed a tick for that long. No loop can forget to
record its tick, and none can be watched without ticking. Under it is ``repeat``, the one loop that sleeps between
runs; ``tests/test_architecture.py`` checks that every other ``while`` loop in ``monitor/`` that sleeps is a bounded
retry or wait, named there with its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from monitor import errors, logs
from monitor.clock import Clock

log = logs.get("monitor.loops")

Seconds = Callable[[], float]  # read at every use, so a reloaded setting applies at the next tick


async def repeat(clock: Clock, step: Callable[[], Awaitable[float | None]], *, until: asyncio.Event) -> None:
    """Run ``step`` until it returns None; the number it returns is the pause before the next run, which ``until``
    cuts short. The one loop that sleeps: engines use it through ``Loops.poll``, a holding for its heartbeat and its
    fencing timer."""
    while (pause_s := await step()) is not None:
        await clock.sleep(pause_s, until=until)


class Loops:
    def __init__(self, clock: Clock, stop: asyncio.Event) -> None:
        self.clock = clock
        self.stop = stop
        self.started_at = clock.monotonic()
        self.last_success: dict[str, float] = {}  # loop name -> monotonic time of its last good tick
        self._stale_after_s: dict[str, Seconds] = {}  # the loops the health verdict watches
        self._corrupt: set[str] = set()  # keys of the corrupt items a tick met (logged once each)

    async def poll(
        self,
        name: str,
        tick: Callable[[], Awaitable[object]],
        *,
        every_s: Seconds,
        stale_after_s: Seconds | None = None,
        wake: asyncio.Event | None = None,
        first_delay_s: float = 0.0,
    ) -> None:
        """Run ``tick`` every ``every_s()`` seconds until ``stop``; ``wake`` runs it early."""
        if stale_after_s is not None:
            self._stale_after_s[name] = stale_after_s

        async def step() -> float | None:
            if self.stop.is_set():
                return None
            if wake is not None:
                wake.clear()
            started = self.clock.monotonic()
            await self._tick(name, tick)
            return max(every_s() - (self.clock.monotonic() - started), 0)

        if first_delay_s > 0 and await self.clock.sleep(first_delay_s, until=self.stop):
            return
        await repeat(self.clock, step, until=wake or self.stop)

    async def _tick(self, name: str, tick: Callable[[], Awaitable[object]]) -> None:
        try:
            await tick()
            self.last_success[name] = self.clock.monotonic()
        except errors.CorruptItem as exc:  # listings leave corrupt items out; this one was read on its own
            if exc.key not in self._corrupt:
                self._corrupt.add(exc.key)
                log.error("loop tick met a corrupt item; repair or delete it", loop=name, error=str(exc))
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            log.warning("loop tick failed; will retry", loop=name, error=str(exc))

    def watched(self) -> dict[str, float]:
        """Each watched loop's staleness limit, now."""
        return {name: limit() for name, limit in self._stale_after_s.items()}

    def silent_s(self, name: str) -> float:
        """Seconds since ``name`` last completed a tick (or since the daemon started)."""
        return self.clock.monotonic() - self.last_success.get(name, self.started_at)

    def healthy(self) -> tuple[bool, str]:
        """(True, "") when every watched loop has completed a tick recently, else (False, which loop is stuck)."""
        for name, limit_s in self.watched().items():
            silent_s = self.silent_s(name)
            if silent_s > limit_s:
                return False, f"loop {name} has not completed a tick for {silent_s:.0f} s"
        return True, ""

    def wall_times(self) -> dict[str, float]:
        """Loop name -> wall-clock time of its last good tick (for the metrics)."""
        now_mono, now_wall = self.clock.monotonic(), time.time()
        return {name: now_wall - (now_mono - at) for name, at in self.last_success.items()}


@contextlib.contextmanager
def phase(logger: Any, name: str, **kw: Any) -> Iterator[None]:
    """A phase of the daemon's life (the shutdown's), logged with its duration by the module doing it."""
    started = time.monotonic()
    logger.info(name, **kw)
    yield
    logger.info(f"{name}: done", seconds=round(time.monotonic() - started, 3))
