"""Finished worksets leave the index the daemons read (monitor/aws/codec.py, "Finished worksets ..."): a finished
workset is in the sparse ``finished-index`` by the month it finished and counted by counters written in the same
transaction, so counting the queue costs the same at 10 finished worksets as at 10 000; tables written before it keep
working, and ``init`` moves their finished worksets over. On DynamoDB (moto), the calls counted."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from monitor import actions, states
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import Lease, Priority, State, Workset, WorksetId
from monitor.selection import Position
from monitor.states import Action, Context
from tests.conftest import register, run

TABLE = "finished-test"
DAY_MS = 86_400_000
NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
DEC_1 = 1_796_083_200_000  # 2026-12-01T00:00:00Z


class Env:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.store = DynamoStore(client, TABLE)
        self.sends: collections.Counter[str] = collections.Counter()
        client.meta.events.register(
            "before-send", lambda event_name, **_: self.sends.update([event_name.split(".")[2]])
        )

    def finish(self, name: str, *, at_ms: int, action: Action = Action.COMPLETE, **kw: Any) -> Workset:
        """Register ``name``, claim it and finish it (``action``) at ``at_ms``."""
        register(self.store, name, ctx=Context(now_ms=at_ms - 10, actor="scanner:test", reason="found"), **kw)
        ws = run(self.store.get(WorksetId(name)))
        assert ws is not None
        if action is Action.COMPLETE:
            lease = Lease(token="t", owner="host:t", heartbeat_at_ms=at_ms - 5, expires_at_ms=at_ms + 60_000)
            ws = run(self.store.commit(states.decide(ws, Action.CLAIM, ctx(at_ms - 5), lease=lease)))
            return run(self.store.commit(states.decide(ws, Action.COMPLETE, ctx(at_ms)), fence_token="t"))
        return run(actions.act(self.store, WorksetId(name), action, ctx(at_ms)))

    def index(self, name: str, key: str, value: str) -> list[str]:
        """The ids in one partition of an index, as the index has them."""
        response = self.client.query(
            TableName=TABLE,
            IndexName=name,
            KeyConditionExpression="#k = :v",
            ExpressionAttributeNames={"#k": key},
            ExpressionAttributeValues={":v": {"S": value}},
        )
        return sorted(item["pk"]["S"] for item in response["Items"])

    def counters(self) -> dict[str, int]:
        items = self.client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :d)",
            ExpressionAttributeValues={":pk": {"S": "#fleet"}, ":d": {"S": "done#"}},
        )["Items"]
        return {item["sk"]["S"]: int(item["n"]["N"]) for item in items if int(item["n"]["N"])}

    def write_old_layout(self, name: str, *, finished_at: bool = True) -> None:
        """Put ``name``'s item back as code from before the finished index wrote it: in the state index, no
        finished keys, not counted (and, with ``finished_at`` False, from before the run's timings were kept)."""
        item = self.client.get_item(TableName=TABLE, Key=codec.control_key(name))["Item"]
        ws = codec.workset_from_item(item, table=TABLE)
        counter = codec.done_counter_sk(ws)
        item = {k: v for k, v in item.items() if k not in ("done_pk", "done_sk")}
        item["gsi_sk"] = {"S": states.gsi_sort_key(ws)}
        if not finished_at:
            item.pop("finished_at_ms")
        self.client.put_item(TableName=TABLE, Item=item)
        self.client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": "#fleet"}, "sk": {"S": counter}},
            UpdateExpression="ADD n :minus",
            ExpressionAttributeValues={":minus": {"N": "-1"}},
        )

    def stats(self) -> dict[State, int]:
        counted = run(self.store.stats(now_ms=DEC_1 + DAY_MS))
        return {s: counted.count(s) for s in State if counted.count(s)}


def ctx(now_ms: int) -> Context:
    return Context(now_ms=now_ms, actor="operator:test@host", reason="test")


@pytest.fixture
def env(dynamodb: Any) -> Env:
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    return Env(dynamodb)


