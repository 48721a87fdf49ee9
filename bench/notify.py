"""Benchmark: commit-to-delivery latency of notifications, with local fakes.

A workset change is committed through the store (DynamoDB on the local emulator, over HTTP) with its event marked
pending; the outbox loop, woken by the commit, delivers it to a webhook on 127.0.0.1. Latency runs from the event's
commit time to the moment the webhook server received it. Budget: p99 < 1 s (the deployment checklist asks < 5 s).

    .venv/bin/python bench/notify.py [--events 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fake_http

import boto3

from monitor import actions, logs
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import Emulator
from monitor.clock import SystemClock
from monitor.config import NotifyConfig, TableConfig
from monitor.model import Priority, WorksetId
from monitor.notify import filters
from monitor.notify.outbox import Doorbell, Outbox
from monitor.notify.webhook import WebhookChannel
from monitor.states import Context
from tests.fake_http import FakeServer

BUDGET_P99_S = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(endpoint: str, server: FakeServer, count: int, gap_s: float) -> dict[str, Any]:
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - the emulator accepts any
    )
    schema.ensure_table(client, TableConfig(name="bench-notify"), poll_s=0.1)
    notify = NotifyConfig.model_validate({"events": ["invalid"], "webhook": {"url": server.url}})
    doorbell = Doorbell()
    store = DynamoStore(client, "bench-notify", on_pending=doorbell.ring)
    clock = SystemClock()
    assert notify.webhook is not None
    channels = [WebhookChannel(notify.webhook)]
    outbox = Outbox(store, clock, owner="bench:1:0", doorbell=doorbell, notify=notify, channels=channels)
    stop = asyncio.Event()

    async def notifier() -> None:  # what the daemon's notifier loop does: a pass whenever the doorbell rings
        while not stop.is_set():
            doorbell.rung.clear()
            await outbox.deliver_pending(budget_s=60.0)
            await clock.sleep(60.0, until=doorbell.rung)

    loop = asyncio.create_task(notifier())
    committed: dict[str, int] = {}
    for i in range(count):
        name = f"ws-{i:04d}"
        ctx = Context(now_ms=clock.now_ms(), actor="bench", notify=filters.wanted(notify))
        await actions.register(
            store,
            workset_id=WorksetId(name),
            bucket="bench",
            prefix=f"w/{name}/",
            priority=Priority.NORMAL,
            ctx=ctx,
            invalid_reason="benchmark event",
        )
        committed[f"{name}#1"] = ctx.now_ms
        await asyncio.sleep(gap_s)
    while len(server.requests) < count:  # noqa: ASYNC110 - the fake server runs in its own threads
        await asyncio.sleep(0.05)
    stop.set()
    doorbell.ring()
    await loop
    latencies = [r.at - committed[r.headers["x-workset-monitor-event-id"]] / 1000 for r in server.requests]
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "events": count,
        "gap_ms": gap_s * 1000,
        "delivered": len(server.requests),
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(percentile(latencies, 0.99), 4),
        "max_s": round(max(latencies), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="time between commits")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure(level="warning", fmt="json")
    server = FakeServer().start()
    try:
        with Emulator() as emulator:
            result = asyncio.run(measure(emulator.endpoint, server, args.events, args.gap_ms / 1000))
    finally:
        server.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"notification latency, {result['date']}, {result['machine']}: {result['events']} events, one every "
            f"{result['gap_ms']:.0f} ms, DynamoDB emulator over HTTP, webhook on loopback"
        )
        print(
            f"p50 {result['p50_s'] * 1000:.0f} ms, p99 {result['p99_s'] * 1000:.0f} ms, "
            f"max {result['max_s'] * 1000:.0f} ms"
        )
    if result["p99_s"] >= BUDGET_P99_S:
        print(f"BUDGET MISSED: p99 {result['p99_s']} s >= {BUDGET_P99_S} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
