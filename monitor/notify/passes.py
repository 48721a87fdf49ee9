"""The due order of one delivery pass (``Pass``): the events committed here first, the outbox's due ones read a
batch at a time, an event left unclaimed by a dead committer before both."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from enum import StrEnum

from monitor.clock import Clock
from monitor.model import Event
from monitor.notify.doorbell import FRESH_KEPT, Doorbell
from monitor.ports import Store


class Handled(StrEnum):
    """What one delivery did with its event."""

    DONE = "done"  # every channel has an outcome: out of the outbox
    LATER = "later"  # due again later (a channel failed for now or rests, the claim ran out, a table error)
    BUSY = "busy"  # another daemon holds its claim


@dataclasses.dataclass
class Reads:
    at: float = float("-inf")  # when the outbox was last read (monotonic)


class Pass:
    """The events of one delivery pass, from two sources: those committed here (the doorbell's), and the due ones read
    from the outbox ``batch`` at a time, each daemon starting at a different place in a batch (daemons reading one
    batch start apart). The doorbell's go first (the committer has them in hand; others would only race it for
    their claims), except when the batch holds an event still unclaimed twice ``read_every_s`` after its commit,
    before the doorbell's next: its committer died right after the commit, or the commit's answer was lost and no
    doorbell rang. That one is due in the outbox only, and must not wait behind a stream of newer events committed
    here (seen: 8-19 s behind three busy daemons); it goes first, unless all it waits for is resting here (a parked
    event come due, which would only be parked again). The commit times come from different hosts' clocks: a
    skewed one only shifts that order.

    The outbox is read when the batch is used up and the doorbell has nothing (a pass that began with no event of
    ours: the poll; or rung without an event), and, while the doorbell keeps this daemon busy, afresh once
    ``read_every_s`` has passed since the last read (None: never; a pass without a budget drains the doorbell
    first): a busy daemon too sees the outbox every interval. Each event is
    started at most once per pass; a batch every event of which another daemon had claimed ends the reading (that
    daemon is on them)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        doorbell: Doorbell,
        *,
        batch: int,
        start: int,
        recent: collections.OrderedDict[str, None],
        reads: Reads,
        read_every_s: float | None,
        sendable: Callable[[Event], bool],
    ) -> None:
        self._store, self._clock, self._doorbell = store, clock, doorbell
        self._recent = recent  # the events the latest passes started (the doorbell's copy of one may be stale)
        self._batch, self._start = batch, start
        self._reads, self._read_every_s = reads, read_every_s
        self._sendable = sendable  # whether an event has a channel to go to now (else it would only be parked)
        self._queue: collections.deque[Event] = collections.deque()
        self._tried: set[str] = set()
        self._unanswered: set[str] = set()  # the latest batch's events, until one of them was not another's
        self._more = True  # the outbox may hold due events this pass has not read

    async def next(self) -> Event | None:
        """The next event to start, or None when there is none for now."""
        bell = self._doorbell
        if bell.rung.is_set():
            bell.rung.clear()
            if not bell.fresh:  # rung without its event: read again, in due order
                self._queue.clear()
                self._more = True
        if self._fresh() is None:
            if not self._queue and self._more:
                await self._read()
        elif self._reads_due():  # busy with our own: a fresh look, for events left unclaimed
            self._queue.clear()
            await self._read()
        fresh, queued = self._fresh(), self._queued()
        if fresh is None:
            return None if queued is None else self._take(self._queue.popleft())
        if (overdue := self._overdue(fresh)) is not None:
            self._queue.remove(overdue)
            return self._take(overdue)
        return self._take(bell.fresh.popleft())

    def _fresh(self) -> Event | None:
        """The next event committed here, dropping those a pass has started already (one read from the outbox
        meanwhile, or the doorbell's stale copy of one started before)."""
        fresh = self._doorbell.fresh
        while fresh and (fresh[0].event_id in self._tried or fresh[0].event_id in self._recent):
            fresh.popleft()
        return fresh[0] if fresh else None

    def _queued(self) -> Event | None:
        """The next event read from the outbox, dropping those taken from the doorbell meanwhile."""
        while self._queue and self._queue[0].event_id in self._tried:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    def _overdue(self, fresh: Event) -> Event | None:
        """The batch's first event committed before ``fresh``, left unclaimed for two read intervals, with a channel
        to go to now (one owed only to resting channels, e.g. a parked one come due, would only be parked again: it
        waits for the doorbell's)."""
        left_ms = self._clock.now_ms() - round(2 * (self._read_every_s or 0) * 1000)
        return next(
            (
                e
                for e in self._queue
                if e.event_id not in self._tried and e.at_ms < min(fresh.at_ms, left_ms) and self._sendable(e)
            ),
            None,
        )

    def _reads_due(self) -> bool:
        """Whether a pass kept busy by the doorbell should look at the outbox afresh (never without a budget: such a
        pass runs until the doorbell is empty, then reads)."""
        every = self._read_every_s
        return every is not None and self._clock.monotonic() - self._reads.at >= every

    def ended(self, event_id: str, outcome: Handled) -> None:
        if outcome is not Handled.BUSY:
            self._unanswered.clear()
            return
        self._unanswered.discard(event_id)
        if not self._unanswered and not self._queue:
            self._more = False

    async def _read(self) -> None:
        self._reads.at = self._clock.monotonic()
        batch = await self._store.pending_events(limit=self._batch, due_by_ms=self._clock.now_ms())
        ours = {event.event_id for event in self._doorbell.fresh}  # they come from the doorbell
        new = [event for event in batch if event.event_id not in self._tried and event.event_id not in ours]
        first = self._start % len(new) if new else 0
        self._queue.extend(new[first:] + new[:first])
        self._unanswered = {event.event_id for event in new}
        self._more = len(batch) >= self._batch and bool(new)

    def _take(self, event: Event) -> Event:
        self._tried.add(event.event_id)
        self._recent[event.event_id] = None
        if len(self._recent) > FRESH_KEPT:
            self._recent.popitem(last=False)
        return event
