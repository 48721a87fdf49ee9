"""The running configuration as one swappable reference.

A reload builds a new ``Settings`` and swaps it in here whole; engines never have their fields changed underneath
them. They read what they need through a getter at every use (``Live.derive``), so a reloaded value applies at their
next tick. Objects that also run with fixed values (tests, ``register``, the benchmarks) take either the value or a
getter (``reader``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from monitor.config import Settings

T = TypeVar("T")


def reader(value: T | Callable[[], T]) -> Callable[[], T]:
    """A getter for ``value``: itself if it is one, else a getter of the fixed value."""
    if callable(value):
        return value
    return lambda: value


class Live:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def swap(self, settings: Settings) -> None:
        self.settings = settings

    def derive(self, make: Callable[[Settings], T]) -> Callable[[], T]:
        """A getter of ``make(settings)``, computed again only after a swap."""
        last: list[tuple[Settings, T]] = []

        def get() -> T:
            settings = self.settings
            if not last or last[0][0] is not settings:
                last[:] = [(settings, make(settings))]
            return last[0][1]

        return get
