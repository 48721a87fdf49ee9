"""Benchmark: what a claim and a heartbeat cost, against a bare UpdateItem on the same emulator.

Counts the HTTP sends botocore makes per operation (deterministic: this is what AWS bills) and times them.
Exits non-zero when a claim's ownership write or a heartbeat takes more than one round trip.

    .venv/bin/python bench/claim.py [--worksets 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import boto3

from monitor import actions, logs
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import Emulator
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Policy
from monitor.model import Priority, WorksetId
from monitor.recorder import Tally
from monitor.states import Context

TABLE = "bench-claim"


class Sends:
    """Counts botocore HTTP sends per operation name (retries included)."""

    def __init__(self, client: Any) -> None:
        self.by_operation: collections.Counter[str] = collections.Counter()
        client.meta.events.register("before-send.dynamodb", self._count)

    def _count(self, event_name: str, **_: Any) -> None:
        self.by_operation[event_name.rsplit(".", 1)[-1]] += 1

    def total(self) -> int:
        return sum(self.by_operation.values())


class TimedCommits:
    """The store, with each commit (a claim's ownership write) timed."""

    def __init__(self, store: DynamoStore) -> None:
        self._store = store
        self.durations: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self._store.commit(*args, **kwargs)
        finally:
            self.durations.append(time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(endpoint: str, count: int) -> dict[str, Any]:
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - the emulator accepts any
    )
    schema.ensure_table(client, TableConfig(name=TABLE))
    store = DynamoStore(client, TABLE)
    clock = SystemClock()
    for i in range(count):
        await actions.register(
            store,
            workset_id=WorksetId(f"ws-{i:05d}"),
            bucket="bench-bucket",
            prefix=f"w/ws-{i:05d}/",
            priority=list(Priority)[i % 3],
            ctx=Context(now_ms=clock.now_ms(), actor="bench"),
        )
    sends = Sends(client)

    # The floor: a bare conditional UpdateItem on one small item, same client, same server.
    client.put_item(TableName=TABLE, Item={"pk": {"S": "#bench"}, "sk": {"S": "floor"}, "n": {"N": "0"}})
    floor = []
    for _ in range(count):
        started = time.perf_counter()
        client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": "#bench"}, "sk": {"S": "floor"}},
            UpdateExpression="ADD n :one",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        floor.append(time.perf_counter() - started)

    tally = Tally()
    claimer = Claimer(TimedCommits(store), clock, owner="bench:1:0", policy=Policy(), recorder=tally)  # type: ignore[arg-type]
    sends.by_operation.clear()
    rounds, held = [], []
    while len(held) < count:
        started = time.perf_counter()
        got = await claimer.claim(slots=1)
        rounds.append(time.perf_counter() - started)
        held += got
        if not got:
            break
    claim_sends = dict(sends.by_operation)
    writes = claimer._store.durations  # type: ignore[attr-defined]

    sends.by_operation.clear()
    beats = []
    for holding in held:
        started = time.perf_counter()
        ok = await holding.heartbeat_once()
        beats.append(time.perf_counter() - started)
        assert ok
    heartbeat_sends = dict(sends.by_operation)

    floor_p50 = statistics.median(floor)
    claims = len(held)
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "worksets": count,
        "claims": claims,
        "claim_sends": claim_sends,
        "ownership_writes_per_claim": claim_sends.get("TransactWriteItems", 0) / claims,
        "index_queries_per_claim": claim_sends.get("Query", 0) / claims,
        "heartbeat_sends": heartbeat_sends,
        "round_trips_per_heartbeat": sum(heartbeat_sends.values()) / len(held),
        "floor_update_ms": {"p50": floor_p50 * 1000, "p99": percentile(floor, 0.99) * 1000},
        "claim_round_ms": {"p50": statistics.median(rounds) * 1000, "p99": percentile(rounds, 0.99) * 1000},
        "claim_write_ms": {"p50": statistics.median(writes) * 1000, "p99": percentile(writes, 0.99) * 1000},
        "claim_write_vs_floor_p50": statistics.median(writes) / floor_p50,
        "claim_write_vs_floor_p99": percentile(writes, 0.99) / percentile(floor, 0.99),
        "heartbeat_ms": {"p50": statistics.median(beats) * 1000, "p99": percentile(beats, 0.99) * 1000},
        "claim_vs_floor_p50": statistics.median(rounds) / floor_p50,
        "claim_vs_floor_p99": percentile(rounds, 0.99) / percentile(floor, 0.99),
        "heartbeat_vs_floor_p50": statistics.median(beats) / floor_p50,
        "counts": dict(tally.claims),
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"claim and heartbeat cost, {r['date']}, {r['machine']}, {r['worksets']} worksets, emulator on loopback",
            "",
            "| measure | value |",
            "|---|---|",
            f"| ownership writes per claim (TransactWriteItems) | {r['ownership_writes_per_claim']:.2f} |",
            f"| index queries per claim (slots=1, so one round per claim) | {r['index_queries_per_claim']:.2f} |",
            f"| round trips per heartbeat (UpdateItem) | {r['round_trips_per_heartbeat']:.2f} |",
            f"| bare UpdateItem p50 / p99 | {r['floor_update_ms']['p50']:.2f} / {r['floor_update_ms']['p99']:.2f} ms |",
            f"| claim write p50 / p99 (the conditional transaction) | {r['claim_write_ms']['p50']:.2f} / "
            f"{r['claim_write_ms']['p99']:.2f} ms |",
            f"| claim write / bare UpdateItem, p50 / p99 | {r['claim_write_vs_floor_p50']:.2f}x / "
            f"{r['claim_write_vs_floor_p99']:.2f}x |",
            f"| claim round p50 / p99 (two index queries + the write) | {r['claim_round_ms']['p50']:.2f} / "
            f"{r['claim_round_ms']['p99']:.2f} ms |",
            f"| claim round / bare UpdateItem, p50 / p99 | {r['claim_vs_floor_p50']:.1f}x / "
            f"{r['claim_vs_floor_p99']:.1f}x |",
            f"| heartbeat p50 / p99 | {r['heartbeat_ms']['p50']:.2f} / {r['heartbeat_ms']['p99']:.2f} ms |",
            f"| heartbeat / bare UpdateItem, p50 | {r['heartbeat_vs_floor_p50']:.2f}x |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worksets", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure(level="warning", fmt="json")
    with Emulator() as emulator:
        result = asyncio.run(measure(emulator.endpoint, args.worksets))
    print(json.dumps(result, indent=2) if args.json else report(result))
    failures = []
    if result["ownership_writes_per_claim"] != 1:
        failures.append(f"claim takes {result['ownership_writes_per_claim']} ownership writes, budget 1")
    if result["round_trips_per_heartbeat"] != 1:
        failures.append(f"heartbeat takes {result['round_trips_per_heartbeat']} round trips, budget 1")
    for failure in failures:
        print(f"BUDGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
