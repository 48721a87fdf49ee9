"""One behavioural suite for the Store contract, run against the in-memory store and DynamoDB (moto)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from monitor import actions, errors, states
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import EventType, Lease, Priority, State, Workset, WorksetId
from monitor.ports import Store
from monitor.states import Action, Context
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
