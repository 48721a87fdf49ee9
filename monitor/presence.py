"""The ``presence`` engine: this daemon's presence item (``workset-monitor fleet``), rewritten every
``run.presence_interval_s`` and removed at a clean stop.

Cost: one ``PutItem`` per interval (a few hundred bytes: one write unit), no read on the idle path. Stale items (a
daemon that died without stopping: silent for a day) are deleted by any daemon: it lists the presence partition at
its first tick and every ``CLEAN_EVERY_S`` after (one Query; DynamoDB's TTL on ``expires_at`` does the same where
the table has TTL enabled).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable

from monitor import __version__, errors, logs
from monitor.clock import Clock
from monitor.config import Settings
from monitor.loops import Loops
from monitor.model import Held, Presence
from monitor.ports import Store

log = logs.get("monitor.presence")

STALE_AFTER_S = 86_400.0  # a presence item silent this long belongs to a daemon that is gone
CLEAN_EVERY_S = 6 * 3600.0


def config_digest(settings: Settings) -> str:
    """A short digest of the configuration (secrets redacted): daemons that differ show it in `fleet`."""
    text = json.dumps(settings.redacted(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class PresenceWriter:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        interval_s: Callable[[], float],
        digest: Callable[[], str],
        held: Callable[[], tuple[Held, ...]],
        ticks: Callable[[], dict[str, float]],
    ) -> None:
        self._store, self._clock, self.owner = store, clock, owner
        self._interval_s, self._digest, self._held, self._ticks = interval_s, digest, held, ticks
        self.started_at_ms = clock.now_ms()
        self._seq = 0
        self._cleaned_at: float | None = None  # monotonic time of the last look for stale items
        self.removed: list[str] = []  # stale owners this daemon deleted (tests, logs)
        self.failing = False  # the last write failed (logged once until one succeeds)

    def snapshot(self) -> Presence:
        self._seq += 1
        return Presence(
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            started_at_ms=self.started_at_ms,
            written_at_ms=self._clock.now_ms(),
            interval_s=self._interval_s(),
            config_digest=self._digest(),
            held=self._held(),
            ticks=tuple(sorted((name, round(at * 1000)) for name, at in self._ticks().items())),
            seq=self._seq,
        )

    async def tick(self) -> None:
        """Write the item (and now and then clean up). A failure is logged and tried again next interval, whatever
        it is (a policy without the permission, say): presence is for people, it never stops the daemon's work."""
        try:
            await self._store.put_presence(self.snapshot())
            now = self._clock.monotonic()
            if self._cleaned_at is None or now - self._cleaned_at >= CLEAN_EVERY_S:
                self._cleaned_at = now
                await self._clean()
        except errors.MonitorError as exc:
            if not self.failing:
                log.warning("could not write this daemon's presence item; `fleet` shows it as silent", error=str(exc))
            self.failing = True
        else:
            if self.failing:
                log.info("presence item written again")
            self.failing = False

    async def _clean(self) -> None:
        """Delete the presence items silent for a day (judged by our clock against the writer's: a day is far more
        than any clock skew we tolerate)."""
        now_ms = self._clock.now_ms()
        for presence in await self._store.presences():
            if presence.owner != self.owner and now_ms - presence.written_at_ms > STALE_AFTER_S * 1000:
                await self._store.delete_presence(presence.owner)
                self.removed.append(presence.owner)
                log.info("removed a stale presence item", owner=presence.owner, host=presence.host)

    async def run(self, loops: Loops) -> None:
        """Not a watched loop: a daemon whose presence cannot be written is still healthy at its work."""
        await loops.poll("presence", self.tick, every_s=self._interval_s)

    async def remove(self) -> None:
        """At a clean stop: `fleet` no longer lists us. Best effort (an item left behind shows as silent)."""
        try:
            await self._store.delete_presence(self.owner)
        except errors.MonitorError as exc:
            log.warning("could not remove this daemon's presence item", error=str(exc))
