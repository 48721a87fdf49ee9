"""Time as a dependency.

Safety decisions (lease takeover, self-fencing) use ``monotonic()``; wall time (``now_ms()``) is only ever stored
for humans and for ordering due work. Tests pass a ``FakeClock`` and move it by hand, so no test sleeps to make
time pass.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO-8601 UTC timestamp to the second (``2026-11-26T05:00:00Z``)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in integer milliseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...

    async def sleep(self, seconds: float, *, until: asyncio.Event | None = None) -> bool:
        """Sleep ``seconds``, or less if ``until`` gets set; True when woken by ``until``."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, *, until: asyncio.Event | None = None) -> bool:
        if until is None:
            await asyncio.sleep(max(seconds, 0))
            return False
        try:
            await asyncio.wait_for(until.wait(), timeout=max(seconds, 0))
        except TimeoutError:
            return False
        return True


class _Time:
    def __init__(self, start_ms: int) -> None:
        self.now_ms = start_ms
        self.mono = 1000.0


class FakeClock:
    """A clock that moves only when told to; wall and monotonic time advance together.

    ``sleep`` advances the clock by the time asked for and yields once, so loops run at full speed in tests while
    seeing the time pass. ``skewed()`` gives a view of the same time whose wall clock is off (a host with a wrong
    clock), for tests that show wall time never decides safety.
    """

    def __init__(self, *, start_ms: int = 1_800_000_000_000, _time: _Time | None = None, skew_ms: int = 0) -> None:
        self._time = _time or _Time(start_ms)
        self.skew_ms = skew_ms

    def skewed(self, skew_ms: int) -> FakeClock:
        """A clock sharing this one's time, with its wall clock ``skew_ms`` off."""
        return FakeClock(_time=self._time, skew_ms=skew_ms)

    def now_ms(self) -> int:
        return self._time.now_ms + self.skew_ms

    def monotonic(self) -> float:
        return self._time.mono

    async def sleep(self, seconds: float, *, until: asyncio.Event | None = None) -> bool:
        if until is not None and until.is_set():
            return True
        self.advance(max(seconds, 0))
        await asyncio.sleep(0)
        return until is not None and until.is_set()

    def advance(self, seconds: float) -> None:
        self._time.now_ms += round(seconds * 1000)
        self._time.mono += seconds
