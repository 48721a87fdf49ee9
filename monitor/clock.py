"""Time as a dependency.

Safety decisions (lease takeover, self-fencing) use ``monotonic()``; wall time (``now_ms()``) is only ever stored
for humans and for ordering due work. Tests pass a ``FakeClock`` and move it by hand, so no test sleeps to make
time pass.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in integer milliseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to; wall and monotonic time advance together."""

    def __init__(self, *, start_ms: int = 1_800_000_000_000) -> None:
        self._now_ms = start_ms
        self._mono = 1000.0

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now_ms += round(seconds * 1000)
        self._mono += seconds
