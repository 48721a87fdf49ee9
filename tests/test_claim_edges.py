"""Claim edges (issue 14), as scripted interleavings on one fake clock, against the in-memory store and DynamoDB.

- An operator's ``release`` (or ``retry`` after a cancel) of a running workset holds it back until the old holder
  has surely stopped, judged by each claimer's own monotonic clock: no wall clock, the operator's least of all.
- No optimisation of the claim round hides a due retrying workset for longer than a stated bound.
- A claim whose outcome is unknown (response lost, re-read failed) is resolved by the next sweep, not abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from monitor import actions, by_hand, config, errors, states
from monitor.app import App
from monitor.clock import FakeClock
from monitor.leases import Claimer
from monitor.model import FLEET_ID, Due, Event, EventType, Lease, Priority, State, WorksetId
from monitor.ports import Store
from monitor.recorder import Claim
from monitor.states import Action
from monitor.steps import Runner
from monitor.supervisor import Services, Supervisor
from monitor.sweeper import sweep_tick
from tests.conftest import run
from tests.faults import StoreSpy
from tests.test_leases import POLICY, World, claim_one

WS = WorksetId("ws-1")


@pytest.fixture
def world(store: Store) -> World:
    return World(store=StoreSpy(store), clock=FakeClock())


def _settings() -> config.Settings:
    lease = config.LeaseConfig(duration_s=POLICY.duration_s, heartbeat_s=POLICY.heartbeat_s, grace_s=POLICY.grace_s)
    run_ = config.RunConfig(max_attempts=POLICY.max_attempts)
    return config.Settings(lease=lease, run=run_)


def operator(world: World, *, skew_ms: int) -> App:
    """The CLI's composition of an operator command, on a host whose wall clock is ``skew_ms`` off."""
    return App(
        loaded=config.Loaded(settings=_settings(), path=Path("test.toml")),
        args=argparse.Namespace(reason="host-a wedged", json=False),
        clock=world.clock.skewed(skew_ms),
    )


async def _act(world: World, action: Action, *, skew_ms: int = 0, workset_id: WorksetId = WS) -> None:
    ctx = operator(world, skew_ms=skew_ms).context(action.value)
    await actions.act(world.store, workset_id, action, ctx)  # type: ignore[arg-type]


# --- 1. the hold-off after release, and after retry of a cancelled run, is clock-free ------------------------------


