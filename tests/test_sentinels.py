"""Dual-write: with scan.write_sentinels the legacy daylily.* files follow every transition."""

from __future__ import annotations

import boto3

from monitor import actions, errors, legacy
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Policy
from monitor.model import Priority, State, WorksetId
from monitor.sentinels import SentinelMirror
from monitor.states import Action, Context
from tests.conftest import REGION, run
from tests.lab import BUCKET, Lab


def test_every_transition_rewrites_the_legacy_sentinels(mocked_aws: None) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="mirror"))
    lab = Lab(s3)
    folder = lab.workset("ws-1", sentinels=("daylily.ready", "daylily.lock"))
    store = SentinelMirror(DynamoStore(dynamodb, "mirror"), S3Source(s3, BUCKET))
    clock = FakeClock()
    policy = Policy(max_attempts=2)

    def sentinels() -> set[str]:
        return {k.removeprefix(folder) for k in lab.keys(folder) if k.removeprefix(folder).startswith("daylily.")}

    async def scenario() -> None:
        ctx = Context(now_ms=clock.now_ms(), actor="scanner")
        await actions.register(
            store, workset_id=WorksetId("ws-1"), bucket=BUCKET, prefix=folder, priority=Priority.NORMAL, ctx=ctx
        )
        [held] = await Claimer(store, clock, owner="h:1:0", policy=policy).claim(slots=1)
        assert sentinels() == {legacy.READY, legacy.IN_PROGRESS}  # lock removed, in_progress written
        await held.fail("exit 2: reference genome missing", temporary=False)
        assert sentinels() == {legacy.READY, legacy.ERROR}
        body = s3.get_object(Bucket=BUCKET, Key=folder + legacy.ERROR)["Body"].read()
        assert legacy.error_reason(body) == "exit 2: reference genome missing" and b"Z\t" in body
        await actions.act(store, WorksetId("ws-1"), Action.RETRY, Context(now_ms=clock.now_ms(), actor="op"))
        assert sentinels() == {legacy.READY}  # claimable again, as the legacy monitor sees it
        [held] = await Claimer(store, clock, owner="h:1:0", policy=policy).claim(slots=1)
        await held.complete()
        assert sentinels() == {legacy.READY, legacy.COMPLETE}
        assert legacy.classify(sentinels()) == legacy.COMPLETE
        await actions.act(store, WorksetId("ws-1"), Action.IGNORE, Context(now_ms=clock.now_ms(), actor="op"))
        assert legacy.classify(sentinels()) == legacy.IGNORE
        assert store.failures == 0

    run(scenario())


def test_a_failing_sentinel_write_never_fails_the_transition(mocked_aws: None) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="mirror"))

    class Broken:
        bucket = BUCKET

        async def write(self, key: str, body: bytes) -> None:
            raise errors.AwsError("access denied (s3:PutObject)")

        async def delete(self, key: str) -> None:
            raise errors.AwsError("access denied (s3:DeleteObject)")

    store = SentinelMirror(DynamoStore(dynamodb, "mirror"), Broken())  # type: ignore[arg-type]

    async def scenario() -> None:
        ctx = Context(now_ms=1, actor="op")
        await actions.register(
            store, workset_id=WorksetId("w"), bucket=BUCKET, prefix="w/", priority=Priority.LOW, ctx=ctx
        )
        decision = await actions.act(store, WorksetId("w"), Action.CANCEL, ctx)
        assert decision.after.state is State.CANCELLED
        ws = await store.get(WorksetId("w"))
        assert ws is not None and ws.state is State.CANCELLED and store.failures == 1

    run(scenario())
