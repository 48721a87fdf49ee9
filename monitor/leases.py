"""Leases: claiming due worksets, keeping them with heartbeats, and writing only while we hold them.

Guarantees, given the store contract (``ports.Store``):

- **One holder.** A claim is one conditional transaction on the base table (control item + ``started`` event +
  fleet counter): it succeeds only on the exact version the index nominated, so two claimers can never both win.
  A lost race is normal and counted.
- **Fencing.** Every write a holder makes is conditioned on its per-claim token. Once the token is gone (operator
  cancel/release, sweeper takeover) no write of ours can land, however late it arrives.
- **Renewal.** A heartbeat is conditioned on the token only, so a retried heartbeat whose first response was lost
  still succeeds. A refused heartbeat is re-read consistently before the lease is declared lost.
- **Self-fencing.** ``renew_deadline_s`` (two thirds of the lease) after the start of the last successful renewal,
  measured on our monotonic clock, the holding declares itself lost and refuses every further write, without asking
  the table. A sweeper can take over no earlier than a full lease plus grace after it saw that renewal, so the
  holder has always stopped first (with a third of the lease, plus grace, to spare for killing its step). A
  heartbeat that gets no answer is abandoned at the deadline: a hung connection cannot keep a step running. The
  deadline is kept by a timer of its own (``fence_on_time``), not by the heartbeat: it holds whether the heartbeat
  task is renewing, hung or dead. A heartbeat that raises (access denied, expired credentials) loses the lease.
- **Idempotent holder writes.** A write that failed transiently is checked against the audit trail before it is
  retried: if its event is there, it was applied and its response lost. While that read fails the outcome stays
  unknown and nothing is written: the read is repeated until it answers or the holding fences itself.
- **Bounded holder writes.** Every retry (transient error, stale version, failed read) comes after a pause
  (0.5 s doubling to 5 s, jittered); a write not recorded within ``renew_deadline_s`` gives the lease up.

Not guaranteed: that an external side effect of a step is fenced; steps get ``WORKSET_EPOCH`` for that.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import socket
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from monitor import errors, logs, states
from monitor.clock import Clock
from monitor.config import LeaseConfig, RunConfig
from monitor.model import Event, Fleet, Lease, State, Workset
from monitor.ports import Store
from monitor.states import Action, Backoff, Context, Decision

log = logs.get("monitor.leases")

_WRITE_RETRY_MAX_S = 5.0

T = TypeVar("T")


def new_owner_id(rng: random.Random | None = None) -> str:
    """``<host>:<pid>:<random>``: unique per process start, so a restarted daemon is never taken for its predecessor."""
    suffix = f"{(rng or random.SystemRandom()).getrandbits(32):08x}"
    return f"{socket.gethostname()}:{os.getpid()}:{suffix}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Lease and retry timings, all derived from the configuration."""

    duration_s: float = 60.0
    heartbeat_s: float = 15.0
    grace_s: float = 0.0
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    fleet_cap: int | None = None

    @classmethod
    def from_config(cls, lease: LeaseConfig, run: RunConfig) -> Policy:
        return cls(
            duration_s=lease.duration_s,
            heartbeat_s=lease.heartbeat_s,
            grace_s=lease.grace_s,
            max_attempts=run.max_attempts,
            backoff=Backoff(base_s=run.retry_backoff_base_s, cap_s=run.retry_backoff_max_s),
            fleet_cap=run.max_fleet_concurrent,
        )

    @property
    def renew_deadline_s(self) -> float:
        """How long a holder may go without a successful renewal before it stops acting."""
        return self.duration_s * 2 / 3

    @property
    def takeover_after_s(self) -> float:
        """How long a sweeper must see a lease unchanged before taking it over."""
        return self.duration_s + self.grace_s

    @property
    def heartbeat_retry_s(self) -> float:
        return max(self.heartbeat_s / 4, 0.5)


