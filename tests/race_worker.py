"""One competing daemon for tests/test_race.py: claims and completes worksets until none are left.

Run as ``python -m tests.race_worker ENDPOINT TABLE OWNER``; prints one JSON line: the worksets it completed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import boto3

from monitor.aws.dynamo import DynamoStore
from monitor.clock import SystemClock
from monitor.leases import Claimer, Policy


async def work(endpoint: str, table: str, owner: str) -> list[str]:
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    store = DynamoStore(client, table)
    claimer = Claimer(store, SystemClock(), owner=owner, policy=Policy(duration_s=60, heartbeat_s=15))
    completed: list[str] = []
    idle_rounds = 0
    while idle_rounds < 3:
        held = await claimer.claim(slots=4)
        idle_rounds = 0 if held else idle_rounds + 1
        for holding in held:
            assert await holding.heartbeat_once()
            await holding.step_finished("run")
            await holding.complete()
            completed.append(holding.workset_id)
    return completed


if __name__ == "__main__":
    endpoint, table, owner = sys.argv[1:4]
    done = asyncio.run(work(endpoint, table, owner))
    print(json.dumps({"owner": owner, "completed": done}))
