"""Leases: claiming due worksets for one daemon; each claim becomes a ``holding.Holding``.

Guarantees, given the store contract (``ports.Store``); the holder's own (fencing, renewal, self-fencing, idempotent
and bounded writes) are in ``monitor.holding``:

- **One holder.** A claim is one conditional transaction on the base table (control item + ``started`` event +
  fleet counter): it succeeds only on the exact version the index nominated, so two claimers can never both win.
  A lost race is normal and counted.
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
- **A daemon that cannot renew stops taking work** (``holding.Renewals``): no claims during its cool-off.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable

from monitor import errors, logs, states
from monitor.clock import Clock
from monitor.holding import Holding
from monitor.live import reader
from monitor.model import Due, Fleet, Lease, State, Workset, WorksetId
from monitor.policy import COOL_OFF_MAX_S, Policy, Renewals
from monitor.ports import Store
from monitor.recorder import Claim, Recorder, Tally
from monitor.states import Action, Decision

log = logs.get("monitor.leases")

__all__ = ["COOL_OFF_MAX_S", "Claimer", "Holding", "Policy", "Renewals", "new_owner_id"]

# The index lags the table (DynamoDB's GSIs: normally well under a second). A claimer trusts a read of the retrying
# worksets to show every workset counted by a retry_seq only if it started this long after it first saw the value.
INDEX_SETTLE_S = 5.0
# And it reads them at least this often whatever the counter says: should the index lag longer, this bounds how long
# any retrying workset can stay unseen once it is due.
RETRYING_REREAD_S = 300.0
_MAX_HELD_OFF = 1000  # held-off candidates a claimer watches at once; more only wait longer


def new_owner_id(rng: random.Random | None = None) -> str:
    """``<host>:<pid>:<random>``: unique per process start, so a restarted daemon is never taken for its predecessor."""
    suffix = f"{(rng or random.SystemRandom()).getrandbits(32):08x}"
    return f"{socket.gethostname()}:{os.getpid()}:{suffix}"


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

        ``fleet`` (the sweeper's latest read of the fleet counter) skips the round when the fleet is at its cap,
        and lets the round skip the retrying worksets while none can be due: none has entered retrying since we
        last read them all, and none we know of is due yet. Bound: the retrying worksets are read whenever the
        previous read started ``RETRYING_REREAD_S`` ago or more, whatever the counter and the index said, so a
        due one the index shows waits at most that plus one round."""
        self._round_started = self._clock.monotonic()
        if slots <= 0 or self.renewals.cooling_off():
            return []
        cap = self._policy.fleet_cap
        if cap is not None and fleet is not None and fleet.running >= cap:
            # The cap's own condition reads the counter item only; worksets claimed without a cap (by a daemon
            # without one, or before it was set) are on the shards, and only this sum sees them.
            self._record.claim(Claim.FLEET_FULL)
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
            except errors.Paused:  # the claim's own transaction saw the pause: exact, whatever we read before
                self._record.claim(Claim.PAUSED)
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
        ctx = self._policy.context(now_ms=now_ms, actor=self.owner, reason="claimed")
        try:
            decision = states.decide(candidate, Action.CLAIM, ctx, lease=lease)
        except errors.IllegalTransition:  # the index was stale: not claimable (any more)
            self._record.claim(Claim.LOST)
            return None
        renewed_at = self._clock.monotonic()
        try:
            after = await self._store.commit(decision, fleet_cap=self._policy.fleet_cap)
        except (errors.FleetFull, errors.Paused):
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
                    ctx = self._policy.context(
                        now_ms=self._clock.now_ms(),
                        actor=self.owner,
                        reason="given back unrun: the claim's response was lost, so no step was started",
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


def _holds(ws: Workset, token: str) -> bool:
    """Whether ``ws`` is in progress under the lease ``token``."""
    return ws.state is State.IN_PROGRESS and ws.lease is not None and ws.lease.token == token
