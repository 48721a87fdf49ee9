"""A holding: one claimed workset, kept with heartbeats, written only while we hold it.

Guarantees, given the store contract (``ports.Store``):

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
- **A daemon that cannot renew stops taking work.** A holding lost because its own renewal (or write) failed, not
  because someone took the workset, puts the claimer in a cool-off (``Renewals``): no claims for one lease, doubling
  while renewals keep failing (up to ``COOL_OFF_MAX_S``); a successful renewal ends it. A host whose IAM role lost
  ``UpdateItem`` would otherwise claim every due workset, lose it at once, and spend its attempts.
- **Bounded holder writes.** Every retry (transient error, stale version, failed read) comes after a pause
  (0.5 s doubling to 5 s, jittered); a write not recorded within ``renew_deadline_s`` gives the lease up.

Not guaranteed: that an external side effect of a step is fenced; steps get ``WORKSET_EPOCH`` for that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from monitor import errors, logs, states
from monitor.clock import Clock
from monitor.loops import repeat
from monitor.model import Event, State, StepRun, Workset
from monitor.policy import Policy, Renewals
from monitor.ports import Store
from monitor.recorder import Heartbeat, Recorder, Tally
from monitor.states import Action, Decision

log = logs.get("monitor.leases")

_WRITE_RETRY_MAX_S = 5.0
T = TypeVar("T")


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
        recorder: Recorder | None = None,
        renewals: Renewals | None = None,
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
        self._record = recorder or Tally()  # its heartbeats (a claimer's holdings share the claimer's)
        self._renewals = renewals

    @property
    def workset_id(self) -> str:
        return self.ws.workset_id

    # --- liveness ----------------------------------------------------------------------------------------------

    def fenced(self) -> bool:
        """True once we must not act: the lease is lost, or renewal has failed for too long."""
        if not self.lost.is_set() and self._clock.monotonic() - self.renewed_at >= self._policy.renew_deadline_s:
            self._lose(f"no successful renewal for {self._policy.renew_deadline_s:g} s", ours=True)
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
            count = await self._ask(call, "heartbeat")
        except _NoAnswer:
            return False
        if count is None:
            return await self._confirm_refusal(started)
        self.renewed_at = started
        self._record.heartbeat(Heartbeat.OK)
        if self._renewals is not None:
            self._renewals.renewed()
        return True

    async def _ask(self, call: Awaitable[T], what: str) -> T:
        """``call``'s answer by the renew deadline; ``_NoAnswer`` when there was none in time or it failed for now
        (a heartbeat error: the next one comes sooner)."""
        try:
            return await self._by_deadline(call)
        except TimeoutError:
            raise _NoAnswer from None
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            self._record.heartbeat(Heartbeat.ERROR)
            log.warning(f"{what} failed; will retry", workset_id=self.workset_id, error=str(exc))
            raise _NoAnswer from exc

    async def _by_deadline(self, call: Awaitable[T]) -> T:
        """``call``'s result, unless the renew deadline comes first: then the holding is lost and TimeoutError raised.
        AWS retries (read timeout times attempts) can outlast a lease; a hung connection must not keep a step running.
        """
        left_s = self.renewed_at + self._policy.renew_deadline_s - self._clock.monotonic()
        try:
            return await asyncio.wait_for(call, timeout=left_s)
        except TimeoutError:
            self._record.heartbeat(Heartbeat.ERROR)
            log.warning("no answer from the table before the renew deadline", workset_id=self.workset_id)
            self.fenced()
            raise

    async def _confirm_refusal(self, started: float) -> bool:
        try:
            current = await self._ask(self._store.get(self.ws.workset_id), "re-reading a refused heartbeat")
        except _NoAnswer:
            return False
        if (
            current is not None
            and current.state is State.IN_PROGRESS
            and current.lease
            and (current.lease.token == self.token)
        ):
            self.renewed_at = started  # refused, yet still ours: the item was renewed concurrently
            self._record.heartbeat(Heartbeat.SPURIOUS_REFUSAL)
            return True
        self._lose(_why_gone(current))
        return False

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Heartbeat every ``heartbeat_s`` (sooner after a failure) until ``stop`` is set or the lease is lost.
        A heartbeat that raises (access denied, expired credentials, a bug) loses the lease: we can no longer renew."""

        async def beat() -> float | None:
            if stop.is_set() or self.lost.is_set():
                return None
            try:
                ok = await self.heartbeat_once()
            except Exception as exc:
                self._lose(f"heartbeat failed: {exc}", ours=True)
                return None
            if self.lost.is_set():
                return None
            wait = self._policy.heartbeat_s if ok else self._policy.heartbeat_retry_s
            # Never sleep past the renew deadline: wake in time to self-fence.
            wait = min(wait, max(self.renewed_at + self._policy.renew_deadline_s - self._clock.monotonic(), 0))
            return wait * self._rng.uniform(0.9, 1.0)

        await repeat(self._clock, beat, until=stop)

    async def fence_on_time(self, stop: asyncio.Event) -> None:
        """Lose the lease at the renew deadline, on our own timer, whatever the heartbeat task is doing (renewing,
        hung, or dead); returns once the lease is lost or ``stop`` is set."""

        async def check() -> float | None:
            if stop.is_set() or self.fenced():
                return None
            return self.renewed_at + self._policy.renew_deadline_s - self._clock.monotonic()

        await repeat(self._clock, check, until=stop)

    def give_up(self, reason: str) -> None:
        """Stop acting on this lease now (we can no longer keep it); the driver halts the step."""
        self._lose(reason, ours=True)

    def _lose(self, reason: str, *, ours: bool = False) -> None:
        """``ours``: lost because our renewal or write failed (not because someone else took the workset)."""
        if ours and not self.lost.is_set() and self._renewals is not None:
            self._renewals.failed(self.workset_id)
        if not self.lost.is_set():
            self.lost_reason = reason
            self._record.heartbeat(Heartbeat.LOST)
            self.lost.set()
            log.warning("lease lost", workset_id=self.workset_id, epoch=self.epoch, reason=reason)

    # --- fenced writes -----------------------------------------------------------------------------------------

    def step_started(self, step: str) -> None:
        """Note the running step; the next heartbeat records it (for `show`), no extra write."""
        self.ws = dataclasses.replace(self.ws, current_step=step)

    async def step_finished(self, step: str, *, detail: str = "", run: StepRun | None = None) -> None:
        await self._write(Action.STEP_FINISHED, reason=f"step {step} finished", step=step, detail=detail, run=run)

    async def complete(self, reason: str = "all steps finished") -> None:
        await self._write(Action.COMPLETE, reason=reason)

    async def fail(self, error: str, *, temporary: bool, category: str = "step", run: StepRun | None = None) -> State:
        """Record a failed attempt: retrying (temporary, attempts left) or error. Returns the new state."""
        action = Action.FAIL_TEMPORARY if temporary else Action.FAIL_PERMANENT
        reason = error.splitlines()[-1][:200] if error else ""
        decision = await self._write(action, reason=reason, error=error, error_category=category, run=run)
        return decision.after.state

    async def release(self, reason: str, *, run: StepRun | None = None) -> None:
        """Give the workset back without counting a failure (only once its step has stopped)."""
        await self._write(Action.RELEASE, reason=reason, run=run)

    async def _write(self, action: Action, *, reason: str, **kw: object) -> Decision:
        """Commit ``action`` under our token. Transient errors and stale versions are retried after growing pauses;
        a write not recorded within ``renew_deadline_s`` gives the lease up (LeaseLost), as a silent table would."""
        patience = _Patience(give_up_at=self._clock.monotonic() + self._policy.renew_deadline_s)
        pending: list[Decision] = []  # attempts that failed transiently: any of them may have landed
        while True:
            self._check(patience)
            ctx = self._policy.context(
                now_ms=self._clock.now_ms(), actor=self.owner, reason=reason, rand=self._rng.random()
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
            self._lose(f"could not record a change for {self._policy.renew_deadline_s:g} s", ours=True)
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


class _NoAnswer(Exception):
    """A renewal's call got no answer in time, or failed for now."""


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
