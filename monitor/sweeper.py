"""The sweeper: finds worksets whose holder died and hands them back for a retry, without trusting any clock.

Every daemon runs one, and each makes the one read of the fleet's control items per sweep interval (the counter and
the chores role, ``roles``); only the holder of the chores role goes on to sweep. No leader is needed for safety
(every takeover is a conditional write): the role only spares D-1 daemons the same work. Each sweep reads every
``in_progress`` workset consistently and
remembers, per workset, the pair (lease token, heartbeat count) with the local monotonic time it first saw that
pair. A live holder changes the pair at every heartbeat. Only when the same pair has been seen for a full lease plus
grace does the sweeper take over, with a write conditioned on exactly that pair: ``retrying`` (with backoff) or
``error`` once attempts are exhausted, and a ``lease_expired`` event. If the holder heartbeats at the last moment,
exactly one of the two writes wins.

Wall-clock fields (``heartbeat_at_ms``, ``lease_expires_at_ms``) are never read here: a holder whose clock is an hour
off changes nothing. Memory is bounded: only worksets still in progress are remembered, at most ``max_tracked``.

Cost: each sweep first reads the fleet counter (one consistent ``GetItem``); only when it says something is in
progress somewhere does the sweep query the index and read those worksets. An idle fleet costs one read per sweep,
and the read doubles as the claimer's news of new retrying worksets. While a workset is being watched, the next sweep
is timed for the moment it may be taken over, so a dead holder's work comes back within one sweep interval plus a
lease (plus grace) of its last heartbeat.

The counter is kept in the same transactions as the state changes, so it is exact; should it ever say 0 while
worksets are in progress (a hand-edited table, a bug), skipping the query would strand them for good. The queue-gauge
refresh counts ``in_progress`` from the index anyway; when it disagrees, ``distrust_counter`` makes the sweeps query
regardless until one finds nothing in progress.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from monitor import errors, logs, states
from monitor.clock import Clock
from monitor.leases import Policy
from monitor.live import reader
from monitor.loops import Loops, Seconds
from monitor.model import Fleet, WorksetId
from monitor.ports import Store
from monitor.recorder import Recorder, Tally
from monitor.roles import Chores
from monitor.states import Action, Decision

log = logs.get("monitor.sweeper")


class SweepNews(Protocol):
    """Who hears what each sweep learnt (the intake: it claims, and it owns the claims of unknown outcome)."""

    async def before_sweep(self) -> bool:
        """Work due before each sweep; True if it freed something to claim."""
        ...

    def swept(self, taken: list[Decision], given_back: bool) -> None: ...


async def sweep_tick(sweeper: Sweeper, news: SweepNews) -> None:
    """One sweep as the daemon makes it, and its news told."""
    given_back = await news.before_sweep()
    taken = await sweeper.sweep_once()
    news.swept(taken, given_back)


async def sweep_forever(sweeper: Sweeper, loops: Loops, *, interval_s: Seconds, news: SweepNews) -> None:
    """The sweeper engine: a sweep every ``interval_s()`` (sooner when a watched lease may be taken over), from a
    random phase so a fleet started together does not sweep in lockstep."""

    await loops.poll(
        "sweeper",
        lambda: sweep_tick(sweeper, news),
        every_s=lambda: sweeper.next_interval_s(interval_s()),
        stale_after_s=lambda: 3 * interval_s() + 60,
        # With the chores role, the first look is at once (a fleet without a holder gets one) and only the holder
        # sweeps, so there is no lockstep to avoid.
        first_delay_s=0.0 if sweeper.chores is not None else sweeper.first_delay_s(interval_s()),
    )


@dataclass(frozen=True, slots=True)
class _Seen:
    token: str | None
    hb_count: int
    since: float  # monotonic


class Sweeper:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        actor: str,
        policy: Policy | Callable[[], Policy],
        max_tracked: int = 100_000,
        rng: random.Random | None = None,
        recorder: Recorder | None = None,
        chores: Chores | None = None,
    ) -> None:
        """``chores``: sweep only while holding the chores role (the daemon); None sweeps always (tests, tools)."""
        self._store = store
        self.chores = chores
        self._clock = clock
        self._actor = actor
        self._policy_now = reader(policy)  # a getter is read at every sweep
        self._max_tracked = max_tracked
        self._rng = rng or random.Random()
        self._seen: dict[WorksetId, _Seen] = {}
        self._record = recorder or Tally()
        self.fleet: Fleet | None = None  # the latest read of the fleet counter
        self._started = 0.0  # monotonic start of the latest sweep
        self._distrust = False  # the counter said 0 while worksets were in progress: query regardless
        self.answered_at: float | None = None  # monotonic time of the latest read of the fleet's control items

    @property
    def _policy(self) -> Policy:
        return self._policy_now()

    @property
    def tracked(self) -> int:
        return len(self._seen)

    async def sweep_once(self) -> list[Decision]:
        """One pass: observe every in-progress workset, take over those silent for a lease plus grace."""
        self._started = self._clock.monotonic()
        self.fleet = await self._store.fleet()
        self.answered_at = self._clock.monotonic()
        if self.chores is not None:
            await self.chores.look(self.fleet)
            if not self.chores.held():  # another daemon sweeps
                self._seen = {}
                return []
        if self.fleet.running <= 0 and not self._distrust:  # nothing is in progress anywhere: nothing can be stale
            self._seen = {}
            return []
        running = await self._store.running()
        counter_wrong = bool(running) and self.fleet.running <= 0
        if counter_wrong:
            log.warning(
                "the fleet counter says nothing is in progress, but some worksets are; sweeping them anyway",
                in_progress=len(running),
            )
        self._distrust = counter_wrong
        now = self._clock.monotonic()
        seen: dict[WorksetId, _Seen] = {}
        taken: list[Decision] = []
        for ws in running:
            token = ws.lease.token if ws.lease else None
            previous = self._seen.get(ws.workset_id)
            if previous is None or (previous.token, previous.hb_count) != (token, ws.hb_count):
                previous = _Seen(token=token, hb_count=ws.hb_count, since=now)
            silent_s = now - previous.since
            if silent_s < self._policy.takeover_after_s:
                seen[ws.workset_id] = previous
                continue
            owner = ws.lease.owner if ws.lease else "nobody"
            ctx = self._policy.context(
                now_ms=self._clock.now_ms(),
                actor=self._actor,
                reason=f"no heartbeat from {owner} for {silent_s:.0f} s",
                rand=self._rng.random(),
            )
            decision = states.decide(ws, Action.EXPIRE, ctx, error=ctx.reason, error_category="lease")
            try:
                await self._store.commit(decision, fence_token=token, expect_heartbeats=previous.hb_count)
            except errors.Conflict:
                continue  # a last-moment heartbeat, an operator, or another sweeper got there first
            self._record.takeover()
            taken.append(decision)
            log.warning(
                "lease expired; taken over",
                workset_id=ws.workset_id,
                lease_owner=owner,
                state=decision.after.state.value,
                silent_s=round(silent_s),
            )
        if len(seen) > self._max_tracked:  # keep the oldest observations: they are the ones about to expire
            seen = dict(sorted(seen.items(), key=lambda kv: kv[1].since)[: self._max_tracked])
        self._seen = seen
        return taken

    def distrust_counter(self) -> None:
        """Query the in-progress worksets at the next sweep even if the fleet counter says there are none."""
        self._distrust = True

    def first_delay_s(self, interval_s: float) -> float:
        """A random phase for the first sweep, so that a fleet started together does not sweep in lockstep."""
        return self._rng.uniform(0, interval_s)

    def next_interval_s(self, interval_s: float) -> float:
        """Time from the start of the latest sweep to the next: ``interval_s``, or less when a watched workset may be
        taken over sooner (then exactly at that moment), or when the chores role may be taken over."""
        if self.chores is not None:
            interval_s = self.chores.next_look_s(self._started, interval_s)
        if not self._seen:
            return interval_s
        earliest = min(seen.since for seen in self._seen.values()) + self._policy.takeover_after_s
        delay_s = earliest - self._started
        if delay_s <= 0:  # it was due at the latest sweep already, whose takeover failed: retry soon, not at once
            return min(interval_s, 1.0)
        return min(interval_s, delay_s + 0.01)
