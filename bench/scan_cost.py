"""Benchmark: what discovery costs. AWS calls by operation and wall time for the first scan cycle (everything new)
and an idle cycle (nothing new), at several numbers of worksets, each with 50 objects in ``sample_data/``.

Budget: an idle cycle makes at most ceil(N/1000) + 1 S3 calls per prefix and at most 3 DynamoDB calls, whatever
``sample_data/`` holds. Exits non-zero when it is missed.

    .venv/bin/python bench/scan_cost.py [--sizes 1000 10000] [--json]

Runs moto in-process; the buckets are seeded through moto's backend directly (seeding is not what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
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
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from monitor import logs
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import speed_up
from monitor.aws.s3 import S3Source
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.scanner import Scanner
from monitor.states import nobody

BUCKET, PREFIX, TABLE = "bench-lab", "worksets/", "bench-scan"
DATA_OBJECTS = 50
SAMPLES = 2  # the manifest references 2 x 2 FASTQs; the other 46 objects are unreferenced data


def seed(count: int) -> None:
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    header = "RUN_ID\tSAMPLE_ID\tR1_FQ\tR2_FQ\n"
    rows = "".join(f"R1\tS{i}\tS{i}_R1.fastq.gz\tS{i}_R2.fastq.gz\n" for i in range(SAMPLES))
    for n in range(count):
        folder = f"{PREFIX}ws-{n:06d}/"
        files = {
            "daylily.ready": b"2026-11-26T00:00:00Z",
            "stage_samples.tsv": (header + rows).encode(),
            "daylily_work.yaml": b"dy-r: -p produce_snv_concordances\n",
            "daylily_info.yaml": b"priority: normal\n",
        }
        for i in range(SAMPLES):
            files[f"sample_data/S{i}_R1.fastq.gz"] = b"@"
            files[f"sample_data/S{i}_R2.fastq.gz"] = b"@"
        for i in range(DATA_OBJECTS - 2 * SAMPLES):
            files[f"sample_data/lane/{i:03d}.bin"] = b"x"
        for name, body in files.items():
            backend.put_object(BUCKET, folder + name, body, disable_notification=True)


async def cycle(scanner: Scanner, sends: collections.Counter[str]) -> dict[str, Any]:
    sends.clear()
    started = time.perf_counter()
    report = await scanner.scan_once()
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "outcomes": dict(report.outcomes),
        "calls": dict(sorted(sends.items())),
        "s3_calls": sum(n for op, n in sends.items() if op.startswith("s3.")),
        "dynamodb_calls": sum(n for op, n in sends.items() if op.startswith("dynamodb.")),
    }


def measure(count: int) -> dict[str, Any]:
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        dynamodb = boto3.client("dynamodb")
        schema.ensure_table(dynamodb, TableConfig(name=TABLE))
        seeded = time.perf_counter()
        seed(count)
        seeded = time.perf_counter() - seeded
        sends: collections.Counter[str] = collections.Counter()
        for client in (s3, dynamodb):
            client.meta.events.register(
                "before-send", lambda event_name, **_: sends.update([".".join(event_name.split(".")[1:3])])
            )
        store, source = DynamoStore(dynamodb, TABLE), S3Source(s3, BUCKET)

        async def run() -> dict[str, Any]:
            scanner = Scanner(store, source, SystemClock(), prefixes=[PREFIX], actor="bench", notify=nobody)
            first = await cycle(scanner, sends)
            idle = await cycle(scanner, sends)
            restarted = Scanner(store, source, SystemClock(), prefixes=[PREFIX], actor="bench", notify=nobody)
            after_restart = await cycle(restarted, sends)
            idle_after_restart = await cycle(restarted, sends)
            return {"first": first, "idle": idle, "restart": after_restart, "idle_after_restart": idle_after_restart}

        result = asyncio.run(run())
    budget_s3 = math.ceil(count / 1000) + 1
    return {
        "worksets": count,
        "objects_per_workset": DATA_OBJECTS + 4,
        "seed_seconds": round(seeded, 1),
        "budget": {"s3_per_prefix": budget_s3, "dynamodb": 3},
        **result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure(level="warning", fmt="json")
    speed_up()
    results = [measure(n) for n in args.sizes]
    failures = []
    for r in results:
        for name in ("idle", "idle_after_restart"):
            idle = r[name]
            if idle["s3_calls"] > r["budget"]["s3_per_prefix"] or idle["dynamodb_calls"] > r["budget"]["dynamodb"]:
                failures.append(
                    f"N={r['worksets']} {name}: {idle['s3_calls']} S3 / {idle['dynamodb_calls']} DynamoDB calls"
                )
        if r["first"]["outcomes"].get("registered") != r["worksets"]:
            failures.append(f"N={r['worksets']}: first cycle registered {r['first']['outcomes']}")
    meta = {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    if args.json:
        print(json.dumps({**meta, "results": results}, indent=2))
    else:
        print(f"scan cost, {meta['date']}, {meta['machine']}, moto in-process, one prefix")
        print("| worksets | cycle | S3 calls | DynamoDB calls | wall time | calls by operation |")
        print("|---|---|---|---|---|---|")
        for r in results:
            for name in ("first", "idle", "restart", "idle_after_restart"):
                c = r[name]
                ops = ", ".join(f"{op} {n}" for op, n in c["calls"].items())
                print(
                    f"| {r['worksets']} | {name.replace('_', ' ')} | {c['s3_calls']} | {c['dynamodb_calls']} | "
                    f"{c['seconds']:.2f} s | {ops} |"
                )
    for failure in failures:
        print(f"BUDGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
