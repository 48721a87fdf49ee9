"""The chores role: the fleet-wide work (the S3 scan, the sweep, the queue gauges) done by one daemon at a time.

Every daemon claims and runs worksets; only the holder of the chores role scans S3, sweeps for dead holders and
counts the queue. Without it each of D daemons re-did all three: D listings of every prefix, D sweeps of every
running workset, D counts of the queue per interval, and D start-up reads of every registered id.

The role is a lease on one item of the fleet's partition (``#fleet`` / ``control#chores``), with the rules of a
workset's lease (``holding``, ``sweeper``) and no clock compared:

- **Taking.** Every daemon reads the fleet's control items at each sweep interval (the one read it made anyway for
  the fleet counter; the role item comes in the same Query, so watching the role costs nothing more). Nobody holds
  the role: one conditional write takes it. A holder whose (token, heartbeat count) this daemon has seen unchanged
  for a full lease plus grace on its own monotonic clock: one write conditioned on exactly that pair takes it over.
  Of several daemons racing, one wins.
- **Renewing.** The holder bumps the heartbeat count every ``lease.heartbeat_s``, conditioned on its token.
- **Self-fencing.** ``held()`` turns False ``renew_deadline_s`` (two thirds of the lease) after the start of the
  last successful renewal, before anyone may take over; each chore asks it before each tick.
- **Releasing.** A clean stop deletes the item (conditioned on the token): the next look anywhere takes the role.

The role saves work; it guards nothing. Every write a chore makes is conditional on its own (a registration on the
item not existing, a takeover on the dead holder's pair), so two holders for a moment (a paused holder waking up)
cost duplicate reads, never a wrong write. A take whose response was lost is settled by the next look: the role
carries our token or it does not.

Failover: a dead holder's role is taken within a lease plus grace plus one sweep interval of its last renewal; a
released one within one sweep interval.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from monitor import errors, logs
from monitor.clock import Clock
from monitor.live import reader
from monitor.model import Fleet, Role
from monitor.policy import Policy
from monitor.ports import Store
from monitor.recorder import Recorder, RoleChange, Tally

log = logs.get("monitor.roles")

ROLE = "chores"


@dataclass(frozen=True, slots=True)
class _Seen:
    role: Role
    since: float  # monotonic: when this daemon first saw the holder's (token, heartbeat count)


class Chores:
    """This daemon's side of the chores role: looks at it, takes it, keeps it, gives it up."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        policy: Policy | Callable[[], Policy],
        recorder: Recorder | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.owner = owner
        self._policy_now = reader(policy)
        self._record = recorder or Tally()
        self._rng = rng or random.Random()
        self._token: str | None = None  # ours, while the table last said so
        self._renewed = 0.0  # monotonic start of the last successful renewal (or of the take)
        self._pending: tuple[str, float] | None = None  # a take of unknown outcome: its token and its start
        self._seen: _Seen | None = None  # another daemon's hold, as first seen unchanged
        self._wakes: list[asyncio.Event] = []  # set whenever this daemon takes the role (the chores start at once)

    @property
    def _policy(self) -> Policy:
        return self._policy_now()

    def wake_on_take(self) -> asyncio.Event:
        """An event of one chore's own, set whenever this daemon takes the role."""
        self._wakes.append(asyncio.Event())
        return self._wakes[-1]

    def held(self) -> bool:
        """True while the chores are ours to do: we hold the role and renewed it within the renew deadline."""
        return self._token is not None and self._clock.monotonic() - self._renewed < self._policy.renew_deadline_s

    async def look(self, fleet: Fleet) -> None:
        """After each read of the fleet's control items: note the holder; take the role if free or silent."""
        role, now = fleet.chores, self._clock.monotonic()
        if self._token is not None:
            if role is not None and role.token == self._token:
                return
            self._lose("another daemon took the role over" if role else "the role item is gone")
        if self._pending is not None:
            token, started = self._pending
            self._pending = None
            if role is not None and role.token == token:
                self._won(token, started, previous=None)
                return
        if role is None:
            self._seen = None
            await self._take(expect=None)
            return
        if self._seen is None or (self._seen.role.token, self._seen.role.hb_count) != (role.token, role.hb_count):
            self._seen = _Seen(role=role, since=now)
            return
        if now - self._seen.since >= self._policy.takeover_after_s:
            await self._take(expect=role, silent_s=now - self._seen.since)

    async def renew(self) -> None:
        """The holder's heartbeat (every ``lease.heartbeat_s``); nothing when we do not hold the role."""
        token = self._token
        if token is None:
            return
        started = self._clock.monotonic()
        try:
            await self._store.renew_chores(token=token, now_ms=self._clock.now_ms())
        except errors.Conflict:
            if self._token == token:
                self._lose("another daemon took the role over")
            return
        except errors.MonitorError as exc:
            if exc.temporary:
                raise  # logged by the loop; the role lapses at the renew deadline unless a renewal lands first
            if self._token == token:  # refused for good (access denied): give the chores up, keep claiming
                self._lose(f"cannot renew it: {exc}")
            return
        if self._token == token:
            self._renewed = started

    async def release(self) -> None:
        """A clean stop: give the role up so the next look anywhere takes it (a failure is logged, not raised)."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            await self._store.release_chores(token=token)
        except errors.MonitorError as exc:
            log.warning("could not release the chores role; another daemon takes it over in a lease", error=str(exc))
            return
        self._record.role(RoleChange.RELEASED)
        log.info("released the chores role")

    def next_look_s(self, started: float, interval_s: float) -> float:
        """Time from ``started`` (the start of the latest look) to the next: ``interval_s``, or just when a silent
        holder we watch may be taken over, or soon when a take's outcome is unknown."""
        if self._pending is not None:
            return min(interval_s, self._policy.heartbeat_s)
        if self._seen is None or self._token is not None:
            return interval_s
        delay_s = self._seen.since + self._policy.takeover_after_s - started
        if delay_s <= 0:
            return min(interval_s, 1.0)
        return min(interval_s, delay_s + 0.01)

    async def _take(self, *, expect: Role | None, silent_s: float = 0.0) -> None:
        token = uuid.UUID(int=self._rng.getrandbits(128), version=4).hex
        started = self._clock.monotonic()
        try:
            await self._store.take_chores(token=token, owner=self.owner, now_ms=self._clock.now_ms(), expect=expect)
        except errors.Conflict:
            self._seen = None  # another daemon got there first (or the holder renewed at the last moment)
            return
        except errors.MonitorError as exc:
            if not exc.temporary:  # say the policy refuses UpdateItem on the role item: claims go on, the alert tells
                log.error("cannot take the chores role; this daemon only claims and runs", error=str(exc))
                return
            self._pending = (token, started)  # applied or not: the next look tells
            log.warning("taking the chores role failed; looking again soon", error=str(exc))
            return
        self._won(token, started, previous=expect, silent_s=silent_s)

    def _won(self, token: str, started: float, *, previous: Role | None, silent_s: float = 0.0) -> None:
        self._token, self._renewed, self._seen = token, started, None
        self._record.role(RoleChange.TAKEN_OVER if previous is not None else RoleChange.TAKEN)
        for wake in self._wakes:
            wake.set()
        if previous is None:
            log.info("took the chores role: this daemon scans, sweeps and counts the queue")
        else:
            log.warning(
                "took the chores role over from a silent holder",
                previous_owner=previous.owner,
                silent_s=round(silent_s),
            )

    def _lose(self, why: str) -> None:
        self._token = None
        self._record.role(RoleChange.LOST)
        log.warning("lost the chores role", reason=why)
