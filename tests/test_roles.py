"""The chores role (monitor/roles.py): one daemon at a time scans, sweeps and counts, chosen through the table by a
lease with the rules of a workset's: takeover by observation on the taker's own monotonic clock, never by comparing
clocks; the holder fences itself first. Against both stores (the ``store`` fixture)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from monitor import errors
from monitor.clock import FakeClock
from monitor.policy import Policy
from monitor.ports import Store
from monitor.recorder import RoleChange, Tally
from monitor.roles import Chores
from monitor.states import Backoff
from monitor.sweeper import Sweeper
from tests.conftest import run
from tests.faults import StoreSpy

POLICY = Policy(duration_s=60, heartbeat_s=15, grace_s=10, max_attempts=3, backoff=Backoff(base_s=60, cap_s=600))
INTERVAL_S = 60.0  # the sweep interval: how often a daemon without the role looks at it


@dataclass
class Fleet:
    store: StoreSpy
    clock: FakeClock
    tallies: dict[str, Tally] = field(default_factory=dict)

    def daemon(self, name: str, *, skew_ms: int = 0) -> Chores:
        return Chores(
            self.store,  # type: ignore[arg-type]
            self.clock.skewed(skew_ms),
            owner=f"{name}:1:aaaa",
            policy=POLICY,
            recorder=self.tallies.setdefault(name, Tally()),
            rng=random.Random(name),
        )

    async def look(self, *daemons: Chores) -> None:
        for daemon in daemons:
            await daemon.look(await self.store.fleet())

    def holder(self) -> str | None:
        role = run(self.store.fleet()).chores
        return role.owner.split(":")[0] if role else None


@pytest.fixture
def fleet(store: Store) -> Fleet:
    return Fleet(store=StoreSpy(store), clock=FakeClock())


def test_the_first_look_at_a_free_role_takes_it_and_the_others_leave_it(fleet: Fleet) -> None:
    a, b = fleet.daemon("a"), fleet.daemon("b")
    run(fleet.look(a, b))
    assert (a.held(), b.held()) == (True, False)
    assert fleet.holder() == "a"
    assert fleet.tallies["a"].roles == {RoleChange.TAKEN: 1} and not fleet.tallies["b"].roles
    assert fleet.store.calls["take_chores"] == 1  # b saw a holder: no write


def test_daemons_racing_for_a_free_role_one_wins(fleet: Fleet) -> None:
    daemons = [fleet.daemon(name) for name in "abcde"]

    async def scenario() -> None:
        seen = await fleet.store.fleet()  # every one of them read before any wrote
        for daemon in daemons:
            await daemon.look(seen)

    run(scenario())
    assert [d.held() for d in daemons] == [True, False, False, False, False]
    assert fleet.store.calls["take_chores"] == 5  # four refused by the condition, none holds it wrongly


@pytest.mark.parametrize("skew_ms", [0, 3_600_000, -3_600_000])
def test_a_silent_holder_is_taken_over_after_a_lease_plus_grace_of_the_taker_s_own_time(
    fleet: Fleet, skew_ms: int
) -> None:
    """The holder's clock an hour off changes nothing: only (token, heartbeat count) seen unchanged counts."""
    a, b = fleet.daemon("a", skew_ms=skew_ms), fleet.daemon("b")
    run(fleet.look(a, b))  # a takes it; b starts watching
    fleet.clock.advance(POLICY.takeover_after_s - 1)
    run(fleet.look(b))
    assert fleet.holder() == "a" and not b.held()  # not a second early
    assert not a.held()  # a stopped its chores long before: its renew deadline is two thirds of the lease
    fleet.clock.advance(1)
    run(fleet.look(b))
    assert b.held() and fleet.holder() == "b"
    assert fleet.tallies["b"].roles == {RoleChange.TAKEN_OVER: 1}
    run(a.renew())  # a wakes up: its renewal is refused, it knows it lost the role
    assert not a.held() and fleet.holder() == "b"
    assert fleet.tallies["a"].roles == {RoleChange.TAKEN: 1, RoleChange.LOST: 1}


def test_a_renewing_holder_is_never_taken_over(fleet: Fleet) -> None:
    a, b, c = fleet.daemon("a"), fleet.daemon("b"), fleet.daemon("c")
    run(fleet.look(a))
    for second in range(1, 20 * int(POLICY.duration_s) + 1):
        fleet.clock.advance(1)
        if second % int(POLICY.heartbeat_s) == 0:
            run(a.renew())
        if second % int(INTERVAL_S) == 0:
            run(fleet.look(b, c))
        assert a.held()
    assert fleet.holder() == "a" and fleet.store.calls["take_chores"] == 1
    assert fleet.store.calls["renew_chores"] == 20 * int(POLICY.duration_s) // int(POLICY.heartbeat_s)


