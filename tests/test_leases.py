"""Leases, told as scripted interleavings of simulated daemons on one fake clock (no real sleeps).

Every scenario runs against the in-memory store and DynamoDB (moto).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from monitor import actions, errors
from monitor.clock import FakeClock
from monitor.leases import INDEX_SETTLE_S, Claimer, Holding, Policy
from monitor.model import EventType, Fleet, Priority, State, WorksetId
from monitor.ports import Store
from monitor.recorder import Tally
from monitor.states import Action, Backoff, Context
from monitor.sweeper import Sweeper
from tests.conftest import run
from tests.faults import StoreSpy

POLICY = Policy(duration_s=60, heartbeat_s=15, grace_s=10, max_attempts=3, backoff=Backoff(base_s=60, cap_s=600))
HOUR_MS = 3_600_000


@dataclass
class World:
    store: StoreSpy
    clock: FakeClock

    tallies: dict[str, Tally] = field(default_factory=dict)  # what each daemon counted

    def daemon(self, name: str, *, skew_ms: int = 0, policy: Policy = POLICY) -> Claimer:
        return Claimer(
            self.store,
            self.clock.skewed(skew_ms),
            owner=f"{name}:1:aaaa",
            policy=policy,  # type: ignore[arg-type]
            rng=random.Random(name),
            recorder=self.tallies.setdefault(name, Tally()),
        )

    def sweeper(self, name: str = "sweeper", *, policy: Policy = POLICY) -> Sweeper:
        return Sweeper(self.store, self.clock, actor=f"{name}:9:ffff", policy=policy, rng=random.Random(0))  # type: ignore[arg-type]

    async def register(self, *names: str, priority: Priority = Priority.NORMAL) -> None:
        for name in names:
            await actions.register(
                self.store,  # type: ignore[arg-type]
                workset_id=WorksetId(name),
                bucket="lab-bucket",
                prefix=f"worksets/{name}/",
                priority=priority,
                ctx=Context(now_ms=self.clock.now_ms(), actor="scanner"),
            )

    async def events(self, name: str) -> list[EventType]:
        return [e.type for e in await self.store.history(WorksetId(name))]


@pytest.fixture
def world(store: Store) -> World:
    return World(store=StoreSpy(store), clock=FakeClock())


async def claim_one(daemon: Claimer) -> Holding:
    [holding] = await daemon.claim(slots=1)
    return holding


def test_a_paused_holder_is_taken_over_and_can_never_write_again(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        a, b, sweeper = world.daemon("host-a"), world.daemon("host-b"), world.sweeper()
        held_a = await claim_one(a)
        assert held_a.epoch == 1

        await sweeper.sweep_once()  # first sight of A's lease
        world.clock.advance(POLICY.takeover_after_s - 1)
        assert await sweeper.sweep_once() == []  # silent, but not yet for a full lease plus grace
        world.clock.advance(1)
        [expiry] = await sweeper.sweep_once()
        assert expiry.after.state is State.RETRYING and expiry.event.type is EventType.LEASE_EXPIRED

        world.clock.advance(POLICY.backoff.cap_s)  # past any backoff
        held_b = await claim_one(b)
        assert held_b.epoch == 2

        # A wakes up. It fences itself without asking the table...
        calls = sum(world.store.calls.values())
        assert not await held_a.heartbeat_once()
        for write in (held_a.step_finished("stage"), held_a.complete()):
            with pytest.raises(errors.LeaseLost):
                await write
        assert sum(world.store.calls.values()) == calls
        # ...and a zombie that skipped that check is refused by the table itself.
        held_a.renewed_at = world.clock.monotonic()
        held_a.lost.clear()
        assert not await held_a.heartbeat_once()
        assert "taken over by host-b" in held_a.lost_reason
        held_a.lost.clear()
        with pytest.raises(errors.LeaseLost):
            await held_a.complete()

        await held_b.step_finished("stage")
        await held_b.complete()
        history = await world.store.history(WorksetId("ws-1"))
        completes = [e for e in history if e.type is EventType.COMPLETE]
        assert len(completes) == 1 and completes[0].epoch == 2 and completes[0].actor == "host-b:1:aaaa"
        assert [e.type for e in history] == [
            EventType.REGISTERED,
            EventType.STARTED,
            EventType.LEASE_EXPIRED,
            EventType.STARTED,
            EventType.STEP_FINISHED,
            EventType.COMPLETE,
        ]

    run(scenario())


def test_a_heartbeat_whose_response_was_lost_keeps_the_lease(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        world.store.fail_after["heartbeat"] = 1
        world.clock.advance(POLICY.heartbeat_s)
        assert not await held.heartbeat_once()  # applied, but we could not know
        world.clock.advance(POLICY.heartbeat_retry_s)
        assert await held.heartbeat_once()  # the retry carries the same token: accepted
        assert not held.lost.is_set()
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.hb_count == 2 and ws.lease is not None and ws.lease.token == held.token

    run(scenario())


@pytest.mark.parametrize("first", ["heartbeat", "sweeper"])
def test_sweeper_against_a_last_moment_heartbeat_exactly_one_wins(world: World, first: str) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a", policy=_patient()))
        sweeper = world.sweeper()
        await sweeper.sweep_once()
        world.clock.advance(POLICY.takeover_after_s)

        async def heartbeat_lands() -> None:
            assert await held.heartbeat_once()

        if first == "heartbeat":  # lands between the sweeper's read and its conditional write
            world.store.before["commit"] = heartbeat_lands
            assert await sweeper.sweep_once() == []
            ws = await world.store.get(WorksetId("ws-1"))
            assert ws is not None and ws.state is State.IN_PROGRESS and not held.lost.is_set()
        else:
            assert len(await sweeper.sweep_once()) == 1
            assert not await held.heartbeat_once()
            assert held.lost.is_set() and "retrying" in held.lost_reason
        assert (await world.events("ws-1")).count(EventType.LEASE_EXPIRED) == (first == "sweeper")

    run(scenario())


def _patient() -> Policy:
    """A holder that has not self-fenced yet (so the race is decided by the table, not by the holder)."""
    return Policy(duration_s=600, heartbeat_s=15, grace_s=10, max_attempts=3)


@pytest.mark.parametrize("skew_ms", [-HOUR_MS, HOUR_MS])
def test_a_holder_with_a_wrong_wall_clock_changes_nothing(world: World, skew_ms: int) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        world.clock.advance(2 * HOUR_MS / 1000)  # due by any of the clocks involved
        held = await claim_one(world.daemon("host-skewed", skew_ms=skew_ms))
        sweeper = world.sweeper()
        for _ in range(12):  # three leases' worth of healthy heartbeats: never taken over
            await sweeper.sweep_once()
            world.clock.advance(POLICY.heartbeat_s)
            assert await held.heartbeat_once()
        assert await sweeper.sweep_once() == []
        # Then it dies: the takeover comes exactly a lease plus grace after the last change, as for anyone.
        world.clock.advance(POLICY.takeover_after_s - 0.5)
        assert await sweeper.sweep_once() == []
        world.clock.advance(0.5)
        assert len(await sweeper.sweep_once()) == 1

    run(scenario())


def test_the_holder_fences_itself_before_anyone_can_take_over(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        sweeper = world.sweeper()
        await sweeper.sweep_once()
        world.store.fail_before["heartbeat"] = 10**6  # the table is unreachable for this holder from now on
        while not held.lost.is_set():
            world.clock.advance(POLICY.heartbeat_retry_s)
            await held.heartbeat_once()
            assert await sweeper.sweep_once() == [], "taken over while the holder still believed it held the lease"
        fenced_at = world.clock.monotonic()
        world.clock.advance(POLICY.takeover_after_s)
        assert len(await sweeper.sweep_once()) == 1
        margin = POLICY.takeover_after_s - POLICY.renew_deadline_s
        assert margin >= 20 and fenced_at <= 1000 + POLICY.renew_deadline_s + POLICY.heartbeat_retry_s

    run(scenario())


def test_keep_alive_heartbeats_until_stopped(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        stop = asyncio.Event()
        start = world.clock.monotonic()

        async def stop_after_five() -> None:
            if world.store.calls["heartbeat"] >= 5:
                stop.set()
            else:
                world.store.before["heartbeat"] = stop_after_five

        world.store.before["heartbeat"] = stop_after_five
        await asyncio.wait_for(held.keep_alive(stop), timeout=5)
        assert not held.lost.is_set() and world.tallies["host-a"].heartbeats["ok"] == 5
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.hb_count == 5
        elapsed = world.clock.monotonic() - start  # about one heartbeat interval between renewals (with jitter)
        assert 4 * 0.9 * POLICY.heartbeat_s <= elapsed <= 4 * POLICY.heartbeat_s

    run(scenario())


def test_keep_alive_stops_when_the_lease_is_cancelled(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        await actions.act(
            world.store,
            WorksetId("ws-1"),
            Action.CANCEL,  # type: ignore[arg-type]
            Context(now_ms=world.clock.now_ms(), actor="operator:me@x", reason="wrong samples"),
        )
        await asyncio.wait_for(held.keep_alive(asyncio.Event()), timeout=5)
        assert held.lost.is_set() and "cancelled" in held.lost_reason

    run(scenario())


def test_retries_back_off_and_a_poison_workset_is_dead_lettered(world: World) -> None:
    async def scenario() -> None:
        await world.register("poison")
        daemon = world.daemon("host-a")
        delays = []
        for attempt in range(1, POLICY.max_attempts + 1):
            held = await claim_one(daemon)
            assert held.ws.attempts == attempt
            state = await held.fail(f"exit 75 on attempt {attempt}", temporary=True)
            ws = await world.store.get(WorksetId("poison"))
            assert ws is not None and ws.state is state
            if attempt < POLICY.max_attempts:
                assert state is State.RETRYING
                delays.append((ws.available_at_ms - world.clock.now_ms()) / 1000)
                assert await daemon.claim(slots=1) == []  # not due yet
                world.clock.advance(delays[-1])
            else:
                assert state is State.ERROR and ws.error_category == "step"
        assert 30 <= delays[0] <= 60 and 60 <= delays[1] <= 120
        assert await daemon.claim(slots=1) == []
        assert (await world.events("poison")).count(EventType.STARTED) == POLICY.max_attempts

    run(scenario())


def test_a_permanent_failure_goes_straight_to_error(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        assert await held.fail("exit 2: bad manifest", temporary=False) is State.ERROR
        assert (await world.events("ws-1"))[-1] is EventType.ERROR

    run(scenario())


def test_release_gives_the_workset_back_without_a_failure(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        daemon = world.daemon("host-a")
        for _ in range(5):  # five restarts in a row must not use up the attempts
            held = await claim_one(daemon)
            await held.release("shutdown")
            assert held.lost.is_set()
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and (ws.state, ws.attempts, ws.epoch) == (State.READY, 0, 5)
        with pytest.raises(errors.LeaseLost):
            await held.complete()  # released: we hold nothing any more

    run(scenario())


def test_claims_follow_priority_and_a_lost_race_is_counted(world: World) -> None:
    async def scenario() -> None:
        await world.register("low", priority=Priority.LOW)
        await world.register("normal")
        await world.register("urgent", priority=Priority.URGENT)
        stale = await world.store.due(now_ms=world.clock.now_ms(), limit=10)  # B reads the index first...
        held = await world.daemon("host-a").claim(slots=2)  # ...then A claims
        assert [h.workset_id for h in held] == ["urgent", "normal"]

        tally = Tally()
        b = Claimer(StaleIndex(world.store, stale), world.clock, owner="host-b:1:bbbb", policy=POLICY, recorder=tally)  # type: ignore[arg-type]
        [won] = await b.claim(slots=3)
        assert won.workset_id == "low" and (tally.claims["lost"], tally.claims["won"]) == (2, 1)

    run(scenario())


class StaleIndex:
    """A store whose index answers from an old snapshot (DynamoDB's GSIs are eventually consistent)."""

    def __init__(self, store: object, snapshot: object) -> None:
        self._store, self._snapshot = store, snapshot

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def due(self, **_: object) -> object:
        return self._snapshot


def test_a_claim_whose_response_was_lost_is_still_ours(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        world.store.fail_after["commit"] = 1
        held = await claim_one(world.daemon("host-a"))
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.lease is not None and ws.lease.token == held.token

    run(scenario())


def test_a_write_whose_response_was_lost_is_not_applied_twice(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        world.store.fail_after["commit"] = 1
        world.store.fail_before["commit"] = 0
        await held.step_finished("stage")
        world.store.fail_after["commit"] = 1
        await held.complete()
        events = await world.events("ws-1")
        assert events == [EventType.REGISTERED, EventType.STARTED, EventType.STEP_FINISHED, EventType.COMPLETE]

    run(scenario())


def test_a_write_retries_through_transient_errors(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        world.store.fail_before["commit"] = 3
        await held.complete()
        assert (await world.events("ws-1"))[-1] is EventType.COMPLETE

    run(scenario())


def test_a_concurrent_operator_change_does_not_cost_the_holder_its_lease(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        await actions.act(
            world.store,
            WorksetId("ws-1"),
            Action.SET_PRIORITY,  # type: ignore[arg-type]
            Context(now_ms=world.clock.now_ms(), actor="operator:me@x"),
            priority=Priority.URGENT,
        )
        await held.complete()  # decided on a stale version: re-read, still ours, decided again
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and (ws.state, ws.priority) == (State.COMPLETE, Priority.URGENT)

    run(scenario())


def test_operator_release_takes_the_lease_and_holds_the_workset_back_until_the_holder_has_stopped(
    world: World,
) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        ctx = Context(now_ms=world.clock.now_ms(), actor="operator:me@x", reason="host-a wedged")
        await actions.act(world.store, WorksetId("ws-1"), Action.FORCE_RELEASE, ctx)  # type: ignore[arg-type]
        assert not await held.heartbeat_once() and "ready" in held.lost_reason
        b = world.daemon("host-b")
        assert await b.claim(slots=1) == []
        world.clock.advance(POLICY.takeover_after_s)
        assert (await claim_one(b)).ws.attempts == 1  # the released attempt was given back

    run(scenario())


@pytest.mark.parametrize("cap", [1, 2])
def test_the_fleet_cap_is_exact(world: World, cap: int) -> None:
    async def scenario() -> None:
        await world.register(*(f"ws-{i}" for i in range(5)))
        policy = Policy(duration_s=60, heartbeat_s=15, grace_s=10, fleet_cap=cap)
        daemons = [world.daemon(f"host-{i}", policy=policy) for i in range(3)]
        held = [h for d in daemons for h in await d.claim(slots=2)]
        assert len(held) == cap == (await world.store.fleet()).running
        assert sum(t.claims["fleet_full"] for t in world.tallies.values()) >= 1
        await held[0].complete()
        assert (await world.store.fleet()).running == cap - 1
        more = await daemons[2].claim(slots=2)
        assert len(more) == 1 and (await world.store.fleet()).running == cap
        # Every way out of in_progress gives the slot back: failure, release, operator cancel, takeover.
        await more[0].fail("boom", temporary=True)
        assert (await world.store.fleet()).running == cap - 1

    run(scenario())


def test_a_cap_set_while_worksets_run_counts_them_too(world: World) -> None:
    """Worksets claimed without a cap are counted on the fleet's shards, which the cap's own condition does not read
    (monitor/aws/codec.py): a claimer with a cap also checks the fleet's whole count, as last read, before a claim."""

    async def scenario() -> None:
        await world.register(*(f"ws-{i}" for i in range(5)))
        assert len(await world.daemon("host-a").claim(slots=3)) == 3  # no cap yet
        capped = world.daemon("host-b", policy=Policy(duration_s=60, heartbeat_s=15, grace_s=10, fleet_cap=2))
        fleet = await world.store.fleet()
        assert await capped.claim(slots=2, fleet=fleet) == []
        assert world.tallies["host-b"].claims["fleet_full"] == 1 and (await world.store.fleet()).running == 3

    run(scenario())


def test_the_sweepers_memory_only_holds_worksets_in_progress(world: World) -> None:
    async def scenario() -> None:
        await world.register(*(f"ws-{i}" for i in range(6)))
        held = await world.daemon("host-a").claim(slots=6)
        sweeper = world.sweeper()
        await sweeper.sweep_once()
        assert sweeper.tracked == 6
        for h in held[:4]:
            await h.complete()
        await sweeper.sweep_once()
        assert sweeper.tracked == 2
        bounded = Sweeper(world.store, world.clock, actor="s", policy=POLICY, max_tracked=1)  # type: ignore[arg-type]
        await bounded.sweep_once()
        assert bounded.tracked == 1

    run(scenario())


class DueLog:
    """Records whether each claim round read the retrying worksets."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.retrying: list[bool] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def due(self, **kw: object) -> object:
        self.retrying.append(bool(kw["retrying"]))
        return await self._store.due(**kw)  # type: ignore[attr-defined]


def test_an_idle_claimer_reads_the_retrying_worksets_only_when_one_may_be_due(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        assert await held.fail("exit 75", temporary=True) is State.RETRYING
        due_at = held.ws.available_at_ms
        fleet = await world.store.fleet()
        assert (fleet.running, fleet.retry_seq) == (0, 1)

        log = DueLog(world.store)
        b = Claimer(log, world.clock, owner="host-b:1:bbbb", policy=POLICY)  # type: ignore[arg-type]
        for _ in range(5):
            assert await b.claim(slots=1, fleet=fleet) == []
            world.clock.advance(INDEX_SETTLE_S / 2)
        # Read until a read starts INDEX_SETTLE_S after the counter was first seen (the index may lag it), then
        # skipped until due.
        assert log.retrying == [True, True, True, False, False]
        world.clock.advance((due_at - world.clock.now_ms()) / 1000)
        [won] = await b.claim(slots=1, fleet=fleet)
        assert won.workset_id == "ws-1" and log.retrying[-1] is True

        # Another entry into retrying anywhere moves the counter: the next round reads again.
        assert await won.fail("exit 75", temporary=True) is State.RETRYING
        moved = await world.store.fleet()
        assert moved.retry_seq == 2
        assert await b.claim(slots=1, fleet=moved) == [] and log.retrying[-1] is True
        # Without a view of the counter (the CLI, tests) every round reads them.
        assert await b.claim(slots=1) == [] and log.retrying[-1] is True

    run(scenario())


def test_expect_retry_makes_the_claimer_look_when_its_own_retry_is_due(world: World) -> None:
    async def scenario() -> None:
        log = DueLog(world.store)
        a = Claimer(log, world.clock, owner="host-a:1:aaaa", policy=POLICY)  # type: ignore[arg-type]
        fleet = await world.store.fleet()
        for _ in range(2):
            assert await a.claim(slots=1, fleet=fleet) == []  # nothing retrying, and the counter confirmed
            world.clock.advance(INDEX_SETTLE_S)
        await world.register("ws-1")
        [held] = await a.claim(slots=1, fleet=fleet)
        assert await held.fail("exit 75", temporary=True) is State.RETRYING
        await a.claim(slots=1, fleet=fleet)  # the counter this daemon last saw predates the failure...
        assert log.retrying == [True, True, False, False]  # ...so its rounds do not look
        a.expect_retry(held.ws.available_at_ms)  # what the supervisor tells it when its driver ends so
        world.clock.advance((held.ws.available_at_ms - world.clock.now_ms()) / 1000)
        [again] = await a.claim(slots=1, fleet=fleet)
        assert again.workset_id == "ws-1" and again.epoch == 2

    run(scenario())


def test_an_idle_sweep_is_one_read_of_the_fleet_counter(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        sweeper = world.sweeper()
        assert await sweeper.sweep_once() == []
        assert (world.store.calls["fleet"], world.store.calls["running"]) == (1, 0)
        held = await claim_one(world.daemon("host-a"))
        await sweeper.sweep_once()
        assert (world.store.calls["fleet"], world.store.calls["running"]) == (2, 1) and sweeper.tracked == 1
        await held.complete()
        await sweeper.sweep_once()
        assert (world.store.calls["fleet"], world.store.calls["running"]) == (3, 1) and sweeper.tracked == 0

    run(scenario())


def test_the_next_sweep_is_timed_for_the_earliest_possible_takeover(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        sweeper = world.sweeper()
        assert sweeper.next_interval_s(60) == 60  # nothing watched
        await claim_one(world.daemon("host-a"))
        await sweeper.sweep_once()  # first sight of the lease
        assert sweeper.next_interval_s(600) == pytest.approx(POLICY.takeover_after_s + 0.01)
        assert sweeper.next_interval_s(20) == 20
        world.clock.advance(POLICY.takeover_after_s / 2)
        await sweeper.sweep_once()  # unchanged: still due at the first sight plus a lease and grace
        assert sweeper.next_interval_s(600) == pytest.approx(POLICY.takeover_after_s / 2 + 0.01)
        assert 0 <= sweeper.first_delay_s(60) <= 60

    run(scenario())


def test_policy_derives_everything_from_one_lease() -> None:
    p = Policy(duration_s=60, heartbeat_s=15, grace_s=10)
    assert (p.renew_deadline_s, p.takeover_after_s, p.heartbeat_retry_s) == (40, 70, 3.75)
    assert p.renew_deadline_s < p.takeover_after_s


def test_owner_ids_are_unique_per_process_start() -> None:
    from monitor.leases import new_owner_id

    first, second = new_owner_id(), new_owner_id()
    assert first != second and first.count(":") == 2


def test_a_claim_and_a_heartbeat_are_one_round_trip_each(dynamodb: object) -> None:
    """Counted at the HTTP layer (retries included): what AWS bills."""
    import collections

    from monitor.aws import schema
    from monitor.aws.dynamo import DynamoStore
    from monitor.config import TableConfig

    sends: collections.Counter[str] = collections.Counter()
    dynamodb.meta.events.register(  # type: ignore[attr-defined]
        "before-send.dynamodb", lambda event_name, **_: sends.update([event_name.rsplit(".", 1)[-1]])
    )
    schema.ensure_table(dynamodb, TableConfig(name="round-trips"))
    world = World(store=StoreSpy(DynamoStore(dynamodb, "round-trips")), clock=FakeClock())

    async def scenario() -> None:
        await world.register("urgent", priority=Priority.URGENT)
        await world.register("normal")
        daemon = world.daemon("host-a")
        sends.clear()
        assert await daemon.claim(slots=0) == []
        assert sends == {}  # no free slot, no call at all
        held = await daemon.claim(slots=2)
        assert sends == {"Query": 2, "TransactWriteItems": 2}  # one index query per claimable state, one write each
        sends.clear()
        for holding in held:
            assert await holding.heartbeat_once()
        assert sends == {"UpdateItem": 2}
        sends.clear()
        assert await daemon.claim(slots=1) == []
        assert sends == {"Query": 2}  # an idle claim round

    run(scenario())


class Silent:
    """A store whose heartbeat (or, after a refused heartbeat, the re-read) never gets an answer once armed."""

    def __init__(self, store: Store, hangs: str) -> None:
        self._store, self.hangs, self.armed = store, hangs, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def heartbeat(self, *args: object, **kwargs: object) -> int | None:
        if self.armed and self.hangs == "heartbeat":
            await asyncio.Event().wait()
        return None if self.armed else await self._store.heartbeat(*args, **kwargs)  # type: ignore[arg-type]

    async def get(self, workset_id: WorksetId) -> object:
        if self.armed and self.hangs == "get":
            await asyncio.Event().wait()
        return await self._store.get(workset_id)


@pytest.mark.parametrize("hangs", ["heartbeat", "get"])
def test_a_renewal_that_never_gets_an_answer_is_abandoned_at_the_renew_deadline(store: Store, hangs: str) -> None:
    """A hung connection (botocore's read timeout times its attempts can outlast a lease) must not keep the holder
    believing it holds the lease: at the renew deadline it fences itself, so its step is stopped before anyone can
    take over. Either the heartbeat hangs, or it is refused and the read that must confirm the refusal hangs.
    Real time, a 0.6 s lease."""
    import time

    from monitor.clock import SystemClock

    policy = Policy(duration_s=0.6, heartbeat_s=0.15)
    silent = Silent(store, hangs)

    async def scenario() -> float:
        await World(store=silent, clock=SystemClock()).register("ws-1")  # type: ignore[arg-type]
        claimer = Claimer(silent, SystemClock(), owner="host-a:1:aaaa", policy=policy, rng=random.Random(0))  # type: ignore[arg-type]
        [held] = await claimer.claim(slots=1)
        silent.armed = True
        started = time.monotonic()
        await asyncio.wait_for(held.keep_alive(asyncio.Event()), timeout=5)
        assert held.lost.is_set() and "no successful renewal" in (held.lost_reason or ""), held.lost_reason
        return time.monotonic() - started

    assert run(scenario()) < policy.renew_deadline_s + 0.3


def test_a_fleet_counter_that_says_zero_cannot_strand_a_dead_holders_workset(world: World) -> None:
    """Sweeps skip the in-progress query while the counter says nothing runs. If the counter were ever wrong (a
    hand-edited table, a bug), the queue-gauge refresh notices from the index and the sweeper queries regardless,
    until the work is recovered."""

    async def lying_fleet() -> Fleet:
        return Fleet(running=0)

    async def scenario() -> None:
        await world.register("ws-1")
        await claim_one(world.daemon("host-a"))  # ... which then dies: no heartbeat ever again
        world.store.fleet = lying_fleet  # type: ignore[method-assign]
        sweeper = world.sweeper()
        assert await sweeper.sweep_once() == [] and world.store.calls["running"] == 0  # trusted: nothing queried
        sweeper.distrust_counter()  # what the supervisor does when the index counts a workset in progress
        assert await sweeper.sweep_once() == [] and sweeper.tracked == 1
        world.clock.advance(POLICY.takeover_after_s)
        [taken] = await sweeper.sweep_once()  # the counter still says 0: the sweeper keeps looking until done
        assert taken.after.state is State.RETRYING
        calls = world.store.calls["running"]
        assert await sweeper.sweep_once() == [] and world.store.calls["running"] == calls + 1  # finds nothing...
        assert await sweeper.sweep_once() == [] and world.store.calls["running"] == calls + 1  # ...trusts again

    run(scenario())


def test_a_write_whose_response_was_lost_is_not_repeated_while_its_event_cannot_be_read(world: World) -> None:
    """The write landed but its response was lost, and the reads of its event failed too (after the lost response,
    and again after the retry was refused as stale): the outcome is unknown, so the holder reads again until the
    trail answers, and never writes a second time."""

    async def scenario() -> None:
        await world.register("ws-1")
        held = await claim_one(world.daemon("host-a"))
        world.store.fail_after["commit"] = 1
        world.store.fail_before["event"] = 2
        await held.step_finished("stage")
        await held.complete()
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.state is State.COMPLETE and ws.steps_done == ("stage",)
        events = await world.events("ws-1")
        assert events == [EventType.REGISTERED, EventType.STARTED, EventType.STEP_FINISHED, EventType.COMPLETE]

    run(scenario())


class Contended:
    """A store that refuses the holder's next ``refusals`` writes as stale, as if another writer always got in first."""

    def __init__(self, store: Store, refusals: int) -> None:
        self._store, self.refusals, self.refused = store, refusals, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def commit(self, decision: object, **kwargs: object) -> object:
        if kwargs.get("fence_token") and self.refused < self.refusals:
            self.refused += 1
            raise errors.Conflict("injected: changed concurrently")
        return await self._store.commit(decision, **kwargs)  # type: ignore[arg-type]


def contended_holding(world: World, refusals: int) -> tuple[Contended, Claimer]:
    contended = Contended(world.store, refusals)  # type: ignore[arg-type]
    return contended, Claimer(contended, world.clock, owner="host-a:1:aaaa", policy=POLICY, rng=random.Random(0))  # type: ignore[arg-type]


def test_a_write_refused_as_stale_again_and_again_backs_off(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        contended, claimer = contended_holding(world, refusals=5)
        held = await claim_one(claimer)
        start = world.clock.monotonic()
        await held.complete()
        assert contended.refused == 5 and held.ws.state is State.COMPLETE
        assert world.clock.monotonic() - start >= 5 * 0.25  # a pause after each refusal, none of them hot

    run(scenario())


def test_a_write_that_is_always_refused_as_stale_ends_as_a_lost_lease_within_the_renew_deadline(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        contended, claimer = contended_holding(world, refusals=200)
        held = await claim_one(claimer)
        start = world.clock.monotonic()
        with pytest.raises(errors.LeaseLost):
            await held.complete()
        assert world.clock.monotonic() - start <= POLICY.renew_deadline_s
        assert contended.refused < 30 and held.lost.is_set()
        ws = await world.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.state is State.IN_PROGRESS  # nothing written: the sweeper recovers it

    run(scenario())


def test_a_write_refused_as_stale_survives_a_failed_re_read(world: World) -> None:
    async def scenario() -> None:
        await world.register("ws-1")
        _, claimer = contended_holding(world, refusals=1)
        held = await claim_one(claimer)
        world.store.fail_before["get"] = 1  # the re-read after the refusal is throttled
        await held.complete()
        assert (await world.events("ws-1"))[-1] is EventType.COMPLETE

    run(scenario())
