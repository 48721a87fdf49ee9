"""Event mode: S3 notifications through SQS register a workset within seconds, and are deleted only after that."""

from __future__ import annotations

import json
from typing import Any

import boto3

from monitor import errors
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.aws.sqs import SqsQueue
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.events import ReadyListener, ready_objects
from monitor.model import State, WorksetId
from monitor.scanner import Scanner
from monitor.states import nobody
from tests.conftest import REGION, run
from tests.lab import BUCKET, Lab


def setup(store_class: type[DynamoStore] = DynamoStore) -> tuple[Any, Any, DynamoStore, ReadyListener, Lab]:
    s3 = boto3.client("s3", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    url = sqs.create_queue(QueueName="ready-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": "daylily.ready"}]}},
                }
            ]
        },
    )
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="events"))
    store = store_class(dynamodb, "events")
    scanner = Scanner(
        store, S3Source(s3, BUCKET), FakeClock(), prefixes=["incoming/", "urgent runs/"], actor="s", notify=nobody
    )
    listener = ReadyListener(SqsQueue(sqs, url), scanner, bucket=BUCKET)
    return s3, sqs, store, listener, Lab(s3)


def test_a_ready_notification_registers_the_workset_and_is_deleted(mocked_aws: None) -> None:
    _, _, store, listener, lab = setup()
    run(listener.poll_once(wait_s=0))  # the s3:TestEvent S3 sends when notifications are configured
    lab.workset("ws-fast", prefix="urgent runs/")  # a space in the prefix: the key arrives URL-encoded
    assert run(listener.poll_once(wait_s=0)) == 1
    ws = run(store.get(WorksetId("ws-fast")))
    assert ws is not None and ws.state is State.READY and ws.prefix == "urgent runs/ws-fast/"
    assert run(listener.poll_once(wait_s=0)) == 0  # nothing left in the queue


def test_a_notification_stays_queued_when_registration_fails(mocked_aws: None) -> None:
    class Throttled(DynamoStore):
        down = False

        async def locations(self, workset_ids: Any = None) -> dict[WorksetId, str]:
            if self.down:
                raise errors.AwsTemporaryError("DynamoDB throttled")
            return await super().locations(workset_ids)

    _, _, store, listener, lab = setup(store_class=Throttled)
    run(listener.poll_once(wait_s=0))
    lab.workset("ws-later", prefix="incoming/")
    store.down = True  # type: ignore[attr-defined]
    assert run(listener.poll_once(wait_s=0)) == 0
    store.down = False  # type: ignore[attr-defined]
    assert run(store.get(WorksetId("ws-later"))) is None  # not registered, and the message was not deleted


def test_notifications_for_other_places_are_consumed_without_registering(mocked_aws: None) -> None:
    _, _, store, listener, lab = setup()
    run(listener.poll_once(wait_s=0))
    lab.workset("ws-elsewhere", prefix="archive/")  # not a configured prefix
    lab.workset("deep", prefix="incoming/nested/")  # not a direct child of a prefix
    assert run(listener.poll_once(wait_s=0)) == 2
    assert run(store.list()) == []


def test_parsing_notifications() -> None:
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": "in/ws+1%21/daylily.ready"}},
    }
    assert [r.key for r in ready_objects(json.dumps({"Records": [record]}))] == ["in/ws 1!/daylily.ready"]
    wrapped = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})
    assert len(ready_objects(wrapped)) == 1  # delivered through SNS
    removed = dict(record, eventName="ObjectRemoved:Delete")
    other = dict(record, s3={"bucket": {"name": "b"}, "object": {"key": "in/ws/stage_samples.tsv"}})
    for body in (
        "not json",
        "[]",
        json.dumps({"Records": [removed, other, {"bad": 1}]}),
        json.dumps({"Event": "s3:TestEvent"}),
    ):
        assert ready_objects(body) == []
