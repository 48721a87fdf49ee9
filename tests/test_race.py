"""Several OS processes compete for the same worksets through one emulator: each is run exactly once."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import boto3

from monitor import actions
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.model import EventType, Priority, State, WorksetId
from monitor.states import Context
from tests.conftest import REGION, ROOT, run

PROCESSES = 4
WORKSETS = 200


def test_competing_processes_claim_and_complete_each_workset_exactly_once(aws_endpoint: str) -> None:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    schema.ensure_table(client, TableConfig(name="race"))
    store = DynamoStore(client, "race")

    async def seed() -> None:
        for i in range(WORKSETS):
            await actions.register(
                store,
                workset_id=WorksetId(f"ws-{i:03d}"),
                bucket="lab-bucket",
                prefix=f"worksets/ws-{i:03d}/",
                priority=list(Priority)[i % 3],
                ctx=Context(now_ms=SystemClock().now_ms(), actor="seed"),
            )

    run(seed())
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_worker", aws_endpoint, "race", f"racer-{n}:{n}:0000"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.monotonic() - started

    completed = collections.Counter(name for report in reports for name in report["completed"])
    assert len(completed) == WORKSETS and set(completed.values()) == {1}, "a workset was completed twice or never"
    assert sum(1 for report in reports if report["completed"]) >= 2, "no real competition happened"

    async def check() -> None:
        for ws in await store.list():
            events = [e.type for e in await store.history(ws.workset_id)]
            assert ws.state is State.COMPLETE
            assert events == [EventType.REGISTERED, EventType.STARTED, EventType.STEP_FINISHED, EventType.COMPLETE]
        assert (await store.fleet()).running == 0

    run(check())
    print(f"race: {PROCESSES} processes, {WORKSETS} worksets, {elapsed:.1f} s")
    assert elapsed < 60, f"the race took {elapsed:.1f} s"