def test_a_finished_workset_leaves_the_state_index_for_the_finished_index_and_is_counted(env: Env) -> None:
    env.finish("ws-a", at_ms=DEC_1 + 1000)
    env.finish("ws-b", at_ms=NOV_1 + 1000, action=Action.IGNORE)
    register(env.store, "ws-c")  # still ready

    assert env.index(codec.GSI_NAME, "state", "complete") == []
    assert env.index(codec.GSI_NAME, "state", "ignored") == []
    assert env.index(codec.GSI_NAME, "state", "ready") == ["ws-c"]
    assert env.index(codec.FINISHED_GSI, "done_pk", "complete#2026-12") == ["ws-a"]
    assert env.index(codec.FINISHED_GSI, "done_pk", "ignored#2026-11") == ["ws-b"]
    assert sum(env.counters().values()) == 2
    assert env.stats() == {State.COMPLETE: 1, State.IGNORED: 1, State.READY: 1}
    assert [ws.workset_id for ws in run(env.store.list(state=State.COMPLETE))] == ["ws-a"]
    assert [ws.workset_id for ws in run(env.store.list())] == ["ws-c", "ws-a", "ws-b"]
    assert run(env.store.locations()) == {
        "ws-a": "lab-bucket/worksets/ws-a/",
        "ws-b": "lab-bucket/worksets/ws-b/",
        "ws-c": "lab-bucket/worksets/ws-c/",
    }


def test_a_workset_that_failed_validation_and_is_ignored_leaves_the_state_index_too(env: Env) -> None:
    register(env.store, "ws-bad", invalid_reason="no stage_samples.tsv")
    assert run(env.store.get(WorksetId("ws-bad"))).state is State.ERROR  # type: ignore[union-attr]
    run(actions.act(env.store, WorksetId("ws-bad"), Action.IGNORE, ctx(DEC_1)))
    assert env.index(codec.GSI_NAME, "state", "ignored") == []
    assert env.index(codec.FINISHED_GSI, "done_pk", "ignored#2026-12") == ["ws-bad"]
    assert env.stats() == {State.IGNORED: 1}


def test_counting_the_queue_costs_the_same_at_30_and_at_90_finished_worksets(env: Env) -> None:
    """The idle read that grew with history: the queue gauges' count of the finished states. (It reads the counter
    items: at most ``DONE_SHARDS`` per state, month and priority, whatever the number of worksets.)"""

    def cost_of_counting() -> tuple[int, int]:
        env.sends.clear()
        consumed = 0
        original = env.client.query

        def query(**kw: Any) -> Any:
            nonlocal consumed
            response = original(ReturnConsumedCapacity="TOTAL", **kw)
            consumed += int(response["Count"])  # items read: what a request's read units grow with
            return response

        env.client.query = query
        try:
            env.stats()
        finally:
            del env.client.query
        return env.sends["Query"], consumed

    for i in range(30):
        env.finish(f"ws-{i:02d}", at_ms=DEC_1 + i)
    small = cost_of_counting()
    assert small[1] <= codec.DONE_SHARDS
    for i in range(30, 90):
        env.finish(f"ws-{i:02d}", at_ms=DEC_1 + i)
    assert env.stats()[State.COMPLETE] == 90
    assert cost_of_counting() == small, "the count of finished worksets must not read them"


def test_re_opening_and_moving_between_finished_states_keeps_the_counts_exact(env: Env) -> None:
    env.finish("ws-a", at_ms=DEC_1 + 1000)
    env.finish("ws-b", at_ms=DEC_1 + 2000, priority=Priority.URGENT)
    run(actions.act(env.store, WorksetId("ws-a"), Action.IGNORE, ctx(DEC_1 + 3000)))  # complete -> ignored
    assert env.stats() == {State.COMPLETE: 1, State.IGNORED: 1}
    assert env.index(codec.FINISHED_GSI, "done_pk", "ignored#2026-12") == ["ws-a"]
    assert env.index(codec.FINISHED_GSI, "done_pk", "complete#2026-12") == ["ws-b"]

    run(actions.act(env.store, WorksetId("ws-b"), Action.RETRY_FORCE, ctx(DEC_1 + 4000)))  # back to work
    assert env.stats() == {State.IGNORED: 1, State.READY: 1}
    assert env.index(codec.GSI_NAME, "state", "ready") == ["ws-b"]
    assert env.index(codec.FINISHED_GSI, "done_pk", "complete#2026-12") == []
    counted = run(env.store.stats(now_ms=DEC_1 + DAY_MS))
    assert counted.count(State.IGNORED, Priority.NORMAL) == 1 and counted.count(State.COMPLETE, Priority.URGENT) == 0


