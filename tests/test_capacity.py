"""DynamoDB's capacity rules as the cost model counts them (bench/capacity.py), checked against the developer guide's
rules one by one, and the sizes of the items this program actually writes."""

from __future__ import annotations

import dataclasses

import pytest

from bench.capacity import (
    Index,
    index_writes,
    item_size,
    monthly_usd,
    number_size,
    read_units,
    value_size,
    write_units,
)
from monitor.aws import codec
from monitor.memory import MemoryStore
from monitor.model import Lease, WorksetId
from monitor.states import Action, Context, decide
from tests.conftest import register, run


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({"S": "abc"}, 3),
        ({"S": "é"}, 2),  # UTF-8 bytes, not characters
        ({"N": "123.45"}, 4),  # 5 significant digits: 3 bytes, plus 1
        ({"N": "1000"}, 2),  # trailing zeroes trimmed: 1 digit
        ({"N": "0.0012"}, 2),  # leading zeroes trimmed
        ({"N": "-1764806400000"}, 5),  # an epoch-ms timestamp: 17648064, 8 digits once trailing zeroes go
        ({"B": "AAEC"}, 3),  # raw bytes, not base64's
        ({"BOOL": True}, 1),
        ({"NULL": True}, 1),
        ({"SS": ["ab", "c"]}, 3),
        ({"L": []}, 3),
        ({"L": [{"S": "x"}, {"N": "1"}]}, 3 + (1 + 1) + (2 + 1)),  # each element 1 byte more
        ({"M": {"a": {"S": "b"}}}, 3 + (1 + 1 + 1)),  # a map's element: its name, its value, 1 byte
    ],
)
def test_a_value_is_sized_by_the_developer_guide_s_rules(value: dict[str, object], size: int) -> None:
    assert value_size(value) == size


def test_an_item_adds_its_attribute_names() -> None:
    assert item_size({"pk": {"S": "ws-1"}, "version": {"N": "12"}}) == (2 + 4) + (7 + 2)
    assert number_size("38") == number_size("3.8e1") == 2
    with pytest.raises(ValueError, match="not a DynamoDB attribute value"):
        value_size({"X": 1})


def test_reads_round_up_per_item_or_per_page_and_halve_when_eventually_consistent() -> None:
    assert read_units([1], consistent=True) == 1  # at least one unit
    assert read_units([4096], consistent=True) == 1
    assert read_units([4097], consistent=True) == 2
    assert read_units([4097], consistent=False) == 1
    assert read_units([3000, 3000], consistent=True) == 2  # BatchGetItem: each item rounded
    assert read_units([3000, 3000], consistent=True, per_item=False) == 2  # a Query page: 6 000 bytes
    assert read_units([300] * 10, consistent=False, per_item=False) == 0.5  # 3 000 bytes, eventually consistent
    assert read_units([], consistent=False, per_item=False) == 0.5  # an empty page still costs
    assert read_units([100], consistent=True, transactional=True) == 2


def test_writes_count_the_larger_side_per_kilobyte_and_double_in_a_transaction() -> None:
    assert write_units(None, 1) == 1
    assert write_units(None, 1024) == 1
    assert write_units(1025, 10) == 2  # an update that shrinks the item pays for the old size
    assert write_units(500, None) == 1  # a delete
    assert write_units(900, 900, transactional=True) == 2


def test_a_month_of_a_steady_rate() -> None:
    assert monthly_usd(read_units_per_s=1) == pytest.approx(0.324)  # 2.592 million reads at $0.125
    assert monthly_usd(write_units_per_s=1) == pytest.approx(1.62)


def test_the_items_this_program_writes_take_one_write_unit_each() -> None:
    """What the model will charge for: a workset's control item as it runs (a lease, steps done, timings), its
    audit events, the fleet counter. Each under 1 KB: one write unit, two inside a transaction."""
    store = MemoryStore()
    ws = register(store, "ws-2026-12-04-tumour-0412", prefix="daylily_monitoring/active_worksets/")[1]
    ctx = Context(now_ms=1_764_806_400_000, actor="scanner:ip-10-0-12-34:123456:9f8e7d6c")
    lease = Lease(token="t" * 32, owner="ip-10-0-12-34:123456:9f8e7d6c", heartbeat_at_ms=ctx.now_ms, expires_at_ms=1)
    claim = decide(ws, Action.CLAIM, ctx, lease=lease)
    running = run(store.commit(claim))
    control = item_size(codec.workset_item(running))
    event = item_size(codec.event_item(claim.event))
    assert 200 < control < 1024, control
    assert 100 < event < 1024, event
    assert write_units(control, control, transactional=True) == 2
    fleet = item_size({**codec.FLEET_KEY, "running": {"N": "37"}, "retry_seq": {"N": "1204"}})
    assert fleet < 100
    assert run(store.get(WorksetId("ws-2026-12-04-tumour-0412"))) == running


STATE_INDEX = Index(codec.GSI_NAME, ("state", "gsi_sk"), codec.GSI_PROJECTED)
OUTBOX_INDEX = Index(codec.OUTBOX_GSI, ("outbox", "outbox_sk"), None)


def test_index_writes_follow_the_entry_put_update_delete_and_move() -> None:
    index = Index("i", ("k", "r"), ("p",))
    a = {"pk": {"S": "x"}, "sk": {"S": "ws"}, "k": {"S": "ready"}, "r": {"S": "1"}, "p": {"N": "1"}, "q": {"N": "1"}}
    assert index_writes(None, a, index) == [("ready", 1)]  # put
    assert index_writes(a, {**a, "q": {"N": "2"}}, index) == []  # not projected: the index is not written
    assert index_writes(a, {**a, "p": {"N": "2"}}, index) == [("ready", 1)]  # a projected attribute: one write
    moved = {**a, "k": {"S": "in_progress"}}
    assert index_writes(a, moved, index) == [("ready", 1), ("in_progress", 1)]  # a key change: delete and put
    assert index_writes(a, {k: v for k, v in a.items() if k != "k"}, index) == [("ready", 1)]  # out of a sparse index
    assert index_writes(a, None, index) == [("ready", 1)]  # the item deleted


def test_what_a_claim_and_a_heartbeat_cost_the_state_index() -> None:
    """A claim moves the control item from the `ready` partition to `in_progress` (two index writes); a heartbeat
    changes only attributes the index does not project, so it costs the index nothing."""
    store = MemoryStore()
    ws = register(store, "ws-1")[1]
    ctx = Context(now_ms=2_000, actor="d1")
    lease = Lease(token="t" * 32, owner="host:1:abcd", heartbeat_at_ms=2_000, expires_at_ms=9_000)
    claim = decide(ws, Action.CLAIM, ctx, lease=lease)
    running = run(store.commit(claim))
    before, after = codec.workset_item(ws), codec.workset_item(running)
    assert [key for key, _ in index_writes(before, after, STATE_INDEX)] == ["ready", "in_progress"]
    beat = {**after, "hb_count": {"N": "7"}, "heartbeat_at_ms": {"N": "3000"}, "current_step": {"S": "stage"}}
    assert set(codec.HEARTBEAT_ATTRIBUTES) <= set(beat)
    assert index_writes(after, beat, STATE_INDEX) == []
    assert index_writes(None, codec.event_item(claim.event), STATE_INDEX) == []  # events carry no state key
    pending = dataclasses.replace(claim.event, pending=True)
    assert [key for key, _ in index_writes(None, codec.event_item(pending), OUTBOX_INDEX)] == ["pending"]
