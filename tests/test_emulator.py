"""The emulator's corrections of moto's costs answer exactly what moto answers, at a cost that does not grow with
the table faster than it must (counted, not timed)."""

from __future__ import annotations

import collections
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models import dynamo_type
from moto.dynamodb.models.table import Table

from monitor.aws import emulator
from tests.conftest import REGION


@pytest.fixture
def numbers_table() -> Any:
    """A table keyed by a string and a number, with items whose order differs between text and number."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(
            TableName="order",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "n", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "n", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        for pk in ("b", "a", "c"):
            for n in ("10", "9", "-1", "2.5", "100"):
                client.put_item(TableName="order", Item={"pk": {"S": pk}, "n": {"N": n}})
        yield client


def test_all_items_keeps_moto_s_order(numbers_table: Any) -> None:
    emulator.speed_up()
    patched = [(i.hash_key.value, i.range_key.value) for i in _table().all_items()]
    assert patched == [(pk, n) for pk in "abc" for n in ("-1", "2.5", "9", "10", "100")]


def test_a_query_derives_each_key_once_per_item(monkeypatch: pytest.MonkeyPatch, numbers_table: Any) -> None:
    """moto sorted every item comparing DynamoType objects, deriving both values per comparison: a query on an index
    of a 5 000-item table cost ~200 ms. Seen failing first: 15 items, 210 derivations. Kept: none the second time."""
    emulator.speed_up()
    derived = _derivations(monkeypatch)
    assert len(Table.all_items(_table())) == 15
    assert derived["n"] <= 2 * 15
    Table.all_items(_table())
    assert derived["n"] <= 2 * 15


def _table() -> Table:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends["123456789012"][REGION].get_table("order")


def test_an_index_query_keeps_moto_s_order() -> None:
    emulator.speed_up()
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        _create(client, "indexed", keys=("pk",), types={"pk": "S", "g": "S", "v": "N"}, index=("by-v", "g", "v"))
        for i, v in enumerate(("10", "9", "-1", "2.5", "100", "9")):
            client.put_item(TableName="indexed", Item={"pk": {"S": f"p{5 - i}"}, "g": {"S": "x"}, "v": {"N": v}})
        client.put_item(TableName="indexed", Item={"pk": {"S": "other"}, "g": {"S": "y"}, "v": {"N": "0"}})

        def query(**kw: Any) -> list[tuple[str, str]]:
            items = client.query(
                TableName="indexed",
                IndexName="by-v",
                KeyConditionExpression="g = :x",
                ExpressionAttributeValues={":x": {"S": "x"}},
                **kw,
            )["Items"]
            return [(item["v"]["N"], item["pk"]["S"]) for item in items]

        forward = [("-1", "p3"), ("2.5", "p2"), ("9", "p0"), ("9", "p4"), ("10", "p5"), ("100", "p1")]
        assert query() == forward
        assert query(ScanIndexForward=False) == forward[::-1]
        assert query(Limit=2) == forward[:2]


def test_a_table_query_answers_as_moto_does(numbers_table: Any) -> None:
    emulator.speed_up()

    def numbers(**kw: Any) -> list[str]:
        return [item["n"]["N"] for item in numbers_table.query(TableName="order", **kw)["Items"]]

    b = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "b"}}}
    assert numbers(**b) == ["-1", "2.5", "9", "10", "100"]
    assert numbers(**b, ScanIndexForward=False) == ["100", "10", "9", "2.5", "-1"]
    first = numbers_table.query(TableName="order", Limit=2, **b)
    assert [item["n"]["N"] for item in first["Items"]] == ["-1", "2.5"]
    assert numbers(**b, ExclusiveStartKey=first["LastEvaluatedKey"]) == ["9", "10", "100"]
    above = {
        "KeyConditionExpression": "pk = :pk AND n > :n",
        "ExpressionAttributeValues": {":pk": {"S": "c"}, ":n": {"N": "9"}},
    }
    assert numbers(**above) == ["10", "100"]
    nobody = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "zz"}}}
    assert numbers(**nobody) == []


def test_a_table_query_tests_only_its_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto tested every item of the table on every query (a workset's history cost 17 ms at 3 900 items).
    Seen failing first: one partition of 5 items in a table of 300 made 1 208 derivations. The index's answer is
    checked too (its items are found by one pass over the table, with no derivation)."""
    emulator.speed_up()
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        types = dict.fromkeys(("pk", "sk", "g", "gs"), "S")
        _create(client, "big", keys=("pk", "sk"), types=types, index=("sparse", "g", "gs"))
        for p in range(60):
            for s in range(5):
                item = {"pk": {"S": f"p{p:02d}"}, "sk": {"S": f"s{s}"}}
                if p % 20 == 0:  # 15 items in the sparse index
                    item |= {"g": {"S": "pending"}, "gs": {"S": f"{p:02d}{s}"}}
                client.put_item(TableName="big", Item=item)
        derived = _derivations(monkeypatch)
        history = client.query(
            TableName="big", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p07"}}
        )["Items"]
        assert [item["sk"]["S"] for item in history] == ["s0", "s1", "s2", "s3", "s4"]
        assert derived["n"] <= 60, derived  # the partition's 5 items, not the table's 300
        pending = client.query(
            TableName="big",
            IndexName="sparse",
            KeyConditionExpression="g = :g AND gs < :before",
            ExpressionAttributeValues={":g": {"S": "pending"}, ":before": {"S": "203"}},
        )["Items"]
        assert [item["gs"]["S"] for item in pending] == ["000", "001", "002", "003", "004", "200", "201", "202"]


def _create(
    client: Any, name: str, *, keys: tuple[str, ...], types: dict[str, str], index: tuple[str, str, str]
) -> None:
    """A table keyed by ``keys`` (hash, then range) with one global index ``(name, hash, range)``, projecting all."""

    def schema(*names: str) -> list[dict[str, str]]:
        return [{"AttributeName": n, "KeyType": kind} for n, kind in zip(names, ("HASH", "RANGE"), strict=False)]

    client.create_table(
        TableName=name,
        KeySchema=schema(*keys),
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in types.items()],
        GlobalSecondaryIndexes=[
            {"IndexName": index[0], "KeySchema": schema(*index[1:]), "Projection": {"ProjectionType": "ALL"}}
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def _derivations(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """From now on, counts (``["n"]``) how often a ``DynamoType`` derives its value."""
    count: collections.Counter[str] = collections.Counter()
    original = dynamo_type.DynamoType.cast_value

    def counting(self: Any) -> Any:
        count["n"] += 1
        return original.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(dynamo_type.DynamoType, "cast_value", property(counting))
    return count