def test_listing_finished_worksets_pages_through_the_months_in_the_order_they_finished(env: Env) -> None:
    finished = {f"ws-{i}": (NOV_1 if i < 3 else DEC_1) + i * 1000 for i in range(6)}
    for name, at_ms in finished.items():
        env.finish(name, at_ms=at_ms, priority=Priority.URGENT if name == "ws-4" else Priority.NORMAL)
    env.write_old_layout("ws-1")  # one from before the finished index: listed first, from the state index

    store = DynamoStore(env.client, TABLE, page_size=2)
    pages = run(_all_pages(store, size=2))
    order = [ws.workset_id for page in pages for _, ws in page]
    assert order == ["ws-1", "ws-0", "ws-2", "ws-3", "ws-4", "ws-5"]
    # resume after any position, as `list --after` does, from either index
    for cut in range(1, 6):
        after = [position for page in pages for position, _ in page][cut - 1]
        again = Position.parse(after.token)
        rest = [ws.workset_id for page in run(_all_pages(store, size=2, after=again)) for _, ws in page]
        assert rest == order[cut:], (cut, after.token)
    urgent = run(_all_pages(store, size=10, priority=Priority.URGENT))
    assert [ws.workset_id for page in urgent for _, ws in page] == ["ws-4"]
    assert [ws.workset_id for ws in run(store.list(state=State.COMPLETE, priority=Priority.URGENT))] == ["ws-4"]


async def _all_pages(store: DynamoStore, *, size: int, **kw: Any) -> list[Any]:
    return [page async for page in store.pages(state=State.COMPLETE, size=size, **kw) if page]


def test_a_finished_workset_written_before_the_finished_index_is_counted_and_re_opened_correctly(env: Env) -> None:
    env.finish("ws-old", at_ms=DEC_1 + 1000)
    env.finish("ws-older", at_ms=DEC_1 + 2000)
    env.finish("ws-new", at_ms=DEC_1 + 3000)
    env.write_old_layout("ws-old")
    env.write_old_layout("ws-older", finished_at=False)
    assert env.counters() == {codec.done_counter_sk(run(env.store.get(WorksetId("ws-new")))): 1}
    assert env.stats() == {State.COMPLETE: 3}  # two from the state index, one from its counter
    assert env.index(codec.GSI_NAME, "state", "complete") == ["ws-old", "ws-older"]

    # re-opened as it is stored: it was never counted, so no counter goes below zero
    env.sends.clear()
    run(actions.act(env.store, WorksetId("ws-old"), Action.RETRY_FORCE, ctx(DEC_1 + 4000)))
    assert env.sends["TransactWriteItems"] == 2  # the first expected the new layout; the item said otherwise
    run(actions.act(env.store, WorksetId("ws-older"), Action.IGNORE, ctx(DEC_1 + 5000)))
    assert env.stats() == {State.COMPLETE: 1, State.READY: 1, State.IGNORED: 1}
    assert all(n >= 0 for n in env.counters().values())
    assert [e.type.value for e in run(env.store.history(WorksetId("ws-old")))][-1] == "reopened"


def test_init_moves_the_old_finished_worksets_once_and_a_write_read_before_the_move_still_lands(env: Env) -> None:
    for name in ("ws-a", "ws-b", "ws-c"):
        env.finish(name, at_ms=DEC_1 + 1000)
    env.write_old_layout("ws-a")
    env.write_old_layout("ws-b", finished_at=False)
    env.write_old_layout("ws-c", finished_at=False)
    before_move = run(env.store.get(WorksetId("ws-c")))  # an operator reads it, then init runs
    assert before_move is not None and before_move.finished_at_ms is None

    report = schema.ensure_table(env.client, TableConfig(name=TABLE))
    assert any("moved 3 finished worksets" in note for note in report.notes), report.notes
    assert env.index(codec.GSI_NAME, "state", "complete") == []
    assert env.index(codec.FINISHED_GSI, "done_pk", "complete#2026-12") == ["ws-a", "ws-b", "ws-c"]
    assert sum(env.counters().values()) == 3 and env.stats() == {State.COMPLETE: 3}
    moved = run(env.store.get(WorksetId("ws-b")))
    assert moved is not None and moved.finished_at_ms == moved.updated_at_ms  # the best time known
    assert schema.ensure_table(env.client, TableConfig(name=TABLE)).notes == ()  # nothing left to move

    retried = states.decide(before_move, Action.RETRY_FORCE, ctx(DEC_1 + 9000))
    run(env.store.commit(retried))  # written for the old layout; the item is in the new one: learnt, not lost
    assert env.stats() == {State.COMPLETE: 2, State.READY: 1}
    assert sum(env.counters().values()) == 2