def test_a_release_from_a_slow_clock_waits_until_the_old_holder_has_stopped(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        await _act(world, Action.FORCE_RELEASE, skew_ms=-60_000)  # the operator's clock is a minute slow
        b = world.daemon("host-b")
        assert await b.claim(slots=1) == []  # b's first sight of the released workset
        world.clock.advance(POLICY.takeover_after_s - 1)
        assert await b.claim(slots=1) == []
        assert held.fenced()  # by now the old holder has stopped on its own, whatever it heard
        world.clock.advance(1)
        [won] = await b.claim(slots=1)
        assert (won.epoch, won.ws.attempts) == (2, 1)  # the released attempt was given back
        assert won.ws.held_off_for is None  # the claim clears the mark

    run(scenario())


def test_each_claimer_counts_the_hold_off_from_its_own_first_sight(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        await claim_one(world.daemon("host-a"))
        await _act(world, Action.FORCE_RELEASE, skew_ms=-60_000)
        ws = await world.store.get(WS)
        assert ws is not None and ws.state is State.READY and ws.held_off_for == "host-a:1:aaaa"
        b, c = world.daemon("host-b"), world.daemon("host-c", skew_ms=3_600_000)  # an hour fast: no matter
        assert await b.claim(slots=1) == []
        world.clock.advance(POLICY.takeover_after_s / 2)
        assert await c.claim(slots=1) == []  # c sees it only now
        world.clock.advance(POLICY.takeover_after_s / 2)
        assert await c.claim(slots=1) == []  # c has seen it for half the time: not yet
        assert c.next_round_s(600) == pytest.approx(POLICY.takeover_after_s / 2 + 0.01)
        [won] = await b.claim(slots=1)
        assert won.workset_id == "ws-1"

    run(scenario())


@pytest.mark.parametrize("operator_skew_ms", [3_600_000, -3_600_000])
def test_a_workset_an_operator_makes_ready_is_claimed_at_once_whatever_either_clock_says(
    world: World, operator_skew_ms: int
) -> None:
    """Registered (or re-opened) by an operator whose clock is an hour ahead, a ready workset carried an
    available_at an hour in the future, and no daemon nominated it for an hour; a daemon whose clock is behind
    likewise ignored fresh ready work. Only a retrying workset waits for its available_at."""

    async def scenario() -> None:
        app = operator(world, skew_ms=operator_skew_ms)
        await actions.register(
            world.store,  # type: ignore[arg-type]
            workset_id=WS,
            bucket="lab-bucket",
            prefix="worksets/ws-1/",
            priority=Priority.NORMAL,
            ctx=app.context("registered by hand"),
        )
        daemon_skew_ms = -operator_skew_ms // 2  # the daemons' clocks are off the other way
        [won] = await world.daemon("host-a", skew_ms=daemon_skew_ms).claim(slots=1)
        assert won.workset_id == WS
        await won.fail("exit 75", temporary=True)  # retrying: now its backoff counts (the writer's clock)
        assert await world.daemon("host-b", skew_ms=daemon_skew_ms).claim(slots=1) == []

    run(scenario())


def test_a_hand_run_of_a_released_workset_waits_out_the_hold_off_on_its_own_clock(world: World) -> None:
    """`run --workset ID` claims like any claimer: not before the old holder has surely stopped."""

    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        await _act(world, Action.FORCE_RELEASE, skew_ms=-60_000)
        said: list[str] = []
        started = world.clock.monotonic()
        hand = await by_hand.claim(
            world.store, world.clock.skewed(3_600_000), workset_id=WS, owner="op:1:bbbb", policy=POLICY, say=said.append
        )
        assert world.clock.monotonic() - started == POLICY.takeover_after_s and held.fenced()
        assert said == [
            f"ws-1 was taken from host-a:1:aaaa, whose step may still be running: waiting {70:g} s "
            "([lease] duration_s + grace_s) before starting"
        ]
        assert (hand.epoch, hand.ws.lease and hand.ws.lease.owner, hand.ws.held_off_for) == (2, "op:1:bbbb", None)

    run(scenario())


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("unknown", "workset ws-9 is not registered"),
        ("running", "ws-1 is being run by host-a:1:aaaa: not started here"),
        ("error", "ws-1 is error: only a ready or retrying workset can be run; `workset-monitor retry ws-1`"),
        ("not due", "ws-1 is retrying and not due until "),
    ],
)
def test_a_hand_run_is_refused_before_anything_is_written(world: World, setup: str, message: str) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        if setup != "unknown":
            held = await claim_one(world.daemon("host-a"))
            if setup == "error":
                await held.fail("exit 2", temporary=False)
            elif setup == "not due":
                await held.fail("exit 75", temporary=True)
        before = await world.store.history(WS)
        with pytest.raises(errors.MonitorError, match=re.escape(message)) as caught:
            await by_hand.claim(
                world.store,
                world.clock,
                workset_id=WorksetId("ws-9" if setup == "unknown" else "ws-1"),
                owner="op:1:bbbb",
                policy=POLICY,
                say=print,
            )
        assert caught.value.exit_code == 1
        assert await world.store.history(WS) == before

    run(scenario())


def test_retry_after_cancelling_a_running_workset_is_held_off_but_not_after_cancelling_a_ready_one(
    world: World,
) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        await claim_one(world.daemon("host-a"))
        await _act(world, Action.CANCEL, skew_ms=-60_000)
        await _act(world, Action.RETRY, skew_ms=-60_000)
        b = world.daemon("host-b")
        assert await b.claim(slots=1) == []
        world.clock.advance(POLICY.takeover_after_s)
        [won] = await b.claim(slots=1)
        await won.complete()

        await world.register("ws-2")  # never claimed: nobody can be running it
        for action in (Action.CANCEL, Action.RETRY):
            await _act(world, action, skew_ms=-60_000, workset_id=WorksetId("ws-2"))
        [now] = await b.claim(slots=1)
        assert now.workset_id == "ws-2"

    run(scenario())


