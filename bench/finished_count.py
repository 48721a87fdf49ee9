"""Benchmark: what counting the queue costs as finished worksets pile up, in the finished-index layout (counted by
counters) and in the layout from before it (every finished workset in the state index, read to be counted).

For each N: N complete worksets (spread over 12 months) and 10 ready ones, then one full count (``Store.stats``, what
the queue gauges do every ``finished_refresh_s`` and ``status`` on demand): requests, items read (what read units
grow with; ``bench/scale.py`` prices them by DynamoDB's rules) and wall time.

Budget: in the new layout the count reads the same requests and at most ``DONE_SHARDS`` x 12 months counter items
at every N. Exits non-zero when it is missed.

    .venv/bin/python bench/finished_count.py [--sizes 1000 10000 100000] [--json FILE]

Runs moto in-process; the table is seeded with BatchWriteItem (seeding is not what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from typing import Any

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3
from moto import mock_aws

from monitor import logs
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import speed_up
from monitor.config import TableConfig
from monitor.model import Priority, State, Workset, WorksetId
from monitor.states import gsi_sort_key

TABLE = "bench-finished"
JAN_1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MONTH_MS = 30 * 86_400_000
READY = 10


def workset(n: int, state: State) -> Workset:
    at = JAN_1 + (n % 12) * MONTH_MS + n
    return Workset(
        workset_id=WorksetId(f"ws-{n:06d}"),
        state=state,
        priority=Priority.NORMAL,
        bucket="lab",
        prefix=f"worksets/ws-{n:06d}/",
        created_at_ms=at - 3_600_000,
        updated_at_ms=at,
        available_at_ms=at - 3_600_000,
        version=4,
        started_at_ms=at - 3_000_000 if state is State.COMPLETE else None,
        finished_at_ms=at if state is State.COMPLETE else None,
    )


def seed(client: Any, count: int, *, old_layout: bool) -> None:
    items: list[dict[str, Any]] = []
    counters: collections.Counter[str] = collections.Counter()
    for n in range(count):
        ws = workset(n, State.COMPLETE)
        item = codec.workset_item(ws)
        if old_layout:  # as written before the finished index: in the state index, not counted
            item = {k: v for k, v in item.items() if k not in ("done_pk", "done_sk")}
            item["gsi_sk"] = {"S": gsi_sort_key(ws)}
        else:
            counters[codec.done_counter_sk(ws)] += 1
        items.append(item)
    items += [codec.workset_item(workset(count + n, State.READY)) for n in range(READY)]
    items += [{"pk": {"S": "#fleet"}, "sk": {"S": sk}, "n": {"N": str(n)}} for sk, n in sorted(counters.items())]
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        client.batch_write_item(RequestItems={TABLE: batch})


def measure(count: int, *, old_layout: bool) -> dict[str, Any]:
    with mock_aws():
        client = boto3.client("dynamodb")
        schema.ensure_table(client, TableConfig(name=TABLE))
        seed(client, count, old_layout=old_layout)
        sends: collections.Counter[str] = collections.Counter()
        read = {"items": 0}
        original = client.query

        def query(**kw: Any) -> Any:
            response = original(**kw)
            read["items"] += int(response.get("Count", 0))
            return response

        client.query = query
        client.meta.events.register("before-send", lambda event_name, **_: sends.update([event_name.split(".")[2]]))
        store = DynamoStore(client, TABLE)
        started = time.perf_counter()
        stats = asyncio.run(store.stats(now_ms=JAN_1 + 13 * MONTH_MS))
        seconds = time.perf_counter() - started
    assert stats.count(State.COMPLETE) == count and stats.count(State.READY) == READY, stats
    return {
        "worksets": count,
        "layout": "state index (before)" if old_layout else "finished index + counters",
        "requests": dict(sends),
        "items_read": read["items"],
        "seconds": round(seconds, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    logs.configure(level="warning", fmt="console")
    speed_up()
    rows = [measure(n, old_layout=old) for n in args.sizes for old in (True, False)]
    new = [r for r in rows if not r["layout"].startswith("state")]
    problems = []
    if len({json.dumps(r["requests"], sort_keys=True) for r in new}) > 1:
        problems.append("the count's requests change with the number of finished worksets")
    ceiling = codec.DONE_SHARDS * 12 + READY
    problems += [
        f"N={r['worksets']}: read {r['items_read']} items (budget {ceiling})" for r in new if r["items_read"] > ceiling
    ]
    result = {
        "benchmark": "finished_count",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "rows": rows,
        "problems": problems,
    }
    for r in rows:
        print(
            f"N={r['worksets']:>7}  {r['layout']:<26} requests {sum(r['requests'].values()):>3}  "
            f"items {r['items_read']:>7}  {r['seconds']:>7.2f} s"
        )
    for problem in problems:
        print("BUDGET MISSED:", problem, file=sys.stderr)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