class Claimer:
    """Claims due worksets for one daemon (``owner``)."""

    def __init__(self, store: Store, clock: Clock, *, owner: str, policy: Policy, rng: random.Random | None = None):
        self._store = store
        self._clock = clock
        self._policy = policy
        self._rng = rng or random.Random()
        self.owner = owner
        self.counts: collections.Counter[str] = collections.Counter()  # claims by result: won, lost, fleet_full...
        self.heartbeats: collections.Counter[str] = collections.Counter()  # of all its holdings: ok, lost...
        self._retry_seq_seen: int | None = None  # the fleet's retry_seq as of which we know every retrying workset
        self._retry_seq_read: int | None = None  # the fleet's retry_seq at our last read of them
        self._next_retry_ms: int | None = None  # when the earliest retrying workset we know of becomes due

    async def claim(self, *, slots: int, fleet: Fleet | None = None) -> list[Holding]:
        """Claim up to ``slots`` worksets, urgent first then oldest first. Never raises for a lost race.

        ``fleet`` (the sweeper's latest read of the fleet counter) lets the round skip the retrying worksets while
        none can be due: none has entered retrying since we last read them all, and none we know of is due yet."""
        if slots <= 0:
            return []
        now_ms = self._clock.now_ms()
        retrying = self._retrying_may_be_due(now_ms, fleet)
        due = await self._store.due(now_ms=now_ms, limit=slots * 2, retrying=retrying)
        if due.retrying_read:
            # A retry_seq counts as seen only once two reads agree on it: the index may lag the counter a moment.
            seq = fleet.retry_seq if fleet is not None else None
            self._retry_seq_seen = seq if seq == self._retry_seq_read else None
            self._retry_seq_read = seq
            self._next_retry_ms = due.next_retry_ms if due.next_retry_known else now_ms  # not all seen: look again
        held: list[Holding] = []
        for candidate in due.candidates:
            if len(held) >= slots:
                break
            try:
                holding = await self._claim_one(candidate)
            except errors.FleetFull:
                self.counts["fleet_full"] += 1
                break
            if holding is not None:
                held.append(holding)
        return held

    def expect_retry(self, at_ms: int) -> None:
        """A workset we moved to retrying becomes due at ``at_ms``: read the retrying worksets again then."""
        self._next_retry_ms = at_ms if self._next_retry_ms is None else min(self._next_retry_ms, at_ms)

    def _retrying_may_be_due(self, now_ms: int, fleet: Fleet | None) -> bool:
        if fleet is None or self._retry_seq_seen is None or fleet.retry_seq != self._retry_seq_seen:
            return True
        return self._next_retry_ms is not None and self._next_retry_ms <= now_ms

    async def _claim_one(self, candidate: Workset) -> Holding | None:
        now_ms = self._clock.now_ms()
        lease = Lease(
            token=uuid.UUID(int=self._rng.getrandbits(128), version=4).hex,
            owner=self.owner,
            heartbeat_at_ms=now_ms,
            expires_at_ms=now_ms + round(self._policy.duration_s * 1000),
        )
        ctx = Context(now_ms=now_ms, actor=self.owner, reason="claimed", max_attempts=self._policy.max_attempts)
        try:
            decision = states.decide(candidate, Action.CLAIM, ctx, lease=lease)
        except errors.IllegalTransition:  # the index was stale: not claimable (any more)
            self.counts["lost"] += 1
            return None
        renewed_at = self._clock.monotonic()
        try:
            after = await self._store.commit(decision, fleet_cap=self._policy.fleet_cap)
        except errors.FleetFull:
            raise
        except errors.Conflict:
            self.counts["lost"] += 1
            return None
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            current = await self._reread(candidate)  # did the claim land although its response was lost?
            if current is None or current.lease is None or current.lease.token != lease.token:
                self.counts["error"] += 1
                log.warning("claim failed", workset_id=candidate.workset_id, error=str(exc))
                return None
            after = current
        self.counts["won"] += 1
        log.info("claimed", workset_id=after.workset_id, epoch=after.epoch, attempt=after.attempts)
        return Holding(
            self._store,
            self._clock,
            ws=after,
            policy=self._policy,
            renewed_at=renewed_at,
            rng=self._rng,
            heartbeats=self.heartbeats,
        )

    async def _reread(self, candidate: Workset) -> Workset | None:
        try:
            return await self._store.get(candidate.workset_id)
        except errors.MonitorError:
            return None


