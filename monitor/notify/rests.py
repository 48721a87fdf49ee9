"""Which notification channels rest: one that failed for now is not tried for ``hold_s``; then one event probes it;
success ends the rest, failure doubles it (up to ``REST_MAX_S``). And how long an event owed only to resting channels
is parked (``parked_for_ms``)."""

from __future__ import annotations

import dataclasses
import zlib

from monitor import logs
from monitor.clock import Clock
from monitor.model import Event

log = logs.get("monitor.notify")

REST_MAX_S = 900.0  # the longest a failing channel rests between probes (a rest doubles from hold_s up to this)


@dataclasses.dataclass
class _Rest:
    """A channel that failed for now: not tried before ``until`` (monotonic), then probed by one event."""

    until: float
    seconds: float


class Rests:
    def __init__(self, clock: Clock, *, hold_s: float) -> None:
        self._clock = clock
        self._hold_ms = round(hold_s * 1000)
        self._rests: dict[str, _Rest] = {}  # the channels that failed for now
        self._probing: set[str] = set()  # resting channels one event is trying again right now

    def turn(self, channel: str) -> str:
        """What this event does with ``channel``: "send" (healthy); "wait" (it is resting, or another event is
        trying it right now); or "probe" (it rested long enough: this event tries it)."""
        if self.resting(channel):
            return "wait"
        if channel not in self._rests:
            return "send"
        self._probing.add(channel)
        return "probe"

    def resting(self, channel: str) -> bool:
        rest = self._rests.get(channel)
        return channel in self._probing or (rest is not None and self._clock.monotonic() < rest.until)

    def probed(self, channel: str) -> None:
        """A probe (or send) of ``channel`` ended, whatever its outcome."""
        self._probing.discard(channel)

    def back(self, channel: str) -> bool:
        """``channel`` delivered: its rest, if any, ends; True if it was resting."""
        return self._rests.pop(channel, None) is not None

    def rest(self, channel: str) -> None:
        """``channel`` failed for now: it rests for ``hold_s``, or twice its last rest when that had ended (a probe,
        or a send begun before the rest, failed again), up to REST_MAX_S."""
        now, rest = self._clock.monotonic(), self._rests.get(channel)
        if rest is not None and now < rest.until:
            return  # another send that was under way when it began resting
        seconds = self._hold_ms / 1000 if rest is None else min(rest.seconds * 2, max(REST_MAX_S, self._hold_ms / 1000))
        self._rests[channel] = _Rest(until=now + seconds, seconds=seconds)
        log.warning("notification channel resting", channel=channel, seconds=seconds)

    def parked_for_ms(self, event: Event, owed: list[str]) -> int | None:
        """None while ``event`` has a channel to send to now. When every channel it still waits for is resting: how
        long to park it, until the earliest of those rests ends plus half to all of the event's age (at least the
        rest's length, at most REST_MAX_S), the fraction fixed by the event's id. So an event waiting for a channel
        that stays down is looked at again after 1.5 to 2 times its age: a handful of claims an hour, whichever
        daemon holds which rest, and a backlog comes due spread out rather than in a wave in front of newer events.
        Never less than ``hold_s`` (a probe under way ends within that). Only an event with nothing to send is
        parked: a daemon that dies holding a long claim must not delay a send it had not made. Wall time (the
        event's ``at_ms``) only schedules here; it decides nothing about safety."""
        if not owed or not all(self.resting(name) for name in owed):
            return None
        now = self._clock.monotonic()
        default = _Rest(now, self._hold_ms / 1000)  # a channel being probed right now, its rest ended
        rest = min((self._rests.get(name) or default for name in owed), key=lambda r: r.until)
        age_s = max(self._clock.now_ms() - event.at_ms, 0) / 1000
        spread_s = min(max(rest.seconds, age_s), REST_MAX_S) * (0.5 + zlib.crc32(event.event_id.encode()) % 500 / 1000)
        return max(round((rest.until - now + spread_s) * 1000), self._hold_ms)
