"""Virtual time for a whole daemon: hours of a supervisor's life in a fraction of a second.

``FakeClock`` moves time forward whenever anyone sleeps, which is right for one loop and wrong for several: one
loop's hour-long sleep would age every other loop by an hour. ``VirtualClock`` keeps real sleeps: ``sleep`` waits
until virtual time reaches its deadline, and ``run_for`` moves time from one deadline to the next, only once every
task has run as far as it can. It needs code that never waits for real time or threads while time stands still
(``MemoryStore``, in-memory sources and channels).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

_SETTLE_YIELDS = 50  # event-loop turns that let every woken task run until it waits again


class VirtualClock:
    def __init__(self, *, start_ms: int = 1_800_000_000_000) -> None:
        self._start_ms = start_ms
        self._mono = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_ms(self) -> int:
        return self._start_ms + round((self._mono - 1000.0) * 1000)

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float, *, until: asyncio.Event | None = None) -> bool:
        if until is not None and until.is_set():
            return True
        wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(seconds, 0), next(self._order), wakeup))
        if until is None:
            await wakeup
            return False
        flag = asyncio.ensure_future(until.wait())
        try:
            await asyncio.wait({wakeup, flag}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            flag.cancel()
            wakeup.cancel()
        return until.is_set()

    async def settle(self) -> None:
        for _ in range(_SETTLE_YIELDS):
            await asyncio.sleep(0)

    async def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, waking every sleeper whose deadline comes, in order."""
        end = self._mono + seconds
        while True:
            await self.settle()
            while self._sleepers and self._sleepers[0][2].done():  # cancelled or woken by their event
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > end:
                self._mono = end
                await self.settle()
                return
            self._mono = max(self._mono, self._sleepers[0][0])
            while self._sleepers and self._sleepers[0][0] <= self._mono:
                _, _, wakeup = heapq.heappop(self._sleepers)
                if not wakeup.done():
                    wakeup.set_result(None)
