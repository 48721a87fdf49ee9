"""What the store and the outbox share, made before either: the channels' shape, and the doorbell."""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from monitor.model import Event, Workset

FRESH_KEPT = 1000  # events committed here and kept for the outbox's fast path (the rest it reads from the table)


class Channel(Protocol):
    name: str

    async def send(self, event: Event, ws: Workset | None) -> str:
        """Deliver; returns "sent" (or "skipped" when the channel decides the event is not for it). ``ws`` is the
        workset as of the event's commit or later: show only where it is (``s3_uri``), which never changes."""
        ...


class Doorbell:
    """What the store needs from the outbox, made before either: a bell the store rings after committing a pending
    event (``states.decide`` chose it), with the event and its workset: the outbox loop wakes at once instead of at
    its next poll, and delivers the events committed here first, reading back neither them nor their workset (other
    daemons see them only once they are due again)."""

    def __init__(self) -> None:
        self.rung = asyncio.Event()
        self.fresh: collections.deque[Event] = collections.deque(maxlen=FRESH_KEPT)  # committed here, not yet taken
        # the latest worksets met, for what channels show of them: where they are, which never changes
        self.worksets: collections.OrderedDict[str, Workset] = collections.OrderedDict()

    def ring(self, event: Event | None = None, ws: Workset | None = None) -> None:
        if event is not None:
            self.fresh.append(event)
        if ws is not None:
            self.remember(ws)
        self.rung.set()

    def remember(self, ws: Workset) -> None:
        self.worksets[ws.workset_id] = ws
        self.worksets.move_to_end(ws.workset_id)
        if len(self.worksets) > FRESH_KEPT:
            self.worksets.popitem(last=False)
