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
- **Hold-off.** A workset an operator took from a running holder carries a mark (``Workset.held_off_for``). A
  claimer claims it only once it has seen the mark, at one version, for ``takeover_after_s`` on its own monotonic
  clock: the old holder fenced itself ``renew_deadline_s`` after its last renewal, which came before the operator's
  write, so its step has stopped first. No wall clock is compared (the operator's may be off).
- **No orphaned claim.** A claim whose response is lost and whose re-read cannot show it landed is remembered until a
  consistent read settles it: landed (in progress under our token, nobody running it) → released, fenced on that
  token, its attempt given back; past the version it was decided on → it can never land, forgotten. The daemon
  settles them at every sweep tick, so within ``sweep_interval_s`` of landing (before a sweeper may take one over
  while that interval is shorter than a lease plus grace).
- **No hidden work.** Skipping the read of the retrying worksets while the fleet counter says none can be due is
  an optimisation with a bound: they are read at least every ``RETRYING_REREAD_S`` regardless, so a due workset the
  index shows is nominated within that plus one claim round.
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
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from monitor import errors, logs, states
from monitor.clock import Clock
from monitor.config import LeaseConfig, RunConfig
from monitor.live import reader
from monitor.loops import repeat
from monitor.model import Due, Event, Fleet, Lease, State, Workset, WorksetId
from monitor.ports import Store
from monitor.recorder import Claim, Heartbeat, Recorder, Tally
from monitor.states import Action, Backoff, Context, Decision

log = logs.get("monitor.leases")

_WRITE_RETRY_MAX_S = 5.0
# The index lags the table (DynamoDB's GSIs: normally well under a second). A claimer trusts a read of the retrying
# worksets to show every workset counted by a retry_seq only if it started this long after it first saw the value.
INDEX_SETTLE_S = 5.0
# And it reads them at least this often whatever the counter says: should the index lag longer, this bounds how long
# any retrying workset can stay unseen once it is due.
RETRYING_REREAD_S = 300.0
_MAX_HELD_OFF = 1000  # held-off candidates a claimer watches at once; more only wait longer

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


COOL_OFF_MAX_S = 300.0  # the longest a daemon whose renewals fail goes without trying to claim


class Renewals:
    """Whether this daemon can keep a lease, as its holdings find out: after one is lost because its own renewal
    failed, no claims for a cool-off (one lease, doubling while it goes on, up to COOL_OFF_MAX_S); any successful
    renewal ends it."""

    def __init__(self, clock: Clock, policy: Policy | Callable[[], Policy]) -> None:
        self._clock = clock
        self._policy_now = reader(policy)
        self._seconds = 0.0
        self._until = 0.0  # monotonic

    @property
    def _policy(self) -> Policy:
        return self._policy_now()

    def failed(self, workset_id: str) -> None:
        now = self._clock.monotonic()
        if now < self._until:
            return  # another holding lost in the same trouble
        self._seconds = min(
            max(self._seconds * 2, self._policy.duration_s), max(COOL_OFF_MAX_S, self._policy.duration_s)
        )
        self._until = now + self._seconds
        log.warning("renewals failing; not claiming for a while", workset_id=workset_id, seconds=self._seconds)

    def renewed(self) -> None:
        if self._seconds:
            log.info("renewals work again; claiming")
        self._seconds, self._until = 0.0, 0.0

    def cooling_off(self) -> bool:
        return self._clock.monotonic() < self._until


class Claimer:
    """Claims due worksets for one daemon (``owner``). ``policy`` may be a getter: it is read at every claim."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        policy: Policy | Callable[[], Policy],
        rng: random.Random | None = None,
        recorder: Recorder | None = None,
    ):
        self._store = store
        self._clock = clock
        self._policy_now = reader(policy)
        self._rng = rng or random.Random()
        self.owner = owner
        self._record = recorder or Tally()  # claims, and its holdings' heartbeats
        self.renewals = Renewals(clock, self._policy_now)
        self._seq_first_seen: tuple[int, float] | None = None  # a retry_seq of the counter; when we first saw it
        self._seq_known: int | None = None  # the retry_seq as of which a settled read saw every retrying workset
        self._retrying_read_at: float | None = None  # monotonic start of our latest read of the retrying worksets
        self._next_retry_ms: int | None = None  # when the earliest retrying workset we know of becomes due
        self._held_off: dict[tuple[WorksetId, int], float] = {}  # held-off candidate (id, version) -> first seen
        self._round_started = clock.monotonic()
        self._unknown: dict[WorksetId, tuple[int, str]] = {}  # claims of unknown outcome: (version decided on, token)

    @property
    def _policy(self) -> Policy:
        return self._policy_now()

    async def claim(self, *, slots: int, fleet: Fleet | None = None) -> list[Holding]:
        """Claim up to ``slots`` worksets, urgent first then oldest first. Never raises for a lost race.

        ``fleet`` (the sweeper's latest read of the fleet counter) lets the round skip the retrying worksets while
        none can be due: none has entered retrying since we last read them all, and none we know of is due yet.
        Bound: the retrying worksets are read whenever the previous read started ``RETRYING_REREAD_S`` ago or more,
        whatever the counter and the index said, so a due one the index shows waits at most that plus one round."""
        self._round_started = self._clock.monotonic()
        if slots <= 0 or self.renewals.cooling_off():
            return []
        now_ms = self._clock.now_ms()
        retrying = self._retrying_may_be_due(now_ms, fleet)
        limit = slots * 2 + min(len(self._held_off), _MAX_HELD_OFF)  # read past the held-off ones we know of
        due = await self._store.due(now_ms=now_ms, limit=limit, retrying=retrying)
        if due.retrying_read:
            self._learn_retrying(due, fleet, now_ms)
        held: list[Holding] = []
        for candidate in self._past_hold_off(due.candidates):
            if len(held) >= slots:
                break
            try:
                holding = await self._claim_one(candidate)
            except errors.FleetFull:
                self._record.claim(Claim.FLEET_FULL)
                break
            if holding is not None:
                held.append(holding)
        return held

    def next_round_s(self, interval_s: float) -> float:
        """Time from the start of the latest round to the next: ``interval_s``, or less when a held-off workset we
        watch becomes claimable sooner (then just after that moment)."""
        wait_s = self._policy.takeover_after_s
        waiting = [since + wait_s for since in self._held_off.values() if since + wait_s > self._round_started]
        if not waiting:
            return interval_s
        return min(interval_s, min(waiting) - self._round_started + 0.01)

    def _past_hold_off(self, candidates: list[Workset]) -> list[Workset]:
        """The candidates, less the held-off ones we have not yet seen so for ``takeover_after_s`` on our monotonic
        clock. Their old holder fenced itself by its renew deadline, which is shorter, so it has stopped its step
        before we can start one. Remembers only the held-off candidates of this round (bounded memory)."""
        now = self._clock.monotonic()
        seen: dict[tuple[WorksetId, int], float] = {}
        claimable: list[Workset] = []
        for ws in candidates:
            if ws.held_off_for is not None:
                key = (ws.workset_id, ws.version)  # any later change (a new release, say) starts a new watch
                since = seen[key] = self._held_off.get(key, now)
                if now - since < self._policy.takeover_after_s:
                    continue
            claimable.append(ws)
        self._held_off = seen
        return claimable

    def expect_retry(self, at_ms: int) -> None:
        """A workset we moved to retrying becomes due at ``at_ms``: read the retrying worksets again then."""
        self._next_retry_ms = at_ms if self._next_retry_ms is None else min(self._next_retry_ms, at_ms)

    def _retrying_may_be_due(self, now_ms: int, fleet: Fleet | None) -> bool:
        if fleet is None:
            return True
        if self._seq_first_seen is None or self._seq_first_seen[0] != fleet.retry_seq:
            self._seq_first_seen = (fleet.retry_seq, self._round_started)
        if fleet.retry_seq != self._seq_known:
            return True
        if self._retrying_read_at is None or self._round_started - self._retrying_read_at >= RETRYING_REREAD_S:
            return True
        return self._next_retry_ms is not None and self._next_retry_ms <= now_ms

    def _learn_retrying(self, due: Due, fleet: Fleet | None, now_ms: int) -> None:
        """Note what a read of the retrying worksets, started at the start of this round, saw."""
        self._retrying_read_at = self._round_started
        # A retry_seq counts as seen only by a complete read that started INDEX_SETTLE_S after we first saw the
        # value (so after the workset entered retrying): the index lags the counter. Rounds a moment apart do not.
        first = self._seq_first_seen
        if fleet is not None and due.next_retry_known and first and self._round_started - first[1] >= INDEX_SETTLE_S:
            self._seq_known = fleet.retry_seq
        self._next_retry_ms = due.next_retry_ms if due.next_retry_known else now_ms  # not all seen: look again

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
            self._record.claim(Claim.LOST)
            return None
        renewed_at = self._clock.monotonic()
        try:
            after = await self._store.commit(decision, fleet_cap=self._policy.fleet_cap)
        except errors.FleetFull:
            raise
        except errors.Conflict:
            self._record.claim(Claim.LOST)
            return None
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            landed = await self._landed_claim(decision, exc)
            if landed is None:
                return None
            after = landed
        self._record.claim(Claim.WON)
        log.info("claimed", workset_id=after.workset_id, epoch=after.epoch, attempt=after.attempts)
        return Holding(
            self._store,
            self._clock,
            ws=after,
            policy=self._policy,
            renewed_at=renewed_at,
            rng=self._rng,
            recorder=self._record,
            renewals=self.renewals,
        )

    async def _landed_claim(self, claim: Decision, exc: errors.MonitorError) -> Workset | None:
        """The claimed record, if a claim whose response was lost landed. Else None; and while we cannot tell (the
        re-read failed, or the item is still at the version the claim was decided on, so a delayed write may still
        land) the claim is remembered for ``settle_unknown``: it must not sit in progress with nobody running it."""
        ws_id, version = claim.before.workset_id, claim.before.version
        assert claim.after.lease is not None, "a claim takes a lease"
        token = claim.after.lease.token
        try:
            current = await self._store.get(ws_id)
        except errors.MonitorError:
            current = claim.before  # unknown: as if not landed yet
        if current is not None and _holds(current, token):
            return current
        self._record.claim(Claim.ERROR)
        unknown = current is not None and current.version == version
        if unknown:
            self._unknown[ws_id] = (version, token)
        log.warning("claim failed", workset_id=ws_id, error=str(exc), outcome_unknown=unknown)
        return None

    @property
    def unknown_claims(self) -> int:
        """Claims whose outcome we have not learnt yet."""
        return len(self._unknown)

    async def settle_unknown(self) -> list[Decision]:
        """Resolve the claims whose outcome we did not learn (the daemon calls this every sweep).

        One that landed (in progress under its token, nobody running it) is released, fenced on that token, its
        attempt given back, with a ``released`` event saying why. One that can no longer land (the workset moved
        past the version it was decided on) is forgotten. The rest, and any we fail to settle, wait for the next
        call. The releases made are returned."""
        released: list[Decision] = []
        for ws_id, (version, token) in list(self._unknown.items()):
            try:
                current = await self._store.get(ws_id)
                if current is not None and _holds(current, token):
                    ctx = Context(
                        now_ms=self._clock.now_ms(),
                        actor=self.owner,
                        reason="given back unrun: the claim's response was lost, so no step was started",
                        max_attempts=self._policy.max_attempts,
                    )
                    decision = states.decide(current, Action.RELEASE, ctx)
                    await self._store.commit(decision, fence_token=token)
                    released.append(decision)
                    log.warning("released a claim whose outcome was unknown", workset_id=ws_id, epoch=current.epoch)
                elif current is not None and current.version == version:
                    continue  # not landed yet; it still may
                del self._unknown[ws_id]
            except errors.MonitorError as exc:
                if not (exc.temporary or isinstance(exc, errors.Conflict)):
                    raise
                log.warning("could not settle a claim of unknown outcome yet", workset_id=ws_id, error=str(exc))
        return released


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
            count = await self._by_deadline(call)
        except TimeoutError:
            return False
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            self._record.heartbeat(Heartbeat.ERROR)
            log.warning("heartbeat failed; will retry", workset_id=self.workset_id, error=str(exc))
            return False
        if count is None:
            return await self._confirm_refusal(started)
        self.renewed_at = started
        self._record.heartbeat(Heartbeat.OK)
        if self._renewals is not None:
            self._renewals.renewed()
        return True

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
            current = await self._by_deadline(self._store.get(self.ws.workset_id))
        except TimeoutError:
            return False
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            self._record.heartbeat(Heartbeat.ERROR)
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


def _holds(ws: Workset, token: str) -> bool:
    """Whether ``ws`` is in progress under the lease ``token``."""
    return ws.state is State.IN_PROGRESS and ws.lease is not None and ws.lease.token == token


def _same(stored: Event, ours: Event) -> bool:
    return (stored.type, stored.actor, stored.epoch, stored.at_ms) == (ours.type, ours.actor, ours.epoch, ours.at_ms)


def _why_gone(current: Workset | None) -> str:
    if current is None:
        return "the workset no longer exists"
    if current.state is State.IN_PROGRESS and current.lease:
        return f"taken over by {current.lease.owner} (epoch {current.epoch})"
    return f"the workset is now {current.state.value} (epoch {current.epoch})"