def test_a_holder_that_cannot_renew_stops_its_chores_at_the_renew_deadline_and_resumes_on_renewal(
    fleet: Fleet,
) -> None:
    a = fleet.daemon("a")
    run(fleet.look(a))
    fleet.store.fail_before["renew_chores"] = 2
    for _ in range(2):
        fleet.clock.advance(POLICY.heartbeat_s)
        with pytest.raises(errors.AwsTemporaryError):
            run(a.renew())
    assert a.held()  # 30 s since the take: within the 40 s deadline
    fleet.clock.advance(POLICY.renew_deadline_s - 2 * POLICY.heartbeat_s)
    assert not a.held()
    run(a.renew())  # nobody took it meanwhile: still ours
    assert a.held() and fleet.holder() == "a"


def test_a_released_role_is_taken_at_the_next_look_not_a_lease_later(fleet: Fleet) -> None:
    a, b = fleet.daemon("a"), fleet.daemon("b")
    run(fleet.look(a, b))
    run(a.release())
    assert not a.held() and fleet.holder() is None
    run(fleet.look(b))
    assert b.held() and fleet.tallies["b"].roles == {RoleChange.TAKEN: 1}
    assert fleet.tallies["a"].roles == {RoleChange.TAKEN: 1, RoleChange.RELEASED: 1}
    run(a.release())  # a second release, or a late one: the new holder keeps the role
    assert fleet.holder() == "b"


def test_a_late_release_does_not_free_the_new_holder_s_role(fleet: Fleet) -> None:
    a, b = fleet.daemon("a"), fleet.daemon("b")
    run(fleet.look(a, b))
    fleet.clock.advance(POLICY.takeover_after_s)
    run(fleet.look(b))
    assert fleet.holder() == "b"
    run(a.release())  # a thinks it still holds the role: its token no longer matches
    assert fleet.holder() == "b" and b.held()


def test_a_take_whose_response_was_lost_is_settled_by_the_next_look(fleet: Fleet) -> None:
    a, b = fleet.daemon("a"), fleet.daemon("b")
    fleet.store.fail_after["take_chores"] = 1
    run(fleet.look(a))
    assert not a.held()  # the outcome is unknown: no chores yet
    assert a.next_look_s(fleet.clock.monotonic(), INTERVAL_S) == POLICY.heartbeat_s  # ... and a look soon
    run(fleet.look(b))
    assert not b.held()  # the write was applied: b sees a holder
    run(fleet.look(a))
    assert a.held() and fleet.tallies["a"].roles == {RoleChange.TAKEN: 1}


def test_the_next_look_is_timed_for_the_moment_a_silent_holder_may_be_taken_over(fleet: Fleet) -> None:
    a, b = fleet.daemon("a"), fleet.daemon("b")
    run(fleet.look(a))
    assert a.next_look_s(fleet.clock.monotonic(), INTERVAL_S) == INTERVAL_S  # the holder looks at its pace
    fleet.clock.advance(5)
    started = fleet.clock.monotonic()
    run(fleet.look(b))
    assert b.next_look_s(started, 600.0) == pytest.approx(POLICY.takeover_after_s + 0.01)
    assert b.next_look_s(started, INTERVAL_S) == INTERVAL_S


def test_only_the_holder_s_sweeper_reads_the_running_worksets(fleet: Fleet) -> None:
    """The sweep is a chore: a daemon without the role reads the fleet's control items and nothing else."""
    a, b = fleet.daemon("a"), fleet.daemon("b")

    def sweeper(chores: Chores) -> Sweeper:
        return Sweeper(fleet.store, fleet.clock, actor=f"sweeper:{chores.owner}", policy=POLICY, chores=chores)  # type: ignore[arg-type]

    swept_by_a, swept_by_b = sweeper(a), sweeper(b)
    fleet.store.before["fleet"] = _noop
    run(swept_by_a.sweep_once())
    run(swept_by_b.sweep_once())
    assert (a.held(), b.held()) == (True, False)
    assert fleet.store.calls["fleet"] == 2 and fleet.store.calls["running"] == 0  # the counter says 0 running
    swept_by_a.distrust_counter()
    swept_by_b.distrust_counter()
    run(swept_by_a.sweep_once())
    run(swept_by_b.sweep_once())
    assert fleet.store.calls["running"] == 1  # a's: b does not sweep


async def _noop() -> None:
    return None


def test_a_role_the_policy_refuses_leaves_the_daemon_claiming_not_crashing(fleet: Fleet) -> None:
    """AccessDenied on the role item (a permanent error): taking or renewing it is given up and logged; nothing
    raises, so the daemon's sweeper loop lives on (the chores-unheld alert tells the operator)."""
    a, b = fleet.daemon("a"), fleet.daemon("b")

    async def denied() -> None:  # StoreSpy runs it before the call: the call fails as AWS would refuse it
        raise errors.AwsError("AccessDeniedException: not authorized to perform dynamodb:UpdateItem")

    fleet.store.before["take_chores"] = denied
    run(fleet.look(a))
    assert not a.held() and fleet.holder() is None and not fleet.tallies["a"].roles
    run(fleet.look(b))
    assert b.held()
    fleet.store.before["renew_chores"] = denied
    run(b.renew())
    assert not b.held() and fleet.tallies["b"].roles == {RoleChange.TAKEN: 1, RoleChange.LOST: 1}
