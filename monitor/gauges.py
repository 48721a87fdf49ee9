"""The queue gauges: depth and ages from the table, on their own interval, so a scrape never queries the table.

Counting reads every index entry of a state, so the states that only grow (complete, ignored, cancelled: nearly
all of a busy table) are counted every ``finished_refresh_s``, the rest every ``queue_refresh_s``. The latest
refresh also answers readiness (``/readyz``: the table has answered lately) and feeds CloudWatch when configured.

It is also the check on the fleet counter: when the index counts worksets in progress that the counter (as the
sweeper last read it) says do not exist, the sweeper is told to look regardless.

The queue is the fleet's, so only the holder of the chores role (``roles``) counts it and exports the gauges; every
other daemon exports none (a ``sum`` across instances counts each workset once), and a daemon that loses the role
drops its gauges at its next refresh. Readiness on a daemon without the role comes from its reads of the fleet's
control items: the table has answered either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from monitor.clock import Clock
from monitor.live import Live
from monitor.loops import Loops
from monitor.metrics import Metrics, Publisher
from monitor.model import FINISHED_STATES, State, Stats
from monitor.ports import Store
from monitor.sweeper import Sweeper


class Gauges:
    def __init__(self, store: Store, clock: Clock, *, metrics: Metrics, live: Live, sweeper: Sweeper) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._live = live
        self._sweeper = sweeper
        self.latest: Stats | None = None  # the last refresh
        self._latest_at: float | None = None  # monotonic time of it
        self._finished_at: float | None = None  # ... and of the last one that counted FINISHED_STATES too

    async def run(self, loops: Loops) -> None:
        refresh_s = self._refresh_s
        await loops.poll("gauges", self.refresh, every_s=refresh_s, stale_after_s=lambda: 3 * refresh_s() + 60)

    def _refresh_s(self) -> float:
        return self._live.settings.metrics.queue_refresh_s

    async def refresh(self) -> None:
        chores = self._sweeper.chores
        fleet = self._sweeper.fleet
        if fleet is not None:
            self._metrics.intake_paused.set(1 if fleet.paused is not None else 0)
        if chores is not None and not chores.held():
            if self.latest is not None:  # no longer ours to count: export nothing rather than a stale queue
                self._metrics.forget_queue()
                self.latest, self._finished_at = None, None
            return
        now = self._clock.monotonic()
        previous = self.latest
        finished_s = self._live.settings.metrics.finished_refresh_s
        everything = self._finished_at is None or now - self._finished_at >= finished_s
        active = [s for s in State if s not in FINISHED_STATES]
        stats = await self._store.stats(now_ms=self._clock.now_ms(), states=None if everything else active)
        if everything:
            self._finished_at = now
        else:
            assert previous is not None  # set together with _finished_at
            stats = Stats(
                counts={s: previous.counts.get(s, {}) for s in FINISHED_STATES} | stats.counts,
                oldest_ready_age_s=stats.oldest_ready_age_s,
                oldest_change_age_s={s: a for s, a in previous.oldest_change_age_s.items() if s in FINISHED_STATES}
                | stats.oldest_change_age_s,
            )
        self._metrics.queue(stats, oldest_age_s=stats.oldest_change_age_s, now_s=time.time())
        self.latest, self._latest_at = stats, self._clock.monotonic()
        if fleet is not None and fleet.running <= 0 and stats.count(State.IN_PROGRESS) > 0:
            self._sweeper.distrust_counter()  # the index says otherwise: let the sweeper look (it logs if so)

    def ready(self) -> tuple[bool, str]:
        """(True, "") once the table has answered a queue refresh, or a read of the fleet's control items,
        recently."""
        answers = [at for at in (self._latest_at, self._sweeper.answered_at) if at is not None]
        if not answers:
            return False, "the table has not answered yet"
        silent_s = self._clock.monotonic() - max(answers)
        if silent_s > 3 * max(self._refresh_s(), self._live.settings.lease.sweep_interval_s) + 30:
            return False, f"the table has not answered for {silent_s:.0f} s"
        return True, ""

    async def publish_forever(
        self,
        loops: Loops,
        publisher: Publisher,
        *,
        interval_s: float,
        counters: Callable[[], Mapping[str, Mapping[tuple[str, ...], float]]],
    ) -> None:
        """The CloudWatch engine: the latest refresh and the daemon's counters, every ``interval_s``."""
        await loops.poll("cloudwatch", lambda: publisher.publish(self.latest, counters()), every_s=lambda: interval_s)
