"""What the daemon counts, recorded where it happens, in one typed vocabulary.

The claimer, its holdings, the sweeper and the outbox each take a ``Recorder`` and call it at the moment a claim,
heartbeat, takeover or delivery happens. The daemon injects its Prometheus metrics (``metrics.Metrics``); anything
else (a CLI command, a test, a benchmark) gets a ``Tally``, which keeps the counts in memory to be read back. No
count is reconstructed later from someone else's fields.
"""

from __future__ import annotations

import collections
from enum import StrEnum
from typing import Protocol


class Claim(StrEnum):
    WON = "won"
    LOST = "lost"  # another daemon (or an operator) got there first
    FLEET_FULL = "fleet_full"
    PAUSED = "paused"  # intake is paused fleet-wide (`workset-monitor pause`)
    ERROR = "error"  # the outcome is unknown; settled before the next sweep


class Heartbeat(StrEnum):
    OK = "ok"
    SPURIOUS_REFUSAL = "spurious_refusal"  # refused, yet the lease was still ours
    ERROR = "error"  # failed for now; retried sooner
    LOST = "lost"  # the lease is gone: taken over, cancelled, or not renewed in time


class Delivery(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"  # the channel's filters did not want it
    FAILED = "failed"  # given up on this channel
    RETRY_LATER = "retry_later"


class RoleChange(StrEnum):
    TAKEN = "taken"  # nobody held the role
    TAKEN_OVER = "taken_over"  # from a holder silent for a lease plus grace
    LOST = "lost"  # another daemon holds it now
    RELEASED = "released"  # given up at a clean stop


class Recorder(Protocol):
    def claim(self, result: Claim) -> None: ...

    def heartbeat(self, result: Heartbeat) -> None: ...

    def takeover(self) -> None:
        """A dead holder's lease taken over by this process's sweeper."""
        ...

    def notification(self, channel: str, outcome: Delivery, latency_s: float | None) -> None:
        """``latency_s``: from the event's commit to its delivery (sent only)."""
        ...

    def role(self, change: RoleChange) -> None:
        """This process took, lost or released the chores role (``roles``)."""
        ...


class Tally:
    """A ``Recorder`` that keeps its counts in memory."""

    def __init__(self) -> None:
        self.claims: collections.Counter[Claim] = collections.Counter()
        self.heartbeats: collections.Counter[Heartbeat] = collections.Counter()
        self.takeovers = 0
        self.notifications: collections.Counter[tuple[str, Delivery]] = collections.Counter()
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self.roles: collections.Counter[RoleChange] = collections.Counter()

    def claim(self, result: Claim) -> None:
        self.claims[result] += 1

    def heartbeat(self, result: Heartbeat) -> None:
        self.heartbeats[result] += 1

    def takeover(self) -> None:
        self.takeovers += 1

    def notification(self, channel: str, outcome: Delivery, latency_s: float | None) -> None:
        self.notifications[(channel, outcome)] += 1
        if latency_s is not None:
            self.latencies_s.append(latency_s)

    def role(self, change: RoleChange) -> None:
        self.roles[change] += 1
