"""One behavioural suite for the Store contract, run against the in-memory store and DynamoDB (moto)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from monitor import actions, errors, states
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Policy
from monitor.memory import Faults, MemoryStore
from monitor.model import EventType, Lease, Priority, State, StepRun, Workset, WorksetId
from monitor.ports import Store
from monitor.recorder import Tally
from monitor.selection import Position
from monitor.states import Action, Backoff, Context
from monitor.sweeper import Sweeper
from tests.conftest import TEST_TABLE, run

T0 = 1_800_000_000_000
TABLE = TEST_TABLE


def ctx(now_ms: int = T0, actor: str = "operator:test@host", **kw: Any) -> Context:
    return Context(now_ms=now_ms, actor=actor, **kw)


async def add(
    store: Store,
    name: str,
    *,
    priority: Priority = Priority.NORMAL,
    now_ms: int = T0,
    invalid: str | None = None,
) -> Workset:
    created, ws = await actions.register(
        store,
        workset_id=WorksetId(name),
        bucket="lab-bucket",
        prefix=f"worksets/{name}/",
        priority=priority,
        ctx=ctx(now_ms),
        invalid_reason=invalid,
    )
    assert created
    return ws


def test_register_creates_a_ready_workset_with_its_first_event(store: Store) -> None:
    async def scenario() -> None:
        await add(store, "ws-1", priority=Priority.URGENT)
        ws = await store.get(WorksetId("ws-1"))
        assert ws is not None
        assert (ws.state, ws.priority, ws.version, ws.attempts, ws.epoch) == (
            State.READY,
            Priority.URGENT,
            1,
            0,
            0,
        )
        assert ws.s3_uri == "s3://lab-bucket/worksets/ws-1/"
        assert all(type(v) is int for v in (ws.version, ws.attempts, ws.epoch, ws.created_at_ms, ws.hb_count))
        [event] = await store.history(WorksetId("ws-1"))
        assert (event.seq, event.type, event.from_state, event.to_state) == (
            1,
            EventType.REGISTERED,
            None,
            State.READY,
        )
        assert event.actor == "operator:test@host"

    run(scenario())


def test_registering_an_existing_id_changes_nothing(store: Store) -> None:
    async def scenario() -> None:
        first = await add(store, "ws-1", priority=Priority.LOW)
        created, existing = await actions.register(
            store,
            workset_id=WorksetId("ws-1"),
            bucket="other-bucket",
            prefix="elsewhere/ws-1/",
            priority=Priority.URGENT,
            ctx=ctx(T0 + 5000),
        )
        assert not created
        assert existing == first == await store.get(WorksetId("ws-1"))
        assert len(await store.history(WorksetId("ws-1"))) == 1

    run(scenario())


def test_an_invalid_workset_is_registered_as_a_validation_error(store: Store) -> None:
    async def scenario() -> None:
        await add(store, "bad", invalid="stage_samples.tsv line 2 column 11: R1_FQ object missing")
        ws = await store.get(WorksetId("bad"))
        assert ws is not None and ws.state is State.ERROR and ws.error_category == "validation"
        [event] = await store.history(WorksetId("bad"))
        assert event.type is EventType.INVALID and "line 2 column 11" in event.reason

    run(scenario())


def test_get_and_history_of_an_unknown_workset(store: Store) -> None:
    async def scenario() -> None:
        assert await store.get(WorksetId("nope")) is None
        assert await store.history(WorksetId("nope")) == []

    run(scenario())


def test_list_is_urgent_first_then_fifo(store: Store) -> None:
    async def scenario() -> None:
        await add(store, "low-old", priority=Priority.LOW, now_ms=T0)
        await add(store, "normal-new", priority=Priority.NORMAL, now_ms=T0 + 300)
        await add(store, "urgent-new", priority=Priority.URGENT, now_ms=T0 + 200)
        await add(store, "normal-old", priority=Priority.NORMAL, now_ms=T0 + 100)
        await add(store, "urgent-old", priority=Priority.URGENT, now_ms=T0 + 50)
        names = [ws.workset_id for ws in await store.list(state=State.READY)]
        assert names == ["urgent-old", "urgent-new", "normal-old", "normal-new", "low-old"]
        assert [ws.workset_id for ws in await store.list(state=State.READY, priority=Priority.NORMAL)] == [
            "normal-old",
            "normal-new",
        ]
        assert len(await store.list(limit=2)) == 2
        assert await store.list(state=State.COMPLETE) == []

    run(scenario())


def test_list_without_a_state_covers_every_state(store: Store) -> None:
    async def scenario() -> None:
        await add(store, "a")
        await add(store, "b", invalid="bad manifest")
        await actions.act(store, WorksetId("a"), Action.IGNORE, ctx())
        listed = {ws.workset_id: ws.state for ws in await store.list()}
        assert listed == {"a": State.IGNORED, "b": State.ERROR}

    run(scenario())


def test_listing_and_stats_follow_every_page(make_store: Callable[..., Store]) -> None:
    store = make_store(page_size=7)  # DynamoDB: 60 worksets take 9 query pages per listing
    count = 60

    async def scenario() -> None:
        for i in range(count):
            await add(store, f"ws-{i:05d}", priority=list(Priority)[i % 3], now_ms=T0 + i)
        listed = await store.list(state=State.READY)
        assert len(listed) == count
        assert len({ws.workset_id for ws in listed}) == count
        ranks = [ws.priority.rank for ws in listed]
        assert ranks == sorted(ranks)
        assert [ws.workset_id for ws in await store.list(limit=10)] == [ws.workset_id for ws in listed[:10]]
        stats = await store.stats(now_ms=T0 + 60_000)
        assert stats.count(State.READY) == stats.total == count
        assert stats.count(State.READY, Priority.URGENT) == 20
        assert stats.oldest_ready_age_s == 60.0

    run(scenario())


def test_pages_walk_the_listing_order_and_resume_after_any_position(make_store: Callable[..., Store]) -> None:
    """`list --limit N` pages with `--after`: each page resumes exactly past the last position shown, across
    states and index pages, with and without a priority; a consumer that stops early reads nothing more."""
    store = make_store(page_size=7)

    async def walk(after: Position | None = None, **kw: Any) -> list[tuple[Position, str]]:
        return [(p, ws.workset_id) async for page in store.pages(after=after, size=5, **kw) for p, ws in page]

    async def scenario() -> None:
        for i in range(30):
            await add(store, f"ws-{i:02d}", priority=list(Priority)[i % 3], now_ms=T0 + i)
        for i in range(0, 30, 4):
            await actions.act(store, WorksetId(f"ws-{i:02d}"), Action.CANCEL, ctx())
        everything = await walk()
        assert [name for _, name in everything] == [ws.workset_id for ws in await store.list()]
        assert [p for p, _ in everything] == sorted(p for p, _ in everything)
        for cut in (0, 4, 5, 21, 22, 29):  # inside a state, at a state's end, at an index page's end
            after = Position.parse(everything[cut][0].token)  # the token the CLI prints and reads back
            assert await walk(after) == everything[cut + 1 :], cut
            urgent = [(p, n) for p, n in everything[cut + 1 :] if n in {f"ws-{i:02d}" for i in range(0, 30, 3)}]
            assert await walk(after, priority=Priority.URGENT) == urgent, cut
        cancelled = await walk(state=State.CANCELLED)
        assert [n for _, n in cancelled] == [n for p, n in everything if p.state is State.CANCELLED]
        assert await walk(Position.parse(cancelled[-1][0].token), state=State.CANCELLED) == []

    run(scenario())


def test_stats_count_per_state_and_priority(store: Store) -> None:
    async def scenario() -> None:
        await add(store, "u", priority=Priority.URGENT)
        await add(store, "n", priority=Priority.NORMAL, now_ms=T0 + 1000)
        await add(store, "l", priority=Priority.LOW)
        await add(store, "x", priority=Priority.LOW, invalid="missing daylily_work.yaml")
        await actions.act(store, WorksetId("l"), Action.IGNORE, ctx())
        stats = await store.stats(now_ms=T0 + 10_000)
        assert stats.count(State.READY) == 2
        assert stats.count(State.READY, Priority.URGENT) == 1
        assert stats.count(State.IGNORED, Priority.LOW) == 1
        assert stats.count(State.ERROR, Priority.LOW) == 1
        assert stats.total == 4
        assert stats.oldest_ready_age_s == 10.0
        some = await store.stats(now_ms=T0 + 10_000, states=[State.READY, State.ERROR])
        assert set(some.counts) == {State.READY, State.ERROR}  # the others are not read at all
        assert (some.count(State.READY), some.count(State.ERROR), some.count(State.IGNORED)) == (2, 1, 0)
        assert some.oldest_ready_age_s == 10.0

    run(scenario())


def test_stats_of_an_empty_store(store: Store) -> None:
    stats = run(store.stats(now_ms=T0))
    assert stats.total == 0 and stats.oldest_ready_age_s is None
    assert all(stats.count(s, p) == 0 for s in State for p in Priority)


def test_a_commit_against_a_stale_version_writes_nothing(store: Store) -> None:
    async def scenario() -> None:
        ws = await add(store, "ws-1")
        first = states.decide(ws, Action.SET_PRIORITY, ctx(), priority=Priority.URGENT)
        await store.commit(first)
        stale = states.decide(ws, Action.IGNORE, ctx())  # decided on version 1, the item is at 2
        with pytest.raises(errors.Conflict, match="changed concurrently"):
            await store.commit(stale)
        now = await store.get(WorksetId("ws-1"))
        assert now is not None and (now.state, now.version, now.priority) == (State.READY, 2, Priority.URGENT)
        assert [e.seq for e in await store.history(WorksetId("ws-1"))] == [1, 2]

    run(scenario())


def test_a_fenced_commit_fails_once_the_token_is_gone(store: Store) -> None:
    async def scenario() -> None:
        ws = await add(store, "ws-1")
        lease = Lease(token="tok-A", owner="a:1:x", heartbeat_at_ms=T0, expires_at_ms=T0 + 60_000)
        claimed = (await _commit(store, states.decide(ws, Action.CLAIM, ctx(), lease=lease))).after
        cancelled = await store.commit(states.decide(claimed, Action.CANCEL, ctx()))
        # The ex-holder decides on what it last knew; the write must be refused as a lost lease.
        late = states.decide(claimed, Action.COMPLETE, ctx(actor="a:1:x"))
        with pytest.raises(errors.LeaseLost):
            await store.commit(late, fence_token="tok-A")
        assert await store.get(WorksetId("ws-1")) == cancelled

    run(scenario())


def test_a_fenced_commit_with_the_right_token_succeeds(store: Store) -> None:
    async def scenario() -> None:
        ws = await add(store, "ws-1")
        lease = Lease(token="tok-A", owner="a:1:x", heartbeat_at_ms=T0, expires_at_ms=T0 + 60_000)
        claimed = (await _commit(store, states.decide(ws, Action.CLAIM, ctx(), lease=lease))).after
        done = await store.commit(states.decide(claimed, Action.COMPLETE, ctx(actor="a:1:x")), fence_token="tok-A")
        assert done.state is State.COMPLETE and done.lease is None
        assert await store.get(WorksetId("ws-1")) == done

    run(scenario())


def test_500_transitions_keep_the_control_item_small_and_the_trail_complete(
    make_store: Callable[..., Store], request: pytest.FixtureRequest
) -> None:
    store = make_store(page_size=64)

    async def scenario() -> None:
        ws = await add(store, "busy")
        for i in range(250):
            lease = Lease(
                token=f"token-{i:04d}",
                owner=f"host-{i % 3}:{1000 + i}:abcdef",
                heartbeat_at_ms=T0,
                expires_at_ms=T0 + 60_000,
            )
            ws = (await _commit(store, states.decide(ws, Action.CLAIM, ctx(T0 + i), lease=lease))).after
            ws = (await _commit(store, states.decide(ws, Action.RELEASE, ctx(T0 + i, reason="shutdown")))).after
        events = await store.history(WorksetId("busy"))
        assert len(events) == 501
        assert [e.seq for e in events] == list(range(1, 502))
        for previous, current in itertools.pairwise(events):
            assert current.from_state is previous.to_state  # the trail is contiguous
        assert ws.epoch == 250 and ws.version == 501 and ws.attempts == 0
        assert await store.get(WorksetId("busy")) == ws

    run(scenario())
    if isinstance(store, DynamoStore):
        client = request.getfixturevalue("dynamodb")
        item = client.get_item(TableName=TABLE, Key=codec.control_key("busy"), ConsistentRead=True)["Item"]
        assert codec.item_size_bytes(item) < 2048
        assert (
            "state"
            not in client.get_item(TableName=TABLE, Key={"pk": {"S": "busy"}, "sk": {"S": codec.event_sk(7)}})["Item"]
        )


def test_operator_action_re_decides_after_a_concurrent_change(store: Store) -> None:
    async def scenario() -> None:
        await add(store, "ws-1")
        original_get = store.get
        calls = 0

        async def racing_get(workset_id: WorksetId) -> Workset | None:
            nonlocal calls
            calls += 1
            seen = await original_get(workset_id)
            if calls == 1 and seen is not None:  # someone else changes it right after our first read
                await store.commit(states.decide(seen, Action.SET_PRIORITY, ctx(), priority=Priority.LOW))
            return seen

        store.get = racing_get  # type: ignore[method-assign]
        decision = await actions.act(store, WorksetId("ws-1"), Action.CANCEL, ctx())
        assert calls == 2
        assert decision.before.version == 2 and decision.after.state is State.CANCELLED

    run(scenario())


def test_operator_action_on_an_unknown_workset(store: Store) -> None:
    with pytest.raises(errors.NotFound, match="not registered"):
        run(actions.act(store, WorksetId("ghost"), Action.CANCEL, ctx()))


def test_illegal_operator_action_writes_nothing(store: Store) -> None:
    async def scenario() -> None:
        ws = await add(store, "ws-1")
        lease = Lease(token="t", owner="o", heartbeat_at_ms=T0, expires_at_ms=T0)
        ws = (await _commit(store, states.decide(ws, Action.CLAIM, ctx(), lease=lease))).after
        ws = await store.commit(states.decide(ws, Action.COMPLETE, ctx()), fence_token="t")
        with pytest.raises(errors.IllegalTransition, match=r"complete.*retry --force"):
            await actions.act(store, WorksetId("ws-1"), Action.RETRY, ctx())
        assert await store.get(WorksetId("ws-1")) == ws
        assert len(await store.history(WorksetId("ws-1"))) == 3

    run(scenario())


async def _commit(store: Store, decision: states.Decision) -> states.Decision:
    after = await store.commit(decision)
    return dataclasses.replace(decision, after=after)


# --- the fleet counter: stored, changed with the state, never recounted --------------------------------------------


async def _claim(store: Store, ws: Workset, *, token: str, fleet_cap: int | None = None, now_ms: int = T0) -> Workset:
    lease = Lease(token=token, owner=f"host:{token}", heartbeat_at_ms=now_ms, expires_at_ms=now_ms + 60_000)
    return await store.commit(states.decide(ws, Action.CLAIM, ctx(now_ms), lease=lease), fleet_cap=fleet_cap)


async def _in_progress(store: Store, names: list[str]) -> int:
    """In progress according to consistent reads of each workset: what the counter must equal."""
    found = [await store.get(WorksetId(n)) for n in names]
    return sum(ws is not None and ws.state is State.IN_PROGRESS for ws in found)


def hand_edit_counter(store: Store, request: pytest.FixtureRequest, *, running: int) -> None:
    """Overwrite the fleet's ``running``, as an operator editing the table's counter items could: the counter item
    says ``running``, its shards 0."""
    if isinstance(store, MemoryStore):
        store.set_fleet_counter(running=running)
        return
    for key in codec.FLEET_CONTROL_KEYS:
        request.getfixturevalue("dynamodb").update_item(
            TableName=TABLE,
            Key=key,
            UpdateExpression="SET running = :running",
            ExpressionAttributeValues={":running": {"N": str(running if key == codec.FLEET_KEY else 0)}},
        )


def test_the_fleet_counter_stays_exact_through_claims_releases_expiries_and_a_full_fleet(store: Store) -> None:
    names = ["w0", "w1", "w2", "w3"]

    async def scenario() -> None:
        ws = {n: await add(store, n) for n in names}

        async def exact(retry_seq: int) -> None:
            fleet = await store.fleet()
            assert (fleet.running, fleet.retry_seq) == (await _in_progress(store, names), retry_seq)

        await exact(0)
        ws["w0"] = await _claim(store, ws["w0"], token="t0", fleet_cap=2)
        ws["w1"] = await _claim(store, ws["w1"], token="t1", fleet_cap=2)
        await exact(0)
        assert (await store.fleet()).running == 2
        with pytest.raises(errors.FleetFull):
            await _claim(store, ws["w2"], token="t2", fleet_cap=2)
        assert await store.get(WorksetId("w2")) == ws["w2"] and len(await store.history(WorksetId("w2"))) == 1
        # A stale nomination into a full fleet: both conditions fail, and the full fleet is what is reported.
        ws["w3"] = await store.commit(states.decide(ws["w3"], Action.SET_PRIORITY, ctx(), priority=Priority.LOW))
        stale = dataclasses.replace(ws["w3"], version=1, priority=Priority.NORMAL)
        with pytest.raises(errors.FleetFull):
            await _claim(store, stale, token="t3", fleet_cap=2)
        await exact(0)

        ws["w0"] = await store.commit(states.decide(ws["w0"], Action.RELEASE, ctx(reason="shutdown")), fence_token="t0")
        await exact(0)
        expire = ctx(T0 + 70_000, actor="sweeper", reason="silent")
        ws["w1"] = await store.commit(
            states.decide(ws["w1"], Action.EXPIRE, expire, error="silent", error_category="lease"),
            fence_token="t1",
            expect_heartbeats=0,
        )
        assert ws["w1"].state is State.RETRYING
        await exact(1)
        ws["w2"] = await _claim(store, ws["w2"], token="t2", fleet_cap=2)
        await exact(1)
        fail = ctx(T0 + 80_000, actor="host:t2", reason="exit 75")
        ws["w2"] = await store.commit(
            states.decide(ws["w2"], Action.FAIL_TEMPORARY, fail, error="exit 75", error_category="step"),
            fence_token="t2",
        )
        await exact(2)
        later = ws["w2"].available_at_ms
        ws["w2"] = await _claim(store, ws["w2"], token="t2b", fleet_cap=2, now_ms=later)
        await exact(2)
        with pytest.raises(errors.LeaseLost):  # a refused write leaves the counter alone
            await store.commit(states.decide(ws["w2"], Action.COMPLETE, ctx(later)), fence_token="t2")
        await exact(2)
        ws["w2"] = await store.commit(states.decide(ws["w2"], Action.CANCEL, ctx(later)))
        assert ws["w2"].state is State.CANCELLED
        await exact(2)
        assert (await store.fleet()).running == 0

    run(scenario())


def test_a_hand_edited_counter_stays_wrong_and_the_cap_is_checked_against_it(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """The counter is a stored number, as in the table: an edit is not undone by the next read or write, and the
    fleet cap trusts it. Only ``import`` recounts it (DynamoDB only)."""

    async def scenario() -> None:
        a, b = await add(store, "a"), await add(store, "b")
        a = await _claim(store, a, token="ta", fleet_cap=1)
        hand_edit_counter(store, request, running=0)
        assert (await store.fleet()).running == 0 and await _in_progress(store, ["a", "b"]) == 1
        b = await _claim(store, b, token="tb", fleet_cap=1)  # admitted: the counter said 0
        assert (await store.fleet()).running == 1 and await _in_progress(store, ["a", "b"]) == 2
        await store.commit(states.decide(a, Action.COMPLETE, ctx()), fence_token="ta")
        await store.commit(states.decide(b, Action.COMPLETE, ctx()), fence_token="tb")
        assert (await store.fleet()).running == -1  # each exit still counts -1: the drift persists

    run(scenario())


def test_a_counter_drifted_to_zero_strands_nothing_once_the_sweeper_distrusts_it(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """A holder dies while the counter says 0. The sweeper trusts the counter and queries nothing; the index still
    counts the workset in progress (what the supervisor's queue-gauge refresh compares), so the sweeper is told to
    distrust the counter, finds the workset and takes it over after a lease plus grace."""
    policy = Policy(duration_s=60, heartbeat_s=15, grace_s=10)
    clock = FakeClock()
    sweeper = Sweeper(store, clock, actor="sweeper:9:ffff", policy=policy, rng=random.Random(0))

    async def scenario() -> None:
        ws = await add(store, "ws-1", now_ms=clock.now_ms())
        await _claim(store, ws, token="dead", now_ms=clock.now_ms())  # ... and its holder dies
        hand_edit_counter(store, request, running=0)
        assert await sweeper.sweep_once() == [] and sweeper.tracked == 0  # trusted: nothing queried
        stats = await store.stats(now_ms=clock.now_ms(), states=[State.IN_PROGRESS])
        assert stats.count(State.IN_PROGRESS) == 1
        sweeper.distrust_counter()  # what the supervisor does when the index disagrees with the counter
        assert await sweeper.sweep_once() == [] and sweeper.tracked == 1
        clock.advance(policy.takeover_after_s)
        [taken] = await sweeper.sweep_once()
        assert taken.after.state is State.RETRYING
        assert (await store.fleet()).running == -1  # the takeover counted -1 from the wrong 0

    run(scenario())


# --- DynamoDB's faults: an index that lags, responses lost after the write was applied ------------------------------
# MemoryStore models both (memory.Faults). moto applies a write to its index at once, so on DynamoDB the lag tests
# check that every change shows at the first read (``store.faults.index_lag_reads`` is 0 there); its lost responses
# are real read timeouts after moto applied the write (tests.faults.LosingDynamoStore).


def test_a_workset_entering_retrying_is_due_only_once_the_index_shows_it(make_store: Callable[..., Store]) -> None:
    """The consistent reads (the workset, the counter) show the change at once; ``due`` shows it
    ``index_lag_reads`` index reads later, and until then not even as a retry to come."""
    store = make_store(faults=Faults(index_lag_reads=3))
    lag = store.faults.index_lag_reads  # type: ignore[attr-defined]

    async def scenario() -> None:
        ws = await _claim(store, await add(store, "ws-1"), token="tok-1")
        for _ in range(lag):  # the index catches up with the claim
            await store.stats(now_ms=T0)
        assert (await store.stats(now_ms=T0)).count(State.IN_PROGRESS) == 1
        fail = ctx(T0, actor="host:tok-1", reason="exit 75")
        decision = states.decide(ws, Action.FAIL_TEMPORARY, fail, error="exit 75", error_category="step")
        ws = await store.commit(decision, fence_token="tok-1")
        now_ms = ws.available_at_ms + 1
        assert ws.state is State.RETRYING and await store.get(WorksetId("ws-1")) == ws
        assert (await store.fleet()).retry_seq == 1
        for _ in range(lag):
            due = await store.due(now_ms=now_ms, limit=10)
            assert due.candidates == [] and due.next_retry_ms is None
        due = await store.due(now_ms=now_ms, limit=10)
        assert [c.workset_id for c in due.candidates] == ["ws-1"]
        assert due.candidates[0] == dataclasses.replace(ws, started_at_ms=None)  # the index has no timings

    run(scenario())


def test_index_reads_lag_and_the_items_behind_them_are_read_consistently(make_store: Callable[..., Store]) -> None:
    """``running`` and ``list`` take their ids from the index and the worksets from the table, keeping only those
    that still match: a claimed workset drops out of the ready listing at once, but shows in progress only once the
    index does. ``stats`` is the index alone."""
    store = make_store(faults=Faults(index_lag_reads=3))
    lag = store.faults.index_lag_reads  # type: ignore[attr-defined]

    async def scenario() -> None:
        a, b = await add(store, "a"), await add(store, "b", now_ms=T0 + 1)
        for _ in range(lag):
            await store.list()
        assert [ws.workset_id for ws in await store.list()] == ["a", "b"]
        assert await store.locations() == {"a": "lab-bucket/worksets/a/", "b": "lab-bucket/worksets/b/"}
        claimed = await _claim(store, a, token="tok-a")

        async def stats_still_count_it_ready() -> None:
            stats = await store.stats(now_ms=T0)
            assert (stats.count(State.READY), stats.count(State.IN_PROGRESS)) == (2, 0)

        async def running_does_not_show_it_yet() -> None:
            assert await store.running() == []

        async def ready_lists_only_b() -> None:
            assert [ws.workset_id for ws in await store.list(state=State.READY)] == ["b"]

        lagging = [stats_still_count_it_ready, running_does_not_show_it_yet, ready_lists_only_b]
        for check in lagging[:lag]:
            await check()
        assert await store.running() == [claimed]
        stats = await store.stats(now_ms=T0)
        assert (stats.count(State.READY), stats.count(State.IN_PROGRESS)) == (1, 1)
        assert await store.get(WorksetId("b")) == b
        assert await store.locations([WorksetId("a")]) == {"a": "lab-bucket/worksets/a/"}

    run(scenario())


def test_a_claim_whose_response_is_lost_has_landed(make_store: Callable[..., Store]) -> None:
    """The first claim is refused (a stale version): a refusal is not lost. The second lands and its response is
    lost: a consistent re-read shows our token, the started event is on the trail, the counter moved with it."""
    store = make_store(faults=Faults(lost_responses={"commit": {1, 2}}))

    async def scenario() -> None:
        ws = await add(store, "ws-1")
        with pytest.raises(errors.Conflict):
            await _claim(store, dataclasses.replace(ws, version=7), token="tok-stale")
        with pytest.raises(errors.AwsUnavailable) as lost:
            await _claim(store, ws, token="tok-1")
        assert lost.value.temporary
        now = await store.get(WorksetId("ws-1"))
        assert now is not None and now.state is State.IN_PROGRESS and now.lease is not None
        assert (now.lease.token, now.epoch, now.attempts) == ("tok-1", 1, 1)
        assert [e.type for e in await store.history(WorksetId("ws-1"))] == [EventType.REGISTERED, EventType.STARTED]
        assert (await store.fleet()).running == 1
        assert store.lost == [("commit", 2)]  # type: ignore[attr-defined]

    run(scenario())


def test_a_registration_and_a_heartbeat_whose_responses_are_lost_have_landed(make_store: Callable[..., Store]) -> None:
    store = make_store(faults=Faults(lost_responses={"register": {1}, "heartbeat": {1}}))

    async def scenario() -> None:
        decision = states.new_workset(
            workset_id=WorksetId("ws-1"), bucket="lab-bucket", prefix="w/ws-1/", priority=Priority.NORMAL, ctx=ctx()
        )
        with pytest.raises(errors.AwsUnavailable):
            await store.register(decision)
        assert await store.get(WorksetId("ws-1")) == decision.after
        assert not await store.register(decision)  # the retry finds it there
        ws = await _claim(store, decision.after, token="tok-1")
        with pytest.raises(errors.AwsUnavailable):
            await store.heartbeat(WorksetId("ws-1"), token="tok-1", now_ms=T0 + 1, expires_at_ms=T0 + 60_001)
        now = await store.get(WorksetId("ws-1"))
        assert now is not None and now.hb_count == ws.hb_count + 1
        retried = await store.heartbeat(WorksetId("ws-1"), token="tok-1", now_ms=T0 + 2, expires_at_ms=T0 + 60_002)
        assert retried == ws.hb_count + 2  # the same token: the retry is accepted too
        assert store.lost == [("register", 1), ("heartbeat", 1)]  # type: ignore[attr-defined]

    run(scenario())


def test_lost_responses_at_a_rate_lose_nothing_but_the_responses(make_store: Callable[..., Store]) -> None:
    store = make_store(faults=Faults(lost_response_rate=0.5, seed=3))
    decision = states.new_workset(
        workset_id=WorksetId("ws-1"), bucket="lab-bucket", prefix="w/ws-1/", priority=Priority.NORMAL, ctx=ctx()
    )
    lease = Lease(token="tok-1", owner="host:1", heartbeat_at_ms=T0, expires_at_ms=T0 + 60_000)

    async def tolerant(write: Awaitable[object]) -> None:
        with contextlib.suppress(errors.AwsUnavailable):
            await write

    async def scenario() -> None:
        await tolerant(store.register(decision))
        await tolerant(store.commit(states.decide(decision.after, Action.CLAIM, ctx(), lease=lease)))
        for i in range(20):
            await tolerant(store.heartbeat(WorksetId("ws-1"), token="tok-1", now_ms=T0 + i, expires_at_ms=T0 + i))
        ws = await store.get(WorksetId("ws-1"))
        assert ws is not None and ws.state is State.IN_PROGRESS and ws.hb_count == 20  # every write was applied
        lost = store.lost  # type: ignore[attr-defined]
        assert 5 <= len(lost) <= 17, lost

    run(scenario())


# --- the loops on a faulty store ---------------------------------------------------------------------------------


def test_a_claimer_whose_claim_response_is_lost_still_holds_the_workset(make_store: Callable[..., Store]) -> None:
    store = make_store(faults=Faults(lost_responses={"commit": {1}}))
    tally = Tally()
    claimer = Claimer(store, FakeClock(), owner="host-a:1:aaaa", policy=Policy(), rng=random.Random(1), recorder=tally)

    async def scenario() -> None:
        await add(store, "ws-1")
        [held] = await claimer.claim(slots=1)
        ws = await store.get(WorksetId("ws-1"))
        assert ws is not None and ws.lease is not None and ws.lease.token == held.token
        assert store.lost == [("commit", 1)] and tally.claims["won"] == 1  # type: ignore[attr-defined]

    run(scenario())


def test_a_claimer_claims_a_retrying_workset_the_index_showed_late() -> None:
    """The index shows a workset's move to retrying two reads late. The claimer must still claim it once it is due,
    however many rounds it ran meanwhile (memory only: moto cannot lag). Before issue 14 two rounds "agreed" on the
    fleet's retry_seq while the index hid the workset, and no later round read the retrying worksets again."""
    store = MemoryStore(faults=Faults(index_lag_reads=2))
    clock = FakeClock()
    policy = Policy(duration_s=60, heartbeat_s=15, grace_s=10, backoff=Backoff(base_s=60, cap_s=600))
    a = Claimer(store, clock, owner="host-a:1:aaaa", policy=policy, rng=random.Random(1))
    b = Claimer(store, clock, owner="host-b:1:bbbb", policy=policy, rng=random.Random(2))

    async def scenario() -> None:
        await add(store, "ws-1", now_ms=clock.now_ms())
        held = [h for _ in range(3) for h in await a.claim(slots=1)]  # the index shows it at the third read
        assert [h.workset_id for h in held] == ["ws-1"]
        for _ in range(2):  # the queue gauges read the index: it now shows the workset in progress
            await store.stats(now_ms=clock.now_ms())
        assert await held[0].fail("exit 75", temporary=True) is State.RETRYING
        fleet = await store.fleet()  # the sweeper's read, which the supervisor passes to every claim round
        won = []
        for _ in range(20):
            won += await b.claim(slots=1, fleet=fleet)
            clock.advance(600)  # 20 rounds over 3 h 20 min: due after at most 10 min of backoff
        assert [h.workset_id for h in won] == ["ws-1"]

    run(scenario())


# --- DynamoDB-specific guarantees -------------------------------------------------------------------------------


def test_numbers_come_back_as_int_and_fractions_are_refused() -> None:
    assert codec.decode({"N": "3"}) == 3 and type(codec.decode({"N": "3"})) is int
    with pytest.raises(ValueError, match="only integers"):
        codec.decode({"N": "1.5"}, name="attempts")
    with pytest.raises(TypeError, match="floats"):
        codec.encode(1.5)


def test_codec_round_trips_a_full_workset() -> None:
    ws = Workset(
        workset_id=WorksetId("w"),
        state=State.IN_PROGRESS,
        priority=Priority.LOW,
        bucket="b-1",
        prefix="p/w/",
        created_at_ms=1,
        updated_at_ms=2,
        available_at_ms=3,
        attempts=2,
        version=9,
        epoch=4,
        hb_count=17,
        lease=Lease(token="t", owner="h:1:r", heartbeat_at_ms=5, expires_at_ms=6),
        current_step="run",
        steps_done=("stage",),
        last_error="e",
        error_category="step",
    )
    assert codec.workset_from_item(codec.workset_item(ws), table=TABLE) == ws


def test_a_missing_table_is_reported_with_the_fix(dynamodb: Any) -> None:
    store = DynamoStore(dynamodb, "no-such-table")
    with pytest.raises(errors.NotFound, match=r"no-such-table does not exist \(run `workset-monitor init`\)"):
        run(store.get(WorksetId("x")))


@pytest.mark.parametrize("page_size", [None, 250])
def test_more_than_a_thousand_worksets_are_never_truncated(dynamodb: Any, page_size: int | None) -> None:
    """The system we replace capped listings at 1000 items; seeded in bulk because moto's transactions are slow."""
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    count = 1100
    for start in range(0, count, 25):
        batch = []
        for i in range(start, start + 25):
            decision = states.new_workset(
                workset_id=WorksetId(f"ws-{i:05d}"),
                bucket="lab-bucket",
                prefix=f"worksets/ws-{i:05d}/",
                priority=list(Priority)[i % 3],
                ctx=ctx(T0 + i),
            )
            batch.append({"PutRequest": {"Item": codec.workset_item(decision.after)}})
        dynamodb.batch_write_item(RequestItems={TABLE: batch})
    store = DynamoStore(dynamodb, TABLE, page_size=page_size)
    listed = run(store.list(state=State.READY))
    assert len(listed) == count == len({ws.workset_id for ws in listed})
    assert run(store.stats(now_ms=T0)).count(State.READY) == count


@pytest.mark.parametrize(
    ("attribute", "stored", "problem"),
    [
        ("updated_at_ms", {"N": "1.5"}, "holds '1.5'; only integers are expected"),
        ("version", None, "is missing"),
        ("priority", {"S": "whenever"}, "holds 'whenever', not a known Priority"),
        ("bucket", None, "is missing"),
    ],
)
def test_a_corrupt_item_is_named_when_read_and_left_out_of_listings(
    dynamodb: Any, attribute: str, stored: dict[str, str] | None, problem: str
) -> None:
    """Issue 14.7: one corrupt item raised a bare ValueError or KeyError from every read that met it, so each daemon's
    loops died on it and restarted into it forever. A read of it names table, item and attribute; listings skip it."""
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    store = DynamoStore(dynamodb, TABLE)

    async def scenario() -> None:
        for name in ("bad", "good"):
            await add(store, name, priority=Priority.URGENT)
        update = "SET #a = :v" if stored else "REMOVE #a"
        values = {"ExpressionAttributeValues": {":v": stored}} if stored else {}
        dynamodb.update_item(
            TableName=TABLE,
            Key=codec.control_key("bad"),
            UpdateExpression=update,
            ExpressionAttributeNames={"#a": attribute},
            **values,
        )
        assert [ws.workset_id for ws in (await store.due(now_ms=T0 + 10, limit=10)).candidates] == ["good"]
        assert [ws.workset_id for ws in await store.list()] == ["good"]
        assert "good" in await store.locations()
        stats = await store.stats(now_ms=T0 + 10)  # reads only the sort key and updated_at_ms of each
        assert stats.count(State.READY) == (1 if attribute == "updated_at_ms" else 2)
        with pytest.raises(errors.CorruptItem) as caught:
            await store.get(WorksetId("bad"))
        expected = f"corrupt item in table {TABLE} (pk='bad', sk='ws'): attribute {attribute} {problem}"
        assert str(caught.value) == expected

    run(scenario())


def test_a_run_s_timings_survive_claims_from_the_index_and_old_items_read_without_them(
    make_store: Callable[..., Store],
) -> None:
    """A holder works on the workset as the index gave it, which has no timings: its writes must change only its own
    step's duration, keep the run's start, and set the finish. (One map of durations, written whole from the
    holder's copy, lost the earlier steps' on DynamoDB.) Events carry their step run; the others read None."""
    store = make_store()

    def run_of(step: str, at_ms: int, outcome: str = "done") -> StepRun:
        return StepRun(step=step, started_at_ms=at_ms, duration_ms=1_500, outcome=outcome, exit_code=0)

    async def claimed(now_ms: int) -> Workset:
        [candidate] = (await store.due(now_ms=now_ms, limit=1)).candidates
        return await _claim(store, candidate, token=f"tok-{now_ms}", now_ms=now_ms)

    async def scenario() -> None:
        await add(store, "ws-1")
        ws = await claimed(T0 + 1_000)
        decision = states.decide(ws, Action.STEP_FINISHED, ctx(T0 + 3_000), step="stage", run=run_of("stage", T0 + 1))
        ws = await store.commit(decision, fence_token=ws.lease.token)  # type: ignore[union-attr]
        fail = states.decide(ws, Action.FAIL_TEMPORARY, ctx(T0 + 4_000), error="exit 75")
        ws = await store.commit(fail, fence_token=ws.lease.token)  # type: ignore[union-attr]
        ws = await claimed(ws.available_at_ms)  # a second attempt, from the index again
        decision = states.decide(ws, Action.STEP_FINISHED, ctx(ws.updated_at_ms + 2), step="run", run=run_of("run", 7))
        ws = await store.commit(decision, fence_token=ws.lease.token)  # type: ignore[union-attr]
        complete = states.decide(ws, Action.COMPLETE, ctx(ws.updated_at_ms + 1))
        ws = await store.commit(complete, fence_token=ws.lease.token)  # type: ignore[union-attr]
        stored = await store.get(WorksetId("ws-1"))
        assert stored is not None
        assert (stored.started_at_ms, stored.finished_at_ms) == (T0 + 1_000, ws.updated_at_ms)
        assert stored.step_ms == (("run", 1_500), ("stage", 1_500))
        history = await store.history(WorksetId("ws-1"))
        steps = [e.step_run.step if e.step_run else None for e in history]
        assert steps == [None, None, "stage", None, None, "run", None]
        assert history[2].step_run == run_of("stage", T0 + 1)

    run(scenario())
