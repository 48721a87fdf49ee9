"""The rules of a daemon's decisions (``Policy``: lease and retry timings, which events are notified), and its standing
as a renewer (``Renewals``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from monitor import logs
from monitor.clock import Clock
from monitor.config import Settings
from monitor.live import reader
from monitor.model import Event
from monitor.notify import filters
from monitor.states import Backoff, Context, nobody

log = logs.get("monitor.leases")


@dataclass(frozen=True, slots=True)
class Policy:
    """Lease and retry timings and which events some channel wants, all derived from the configuration."""

    duration_s: float = 60.0
    heartbeat_s: float = 15.0
    grace_s: float = 0.0
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    fleet_cap: int | None = None
    notify: Callable[[Event], bool] = nobody

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        lease, run = settings.lease, settings.run
        return cls(
            duration_s=lease.duration_s,
            heartbeat_s=lease.heartbeat_s,
            grace_s=lease.grace_s,
            max_attempts=run.max_attempts,
            backoff=Backoff(base_s=run.retry_backoff_base_s, cap_s=run.retry_backoff_max_s),
            fleet_cap=run.max_fleet_concurrent,
            notify=filters.wanted(settings.notify),
        )

    def context(self, *, now_ms: int, actor: str, reason: str, rand: float = 0.5) -> Context:
        """What ``states.decide`` needs to decide under these rules."""
        return Context(
            now_ms=now_ms,
            actor=actor,
            reason=reason,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            rand=rand,
            notify=self.notify,
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
