"""No one item is written by every claim (monitor/aws/codec.py, ``FLEET_SHARDS``): without a fleet cap, a claim and
the end of its run count on the workset's shard of the fleet's control items; with a cap, on the counter item the
cap's condition reads. The workset remembers which (``fleet_slot``), so its end counts -1 where its claim counted +1
whatever the configuration says by then. A pause is on all of them, so every claim's own transaction still sees it.
On DynamoDB (moto), the items written counted."""

from __future__ import annotations

import collections
import io
from typing import Any

import pytest

from monitor import errors, states
from monitor.aws import backup, codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import FLEET_ID, Event, EventType, Lease, State, Workset, WorksetId
from monitor.states import Action, Context
from tests.conftest import register, run

TABLE = "shards-test"
T0 = 1_000_000


class Env:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.store = DynamoStore(client, TABLE)
        self.written: collections.Counter[str] = collections.Counter()  # fleet control items, by sort key
        client.meta.events.register("provide-client-params.dynamodb.TransactWriteItems", self._count)

    def _count(self, params: dict[str, Any], **_: Any) -> None:
        for entry in params["TransactItems"]:
            key = next(iter(entry.values()))["Key"] if "Put" not in entry else None
            if key and key["pk"]["S"] == "#fleet" and not key["sk"]["S"].startswith("done#"):
                self.written[key["sk"]["S"]] += 1

    def add(self, name: str) -> Workset:
        register(self.store, name)
        ws = run(self.store.get(WorksetId(name)))
        assert ws is not None
        return ws

    def claim(self, ws: Workset, *, cap: int | None = None) -> Workset:
        lease = Lease(token=f"t-{ws.workset_id}", owner="host:1", heartbeat_at_ms=T0, expires_at_ms=T0 + 60_000)
        return run(self.store.commit(states.decide(ws, Action.CLAIM, ctx(), lease=lease), fleet_cap=cap))

    def complete(self, ws: Workset) -> Workset:
        assert ws.lease is not None
        return run(self.store.commit(states.decide(ws, Action.COMPLETE, ctx()), fence_token=ws.lease.token))

    def running_on(self) -> dict[str, int]:
        """``running`` on each fleet control item that has one (not zero)."""
        items = self.client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues={":pk": {"S": "#fleet"}, ":low": {"S": "control#"}, ":high": {"S": "counter"}},
        )["Items"]
        return {i["sk"]["S"]: int(i["running"]["N"]) for i in items if int(i.get("running", {}).get("N", "0"))}


def ctx() -> Context:
    return Context(now_ms=T0, actor="host:1", reason="test")


def fleet_event(seq: int, kind: EventType) -> Event:
    return Event(FLEET_ID, seq=seq, type=kind, at_ms=T0 + seq, actor="op", from_state=None, to_state=None)


def shard_of(name: str) -> str:
    return f"control#shard#{codec.fleet_shard(name)}"


@pytest.fixture
def env(dynamodb: Any) -> Env:
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    return Env(dynamodb)


def test_without_a_cap_no_claim_or_finish_writes_the_counter_item(env: Env) -> None:
    names = [f"ws-{i:02}" for i in range(24)]
    held = [env.claim(env.add(name)) for name in names]

    assert env.written["counter"] == 0
    assert sum(env.written.values()) == 24 and len(env.written) > 1  # spread over the shards
    assert all(ws.fleet_slot == codec.fleet_shard(ws.workset_id) for ws in held)
    assert run(env.store.fleet()).running == 24  # the sum the sweeper reads, in the one Query it makes

    for ws in held[:10]:
        assert env.complete(ws).fleet_slot is None
    assert env.written["counter"] == 0
    assert run(env.store.fleet()).running == 14
    assert sum(env.running_on().values()) == 14


def test_with_a_cap_claims_count_on_the_counter_and_end_there_after_the_cap_is_gone(env: Env) -> None:
    a, b, c = env.add("a"), env.add("b"), env.add("c")
    a = env.claim(a, cap=1)
    assert a.fleet_slot is None and env.running_on() == {"counter": 1}
    with pytest.raises(errors.FleetFull):
        env.claim(b, cap=1)
    c = env.claim(c)  # a daemon without the cap (or the cap removed at a reload) counts on the shard
    assert env.running_on() == {"counter": 1, shard_of("c"): 1}

    env.complete(a)  # -1 where its claim counted +1: the counter item, not a's shard
    env.complete(c)
    assert env.running_on() == {} and run(env.store.fleet()).running == 0


def test_a_workset_claimed_before_the_shards_ends_on_the_counter_item(env: Env) -> None:
    """An item in progress without ``fleet_slot`` was claimed by a daemon counting on the counter item only."""
    ws = env.claim(env.add("old"), cap=10)  # counted on the counter item, as every claim used to be
    item = env.client.get_item(TableName=TABLE, Key=codec.control_key("old"))["Item"]
    assert "fleet_slot" not in item
    env.complete(ws)
    assert env.running_on() == {}
    assert "fleet_slot" not in env.client.get_item(TableName=TABLE, Key=codec.control_key("old"))["Item"]


def test_a_pause_refuses_claims_on_every_shard_and_resume_lifts_it(env: Env) -> None:
    worksets = [env.add(f"p-{i}") for i in range(16)]
    assert len({codec.fleet_shard(ws.workset_id) for ws in worksets}) > 1
    paused = fleet_event(1, EventType.PAUSED)
    assert run(env.store.pause(reason="maintenance", by="op", now_ms=T0, event=paused)) is None
    for ws in worksets:
        with pytest.raises(errors.Paused):
            env.claim(ws)
    assert run(env.store.resume(event=fleet_event(2, EventType.RESUMED))) is not None
    assert all(env.claim(ws).state is State.IN_PROGRESS for ws in worksets)
    assert run(env.store.fleet()).running == 16 and run(env.store.fleet()).paused is None


def test_import_counts_a_running_workset_where_its_end_will_count_it(env: Env, dynamodb: Any) -> None:
    ws = env.claim(env.add("moved"))
    out = io.StringIO()
    backup.export(dynamodb, TABLE, out, now_iso="2026-12-05T00:00:00Z")
    schema.ensure_table(dynamodb, TableConfig(name="restored"))
    report = backup.load(dynamodb, "restored", backup.read(io.StringIO(out.getvalue()), source="backup.jsonl"))
    assert report.in_progress == 1
    restored = DynamoStore(dynamodb, "restored")
    again = run(restored.get(WorksetId("moved")))
    assert again is not None and again.fleet_slot == ws.fleet_slot
    assert ws.lease is not None
    run(restored.commit(states.decide(again, Action.COMPLETE, ctx()), fence_token=ws.lease.token))
    assert run(restored.fleet()).running == 0
