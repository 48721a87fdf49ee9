"""`init`: create, verify, refuse a table with the wrong shape, wait for ACTIVE."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from monitor import errors
from monitor.aws import codec, schema
from monitor.config import TableConfig


def test_creates_the_table_and_index_then_finds_it_correct(dynamodb: Any) -> None:
    first = schema.ensure_table(dynamodb, TableConfig(name="ws-table"))
    assert first.created and first.billing_mode == "PAY_PER_REQUEST"
    table = dynamodb.describe_table(TableName="ws-table")["Table"]
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"state-priority-index", "outbox-index", "finished-index"}
    finished = indexes[codec.FINISHED_GSI]
    assert {k["AttributeName"]: k["KeyType"] for k in finished["KeySchema"]} == {"done_pk": "HASH", "done_sk": "RANGE"}
    index = indexes[codec.GSI_NAME]
    outbox = indexes[codec.OUTBOX_GSI]
    assert {k["AttributeName"]: k["KeyType"] for k in outbox["KeySchema"]} == {"outbox": "HASH", "outbox_sk": "RANGE"}
    assert {k["AttributeName"]: k["KeyType"] for k in index["KeySchema"]} == {
        "state": "HASH",
        "gsi_sk": "RANGE",
    }
    assert index["Projection"]["ProjectionType"] == "INCLUDE"
    second = schema.ensure_table(dynamodb, TableConfig(name="ws-table"))
    assert not second.created and second.notes == ()


def test_provisioned_tables_get_capacity_on_table_and_index(dynamodb: Any) -> None:
    cfg = TableConfig(name="prov-table", billing_mode="PROVISIONED", read_capacity=3, write_capacity=4)
    schema.ensure_table(dynamodb, cfg)
    table = dynamodb.describe_table(TableName="prov-table")["Table"]
    assert table["ProvisionedThroughput"]["WriteCapacityUnits"] == 4
    assert all(i["ProvisionedThroughput"]["ReadCapacityUnits"] == 3 for i in table["GlobalSecondaryIndexes"])
    report = schema.ensure_table(dynamodb, TableConfig(name="prov-table"))
    assert report.notes and "PROVISIONED" in report.notes[0]


def test_a_table_with_the_wrong_keys_is_refused_with_every_difference(dynamodb: Any) -> None:
    dynamodb.create_table(
        TableName="legacy",
        AttributeDefinitions=[{"AttributeName": "workset_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "workset_id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(errors.SchemaMismatch) as caught:
        schema.ensure_table(dynamodb, TableConfig(name="legacy"))
    message = str(caught.value)
    assert "table legacy exists but cannot be used" in message
    assert "key schema is workset_id HASH, expected pk HASH, sk RANGE" in message
    assert "index state-priority-index is missing (found: none)" in message


def test_an_index_with_the_wrong_projection_or_keys_is_refused(dynamodb: Any) -> None:
    request = schema.create_table_request(TableConfig(name="wrong-index"))
    request["GlobalSecondaryIndexes"][0]["Projection"] = {"ProjectionType": "KEYS_ONLY"}
    request["GlobalSecondaryIndexes"][0]["KeySchema"][1]["AttributeName"] = "priority"
    request["AttributeDefinitions"] = [
        {"AttributeName": n, "AttributeType": "S"}
        for n in ("pk", "sk", "state", "priority", "outbox", "outbox_sk", "done_pk", "done_sk")
    ]
    dynamodb.create_table(**request)
    with pytest.raises(errors.SchemaMismatch) as caught:
        schema.ensure_table(dynamodb, TableConfig(name="wrong-index"))
    assert "keys are state HASH, priority RANGE" in str(caught.value)
    assert "projects KEYS_ONLY" in str(caught.value)


def test_a_table_from_before_notifications_gets_the_outbox_and_finished_indexes_added(dynamodb: Any) -> None:
    request = schema.create_table_request(TableConfig(name="older"))
    request["GlobalSecondaryIndexes"] = request["GlobalSecondaryIndexes"][:1]
    request["AttributeDefinitions"] = [
        a for a in request["AttributeDefinitions"] if not a["AttributeName"].startswith(("outbox", "done_"))
    ]
    dynamodb.create_table(**request)
    problems = schema.verify(dynamodb.describe_table(TableName="older")["Table"], outbox=True, finished=True)
    assert "global secondary index finished-index is missing (run `workset-monitor init` to add it)" in problems
    report = schema.ensure_table(dynamodb, TableConfig(name="older"), poll_s=0)
    assert len(report.notes) == 2 and "added the index outbox-index" in report.notes[0]
    assert "added the index finished-index" in report.notes[1]
    names = {i["IndexName"] for i in dynamodb.describe_table(TableName="older")["Table"]["GlobalSecondaryIndexes"]}
    assert names == {"state-priority-index", "outbox-index", "finished-index"}
    assert schema.ensure_table(dynamodb, TableConfig(name="older")).notes == ()


def test_a_provisioned_table_from_before_the_finished_index_gets_it_with_the_table_s_capacity(dynamodb: Any) -> None:
    cfg = TableConfig(name="older", billing_mode="PROVISIONED", read_capacity=3, write_capacity=4)
    request = schema.create_table_request(cfg)
    request["GlobalSecondaryIndexes"] = request["GlobalSecondaryIndexes"][:2]
    request["AttributeDefinitions"] = [a for a in request["AttributeDefinitions"] if a["AttributeName"][:5] != "done_"]
    dynamodb.create_table(**request)
    report = schema.ensure_table(dynamodb, cfg, poll_s=0)
    assert report.notes == ("added the index finished-index (finished worksets, by month) to the existing table",)
    indexes = dynamodb.describe_table(TableName="older")["Table"]["GlobalSecondaryIndexes"]
    finished = next(i for i in indexes if i["IndexName"] == codec.FINISHED_GSI)
    assert finished["ProvisionedThroughput"]["WriteCapacityUnits"] == 4


class SlowTable:
    """A DynamoDB stand-in whose new table takes a few polls to become ACTIVE."""

    def __init__(self) -> None:
        self.describes = 0
        self.created: dict[str, Any] | None = None

    def describe_table(self, TableName: str) -> dict[str, Any]:
        import botocore.exceptions

        self.describes += 1
        if self.created is None:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "ResourceNotFoundException", "Message": "no"}}, "DescribeTable"
            )
        status = "ACTIVE" if self.describes >= 4 else "CREATING"
        indexes = [dict(i, IndexStatus=status) for i in self.created["GlobalSecondaryIndexes"]]
        return {
            "Table": dict(
                self.created,
                TableStatus=status,
                GlobalSecondaryIndexes=indexes,
                BillingModeSummary={"BillingMode": "PAY_PER_REQUEST"},
            )
        }

    def create_table(self, **request: Any) -> None:
        self.created = request

    def query(self, **request: Any) -> dict[str, Any]:
        return {"Items": []}  # a new table: no finished worksets to move


def test_waits_until_table_and_index_are_active() -> None:
    fake = SlowTable()
    sleeps: list[float] = []
    report = schema.ensure_table(fake, TableConfig(name="slow-table"), poll_s=2, sleep=sleeps.append)
    assert report.created and fake.describes == 4 and sleeps == [2, 2]


def test_gives_up_when_the_table_never_becomes_active() -> None:
    fake = SlowTable()
    fake.describes = -(10**9)
    with pytest.raises(errors.AwsTemporaryError, match="not ACTIVE"):
        schema.ensure_table(fake, TableConfig(name="slow-table"), timeout_s=0, sleep=lambda s: None)


def test_the_index_projects_everything_but_what_heartbeats_rewrite() -> None:
    """Claims read candidates from the index alone; a heartbeat must never cause an index write. The run's timings
    are left out too (a claim needs none of them; projecting them would change existing tables' index)."""
    from monitor.model import Lease, Priority, State, Workset, WorksetId

    ws = Workset(
        workset_id=WorksetId("w"),
        state=State.IN_PROGRESS,
        priority=Priority.LOW,
        bucket="b-1",
        prefix="w/",
        created_at_ms=1,
        updated_at_ms=1,
        available_at_ms=1,
        lease=Lease(token="t", owner="o", heartbeat_at_ms=1, expires_at_ms=1),
        current_step="s",
        steps_done=("a",),
        last_error="e",
        error_category="c",
        started_at_ms=1,
        finished_at_ms=2,
        step_ms=(("a", 3),),
    )
    attributes = set(codec.workset_fields(ws))
    keys = {"state", "gsi_sk", "done_pk", "done_sk"}  # this index's keys and the finished index's
    timings = {*codec.TIMING_ATTRIBUTES, codec.STEP_MS + "a"}
    ws = dataclasses.replace(ws, fleet_slot=3)  # counted on a fleet shard: not projected (no claim needs it)
    attributes = set(codec.workset_fields(ws))
    assert codec.FLEET_SLOT in attributes
    ws = dataclasses.replace(ws, samples=4, data_bytes=64)  # what validation counted: not projected either
    attributes = set(codec.workset_fields(ws))
    assert set(codec.REGISTRATION_ATTRIBUTES) <= attributes
    unprojected = set(codec.HEARTBEAT_ATTRIBUTES) | timings | {"fleet_slot"} | set(codec.REGISTRATION_ATTRIBUTES)
    assert set(codec.GSI_PROJECTED) == attributes - keys - unprojected
    assert len(codec.GSI_PROJECTED) <= 20  # DynamoDB's limit for INCLUDE projections