def test_the_hold_off_mark_survives_export_and_import_and_shows(dynamodb: Any) -> None:
    import io

    from monitor import render
    from monitor.aws import backup, schema
    from monitor.aws.dynamo import DynamoStore
    from monitor.config import TableConfig

    async def scenario() -> None:
        for name in ("one", "two"):
            schema.ensure_table(dynamodb, TableConfig(name=name))
        world = World(store=StoreSpy(DynamoStore(dynamodb, "one")), clock=FakeClock())
        await world.register("ws-1")
        await claim_one(world.daemon("host-a"))
        await _act(world, Action.FORCE_RELEASE)
        out = io.StringIO()
        backup.export(dynamodb, "one", out, now_iso="now")
        backup.load(dynamodb, "two", backup.read(out.getvalue().splitlines(), source="test"))
        restored = await DynamoStore(dynamodb, "two").get(WS)
        assert restored is not None and restored.held_off_for == "host-a:1:aaaa" and restored.lease is None
        assert render.workset_dict(restored)["held_off_for"] == "host-a:1:aaaa"
        b = Claimer(DynamoStore(dynamodb, "two"), world.clock, owner="host-b:1:bbbb", policy=POLICY)
        assert await b.claim(slots=1) == []

    run(scenario())


def test_ignoring_a_running_workset_marks_it_held_off_until_claimed(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        await claim_one(world.daemon("host-a"))
        await _act(world, Action.IGNORE)
        await _act(world, Action.RETRY_FORCE)
        ws = await world.store.get(WS)
        assert ws is not None and ws.state is State.READY and ws.held_off_for == "host-a:1:aaaa"

    run(scenario())


# --- 2. a retrying workset the index hides for a while is still claimed within a bound ------------------------------

ROUND_S = 60.0  # the claim rounds of an idle daemon: every scan interval
BOUND_S = 300.0 + ROUND_S  # leases.RETRYING_REREAD_S, plus the round that notices


class HidesRetrying:
    """An index that lags: the first ``reads`` reads of the retrying worksets do not show any of them."""

    def __init__(self, store: Any, clock: FakeClock, *, reads: int) -> None:
        self._store, self._clock = store, clock
        self.hidden_reads = reads
        self.visible_from = clock.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def due(self, **kw: Any) -> Due:
        due: Due = await self._store.due(**kw)
        if not (due.retrying_read and self.hidden_reads > 0):
            return due
        self.hidden_reads -= 1
        self.visible_from = self._clock.monotonic()
        candidates = [ws for ws in due.candidates if ws.state is not State.RETRYING]
        return dataclasses.replace(due, candidates=candidates, next_retry_ms=None, next_retry_known=True)


@pytest.mark.parametrize("hidden_reads", [2, 5])
def test_a_retrying_workset_the_index_hides_is_claimed_within_the_bound(world: World, hidden_reads: int) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        assert await held.fail("exit 75", temporary=True) is State.RETRYING
        fleet = await world.store.fleet()  # the sweeper's read of the counter, reused by every round below
        index = HidesRetrying(world.store, world.clock, reads=hidden_reads)
        b = Claimer(index, world.clock, owner="host-b:1:bbbb", policy=POLICY)  # type: ignore[arg-type]
        assert await b.claim(slots=1, fleet=fleet) == []
        assert await b.claim(slots=1, fleet=fleet) == []  # a round milliseconds later: a wake-up
        due_at = (held.ws.available_at_ms - world.clock.now_ms()) / 1000 + world.clock.monotonic()
        start = world.clock.monotonic()
        while world.clock.monotonic() - start < 2 * 3600 and not await b.claim(slots=1, fleet=fleet):
            world.clock.advance(ROUND_S)
        claimed_at = world.clock.monotonic()
        assert claimed_at - start < 2 * 3600, "never claimed"
        assert claimed_at - max(due_at, index.visible_from) <= BOUND_S

    run(scenario())


def test_an_idle_claimer_still_reads_the_retrying_worksets_rarely(world: World) -> None:
    async def scenario() -> None:
        from tests.test_leases import DueLog

        log = DueLog(world.store)
        b = Claimer(log, world.clock, owner="host-b:1:bbbb", policy=POLICY)  # type: ignore[arg-type]
        fleet = await world.store.fleet()
        for _ in range(60):  # an hour of idle rounds
            assert await b.claim(slots=1, fleet=fleet) == []
            world.clock.advance(ROUND_S)
        assert 2 <= sum(log.retrying) <= 2 + 3600 / 300

    run(scenario())


# --- 3. a claim whose outcome is unknown is resolved by the next sweep ---------------------------------------------


def daemon(world: World, store: Any = None) -> Supervisor:
    services = Services(
        store=store or world.store,
        source=None,  # type: ignore[arg-type]
        clock=world.clock,
        runner=Runner(world.clock, base_env={}),
        owner="host-a:1:aaaa",
    )
    return Supervisor(_settings(), services)


def test_a_claim_whose_outcome_is_unknown_is_given_back_unrun_within_one_sweep(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        sup = daemon(world)
        world.store.fail_after["commit"] = 1  # the claim lands, its response is lost...
        world.store.fail_before["get"] = 1  # ...and so is the re-read that would have found it
        assert await sup.intake.claimer.claim(slots=1) == []
        ws = await world.store.get(WS)
        assert ws is not None and ws.state is State.IN_PROGRESS and ws.attempts == 1
        await sweep_tick(sup.sweeper, sup.intake)
        ws = await world.store.get(WS)
        assert ws is not None and (ws.state, ws.attempts, ws.lease) == (State.READY, 0, None)
        released = (await world.store.history(WS))[-1]
        assert released.type is EventType.RELEASED and "response was lost" in released.reason
        assert released.actor == "host-a:1:aaaa" and released.epoch == 1
        [held] = await sup.intake.claimer.claim(slots=1)  # and it is claimable at once: nothing ran
        assert held.epoch == 2 and held.ws.attempts == 1

    run(scenario())


def test_an_unknown_claim_that_never_landed_is_forgotten(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        sup = daemon(world)
        world.store.fail_before["commit"] = 1  # not applied (but it might still be, later)
        world.store.fail_before["get"] = 1
        assert await sup.intake.claimer.claim(slots=1) == []
        await sweep_tick(
            sup.sweeper, sup.intake
        )  # still ready at the same version: the claim may land yet, so it is kept
        assert sup.intake.claimer.unknown_claims == 1
        [held] = await world.daemon("host-b").claim(slots=1)  # the version moves on: it can never land now
        await sweep_tick(sup.sweeper, sup.intake)
        assert sup.intake.claimer.unknown_claims == 0
        ws = await world.store.get(WS)
        assert ws is not None and ws.lease is not None and ws.lease.token == held.token

    run(scenario())


class LateCommit:
    """A claim whose request reaches the table only after the claimer gave up on it (and after its re-read)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.late: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, decision: Any, **kw: Any) -> Any:
        if self.late is None:
            self.late = (decision, kw)
            raise errors.AwsTemporaryError("injected: timed out, still on its way")
        return await self._store.commit(decision, **kw)

    async def land(self) -> None:
        decision, kw = self.late
        await self._store.commit(decision, **kw)


def test_an_unknown_claim_that_lands_after_its_re_read_is_given_back_at_the_next_sweep(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        late = LateCommit(world.store)
        sup = daemon(world, late)
        assert await sup.intake.claimer.claim(slots=1) == []  # the re-read still shows it ready
        await sweep_tick(sup.sweeper, sup.intake)
        assert sup.intake.claimer.unknown_claims == 1
        await late.land()
        ws = await world.store.get(WS)
        assert ws is not None and ws.state is State.IN_PROGRESS  # under our token, nobody running it
        await sweep_tick(sup.sweeper, sup.intake)
        ws = await world.store.get(WS)
        assert ws is not None and (ws.state, ws.attempts) == (State.READY, 0) and sup.intake.claimer.unknown_claims == 0

    run(scenario())


# --- 5. a daemon that cannot renew stops taking work ---------------------------------------------------------------


def test_a_daemon_whose_heartbeats_are_refused_stops_claiming_until_one_renews(world: World) -> None:
    """Seen in the chaos run: a daemon whose heartbeats were answered AccessDenied for 8 s claimed 29 worksets and lost
    each at once; every one waited for a takeover and spent an attempt (with max_attempts 3, a host with a broken IAM
    role dead-letters the queue). After a holding is lost because its own renewal failed, the claimer takes no new
    work for a lease, doubling while renewals keep failing; a renewal that succeeds ends the cool-off."""

    async def scenario() -> None:
        await world.register("ws-1", "ws-2", "ws-3", "ws-4")
        daemon = world.daemon("host-a")
        first = await claim_one(daemon)
        denied = errors.AwsError("heartbeating ws-1: access denied (AccessDeniedException: injected)")

        async def refuse(*_: Any, **__: Any) -> None:
            raise denied

        world.store.before["heartbeat"] = refuse
        await first.keep_alive(stop=asyncio.Event())
        assert first.lost.is_set() and "access denied" in first.lost_reason
        assert await daemon.claim(slots=1) == []  # cooling off: one lease
        world.clock.advance(POLICY.duration_s + 0.1)
        second = await claim_one(daemon)
        world.store.before["heartbeat"] = refuse
        await second.keep_alive(stop=asyncio.Event())
        world.clock.advance(POLICY.duration_s + 0.1)
        assert await daemon.claim(slots=1) == []  # still failing: twice as long
        world.clock.advance(POLICY.duration_s)
        third = await claim_one(daemon)
        assert await third.heartbeat_once()  # renewals work again
        assert len(await daemon.claim(slots=1)) == 1  # no cool-off

    run(scenario())


# --- the maintenance pause ------------------------------------------------------------------------------------------


def fleet_event(kind: EventType, at_ms: int, *, pending: bool = False) -> Event:
    return Event(
        workset_id=FLEET_ID,
        seq=at_ms,
        type=kind,
        at_ms=at_ms,
        actor="operator:me@host",
        from_state=None,
        to_state=None,
        reason="kernel upgrade",
        priority=Priority.URGENT,
        pending=pending,
    )


def test_a_pause_refuses_every_claim_exactly_even_one_decided_before_it(world: World) -> None:
    """`pause` writes the fleet counter item, which every claim's transaction already writes: a claim decided on a
    read from before the pause is refused by its own write, with no read added to any daemon's idle path."""

    async def scenario() -> None:
        await world.register("ws-1", "ws-2")
        a = world.daemon("host-a")
        ws = await world.store.get(WS)
        assert ws is not None
        lease = Lease(token="t" * 32, owner="host-a:1:aaaa", heartbeat_at_ms=0, expires_at_ms=1)
        claim = states.decide(
            ws, Action.CLAIM, POLICY.context(now_ms=world.clock.now_ms(), actor="a", reason="x"), lease=lease
        )
        paused = fleet_event(EventType.PAUSED, 1, pending=True)
        assert await world.store.pause(reason="kernel upgrade", by="operator:me@host", now_ms=1, event=paused) is None
        with pytest.raises(errors.Paused, match="intake is paused fleet-wide: kernel upgrade"):
            await world.store.commit(claim)
        assert await a.claim(slots=2) == [] and world.tallies["host-a"].claims == {Claim.PAUSED: 1}
        with pytest.raises(errors.Conflict, match="`workset-monitor resume` ends the pause"):
            await by_hand.claim(world.store, world.clock, workset_id=WS, owner="op:1:b", policy=POLICY, say=print)
        again = await world.store.pause(
            reason="other", by="operator:you@host", now_ms=2, event=fleet_event(EventType.PAUSED, 2)
        )
        assert again is not None and (again.reason, again.by, again.at_ms) == ("kernel upgrade", "operator:me@host", 1)
        fleet = await world.store.fleet()
        assert fleet.paused == again and fleet.running == 0
        with pytest.raises(errors.Conflict, match="same time"):  # two fleet events in one millisecond
            await world.store.resume(event=fleet_event(EventType.RESUMED, 1))
        assert (await world.store.fleet()).paused == again  # ...and nothing was written
        ended = await world.store.resume(event=fleet_event(EventType.RESUMED, 3))
        assert ended == again and await world.store.resume(event=fleet_event(EventType.RESUMED, 4)) is None
        assert len(await a.claim(slots=2)) == 2
        trail = await world.store.history(FLEET_ID)  # the refused pause and resume wrote nothing
        assert [(e.type, e.seq, e.to_state, e.pending) for e in trail] == [
            (EventType.PAUSED, 1, None, True),
            (EventType.RESUMED, 3, None, False),
        ]
        assert [e.event_id for e in await world.store.pending_events(limit=10)] == ["#fleet#1"]

    run(scenario())