class Holding:
    """One workset we hold: its heartbeat and the only way to write to it."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        ws: Workset,
        policy: Policy,
        renewed_at: float,
        rng: random.Random | None = None,
        heartbeats: collections.Counter[str] | None = None,
    ) -> None:
        assert ws.lease is not None, "a holding needs a leased workset"
        self._store = store
        self._clock = clock
        self._policy = policy
        self._rng = rng or random.Random()
        self.ws = ws
        self.token = ws.lease.token
        self.owner = ws.lease.owner
        self.epoch = ws.epoch
        self.renewed_at = renewed_at  # monotonic start of the last successful renewal (or of the claim)
        self.lost = asyncio.Event()
        self.lost_reason = ""
        # by result: ok, spurious_refusal, error, lost (shared by a claimer's holdings, for the metrics)
        self.heartbeats = heartbeats if heartbeats is not None else collections.Counter[str]()

    @property
    def workset_id(self) -> str:
        return self.ws.workset_id

    # --- liveness ----------------------------------------------------------------------------------------------

    def fenced(self) -> bool:
        """True once we must not act: the lease is lost, or renewal has failed for too long."""
        if not self.lost.is_set() and self._clock.monotonic() - self.renewed_at >= self._policy.renew_deadline_s:
            self._lose(f"no successful renewal for {self._policy.renew_deadline_s:g} s")
        return self.lost.is_set()

    async def heartbeat_once(self) -> bool:
        """Renew once; False when the lease is (now) lost or this attempt failed transiently."""
        if self.fenced():
            return False
        started = self._clock.monotonic()
        now_ms = self._clock.now_ms()
        call = self._store.heartbeat(
            self.ws.workset_id,
            token=self.token,
            now_ms=now_ms,
            expires_at_ms=now_ms + round(self._policy.duration_s * 1000),
            step=self.ws.current_step,
        )
        try:
            count = await self._by_deadline(call)
        except TimeoutError:
            return False
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            self.heartbeats["error"] += 1
            log.warning("heartbeat failed; will retry", workset_id=self.workset_id, error=str(exc))
            return False
        if count is None:
            return await self._confirm_refusal(started)
        self.renewed_at = started
        self.heartbeats["ok"] += 1
        return True

    async def _by_deadline(self, call: Awaitable[T]) -> T:
        """``call``'s result, unless the renew deadline comes first: then the holding is lost and TimeoutError raised.
        AWS retries (read timeout times attempts) can outlast a lease; a hung connection must not keep a step running.
        """
        left_s = self.renewed_at + self._policy.renew_deadline_s - self._clock.monotonic()
        try:
            return await asyncio.wait_for(call, timeout=left_s)
        except TimeoutError:
            self.heartbeats["error"] += 1
            log.warning("no answer from the table before the renew deadline", workset_id=self.workset_id)
            self.fenced()
            raise

    async def _confirm_refusal(self, started: float) -> bool:
        try:
            current = await self._by_deadline(self._store.get(self.ws.workset_id))
        except TimeoutError:
            return False
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            self.heartbeats["error"] += 1
            return False
        if (
            current is not None
            and current.state is State.IN_PROGRESS
            and current.lease
            and (current.lease.token == self.token)
        ):
            self.renewed_at = started  # refused, yet still ours: the item was renewed concurrently
            self.heartbeats["spurious_refusal"] += 1
            return True
        self._lose(_why_gone(current))
        return False

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Heartbeat every ``heartbeat_s`` (sooner after a failure) until ``stop`` is set or the lease is lost.
        A heartbeat that raises (access denied, expired credentials, a bug) loses the lease: we can no longer renew."""
        while not self.lost.is_set():
            try:
                ok = await self.heartbeat_once()
            except Exception as exc:
                self._lose(f"heartbeat failed: {exc}")
                return
            if self.lost.is_set():
                return
            wait = self._policy.heartbeat_s if ok else self._policy.heartbeat_retry_s
            # Never sleep past the renew deadline: wake in time to self-fence.
            wait = min(wait, max(self.renewed_at + self._policy.renew_deadline_s - self._clock.monotonic(), 0))
            if await self._clock.sleep(wait * self._rng.uniform(0.9, 1.0), until=stop):
                return

    async def fence_on_time(self, stop: asyncio.Event) -> None:
        """Lose the lease at the renew deadline, on our own timer, whatever the heartbeat task is doing (renewing,
        hung, or dead); returns once the lease is lost or ``stop`` is set."""
        while not self.fenced():
            left_s = self.renewed_at + self._policy.renew_deadline_s - self._clock.monotonic()
            if await self._clock.sleep(left_s, until=stop):
                return

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.heartbeats["lost"] += 1
            self.lost.set()
            log.warning("lease lost", workset_id=self.workset_id, epoch=self.epoch, reason=reason)

    # --- fenced writes -----------------------------------------------------------------------------------------

    def step_started(self, step: str) -> None:
        """Note the running step; the next heartbeat records it (for `show`), no extra write."""
        self.ws = dataclasses.replace(self.ws, current_step=step)

    async def step_finished(self, step: str, *, detail: str = "") -> None:
        await self._write(Action.STEP_FINISHED, reason=f"step {step} finished", step=step, detail=detail)

    async def complete(self, reason: str = "all steps finished") -> None:
        await self._write(Action.COMPLETE, reason=reason)

    async def fail(self, error: str, *, temporary: bool, category: str = "step") -> State:
        """Record a failed attempt: retrying (temporary, attempts left) or error. Returns the new state."""
        action = Action.FAIL_TEMPORARY if temporary else Action.FAIL_PERMANENT
        decision = await self._write(
            action, reason=error.splitlines()[-1][:200] if error else "", error=error, error_category=category
        )
        return decision.after.state

    async def release(self, reason: str) -> None:
        """Give the workset back without counting a failure (only once its step has stopped)."""
        await self._write(Action.RELEASE, reason=reason)

    async def _write(self, action: Action, *, reason: str, **kw: object) -> Decision:
        """Commit ``action`` under our token. Transient errors and stale versions are retried after growing pauses;
        a write not recorded within ``renew_deadline_s`` gives the lease up (LeaseLost), as a silent table would."""
        patience = _Patience(give_up_at=self._clock.monotonic() + self._policy.renew_deadline_s)
        pending: list[Decision] = []  # attempts that failed transiently: any of them may have landed
        while True:
            self._check(patience)
            ctx = Context(
                now_ms=self._clock.now_ms(),
                actor=self.owner,
                reason=reason,
                max_attempts=self._policy.max_attempts,
                backoff=self._policy.backoff,
                rand=self._rng.random(),
            )
            decision = states.decide(self.ws, action, ctx, **kw)  # type: ignore[arg-type]
            try:
                self._settle(await self._store.commit(decision, fence_token=self.token))
            except errors.Conflict as exc:
                if (landed := await self._landed(pending, patience)) is not None:
                    return landed
                await self._refresh(exc)
                log.info("write refused as stale; will decide again", workset_id=self.workset_id, action=action.value)
            except errors.MonitorError as exc:
                if not exc.temporary:
                    raise
                pending.append(decision)
                log.warning("write failed; will retry", workset_id=self.workset_id, action=action.value, error=str(exc))
                if (landed := await self._landed(pending, patience)) is not None:
                    return landed
            else:
                log.info(
                    "recorded",
                    workset_id=self.workset_id,
                    action=action.value,
                    state=decision.after.state.value,
                    lease_owner=self.owner,
                    epoch=self.epoch,
                )
                return decision
            await self._pause(patience)

    async def _landed(self, pending: list[Decision], patience: _Patience) -> Decision | None:
        """The pending decision that was applied although its response was lost, or None once the audit trail shows
        that none was. A failed read leaves that unknown: read again, after a pause, rather than guess "not applied"
        and write a second time."""
        for decision in pending:
            while True:
                try:
                    event = await self._store.event(self.ws.workset_id, decision.event.seq)
                    break
                except errors.MonitorError as exc:
                    if not exc.temporary:
                        raise
                    log.warning("cannot tell whether a write landed; will read again", workset_id=self.workset_id)
                    await self._pause(patience)
            if event is not None and _same(event, decision.event):
                self._settle(decision.after)
                return decision
        return None

    async def _pause(self, patience: _Patience) -> None:
        """Wait before the next try (less if the lease is lost meanwhile); raises LeaseLost once we must not act."""
        await self._clock.sleep(patience.next_pause_s(self._clock.monotonic(), self._rng.random()), until=self.lost)
        self._check(patience)

    def _check(self, patience: _Patience) -> None:
        """Raise LeaseLost once we must not act: fenced, or this write has been trying for ``renew_deadline_s``."""
        if not self.fenced() and self._clock.monotonic() >= patience.give_up_at:
            self._lose(f"could not record a change for {self._policy.renew_deadline_s:g} s")
        if self.lost.is_set():
            raise errors.LeaseLost(f"{self.workset_id}: {self.lost_reason}")

    def _settle(self, ws: Workset) -> None:
        """Adopt the record we just wrote; once it has left in_progress we hold nothing and write nothing more."""
        self.ws = ws
        if ws.state is not State.IN_PROGRESS and not self.lost.is_set():
            self.lost_reason = f"handed back by us ({ws.state.value})"
            self.lost.set()

    async def _refresh(self, cause: errors.Conflict) -> None:
        """After a refused write: carry on with the fresh record if it is still ours, else we have lost it. A failed
        read leaves ``self.ws`` stale: the next try is refused again and reads again."""
        try:
            current = await self._store.get(self.ws.workset_id)
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            log.warning("cannot re-read the workset; will try again", workset_id=self.workset_id, error=str(exc))
            return
        if (
            current is None
            or current.state is not State.IN_PROGRESS
            or not current.lease
            or (current.lease.token != self.token)
        ):
            self._lose(_why_gone(current))
            raise errors.LeaseLost(f"{self.workset_id}: {self.lost_reason}") from cause
        self.ws = current


@dataclass(slots=True)
class _Patience:
    """The retries of one holder write: jittered pauses from 0.5 s doubling to ``_WRITE_RETRY_MAX_S``, none past
    ``give_up_at`` (monotonic)."""

    give_up_at: float
    delay_s: float = 0.5

    def next_pause_s(self, now: float, rand: float) -> float:
        pause_s = min(self.delay_s * (0.5 + rand / 2), max(self.give_up_at - now, 0.0))
        self.delay_s = min(self.delay_s * 2, _WRITE_RETRY_MAX_S)
        return pause_s


def _same(stored: Event, ours: Event) -> bool:
    return (stored.type, stored.actor, stored.epoch, stored.at_ms) == (ours.type, ours.actor, ours.epoch, ours.at_ms)


def _why_gone(current: Workset | None) -> str:
    if current is None:
        return "the workset no longer exists"
    if current.state is State.IN_PROGRESS and current.lease:
        return f"taken over by {current.lease.owner} (epoch {current.epoch})"
    return f"the workset is now {current.state.value} (epoch {current.epoch})"
