"""Benchmark: one daemon's own CPU, idle and busy, to compare two versions of the code on the same machine.

One ``workset-monitor run`` (of the code in ``--code``, a checkout or git worktree; default: this one) against the
serialized emulator, every interval 0.25 s: ``--idle-s`` seconds with nothing to do, then ``--worksets`` folders
dropped and run (one ``true`` step each). Prints the daemon's CPU (user + system, from /proc; its steps' apart) and
the requests the emulator answered in each phase, as one JSON line. Run old and new alternately, one at a time on an
idle machine: the runs vary by ~20 %, so compare several of each (docs/performance.md, "After the engine split").

    .venv/bin/python bench/daemon_cpu.py [--code /tmp/wt-old] [--idle-s 60] [--worksets 60]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* (the lab, the fleet config, a webhook)

from monitor.aws import schema
from monitor.aws.emulator import Emulator
from monitor.child import Child
from monitor.config import TableConfig
from tests import fleet
from tests.fake_http import serve
from tests.lab import Lab

BUCKET, TABLE, PREFIX = "lab-bucket", "cpu", "w/"
Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def cpu_s(pid: int) -> tuple[float, float]:
    """(the process's own user + system seconds, its waited-for children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1], help="the code to run")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--worksets", type=int, default=60)
    args = parser.parse_args()
    answered: collections.Counter[str] = collections.Counter()

    def counting(app: Wsgi) -> Wsgi:
        def counted(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
            answered["requests"] += 1
            return app(environ, start)

        return counted

    hooks = serve()
    hook = next(hooks)
    with Emulator(wrap=counting) as emulator:
        keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
        dynamodb = boto3.client("dynamodb", endpoint_url=emulator.endpoint, **keys)  # type: ignore[call-overload]
        s3 = boto3.client("s3", endpoint_url=emulator.endpoint, **keys)  # type: ignore[call-overload]
        schema.ensure_table(dynamodb, TableConfig(name=TABLE), poll_s=0.1)
        s3.create_bucket(Bucket=BUCKET)
        work = Path(tempfile.mkdtemp(prefix="wm-cpu-"))
        config = fleet.write_config(
            work / "c.toml",
            endpoint=emulator.endpoint,
            table=TABLE,
            bucket=BUCKET,
            prefix=PREFIX,
            step=["true"],
            hook_url=hook.url,
            interval_s=0.25,
            lease_s=10,
            heartbeat_s=1,
            sweep_s=0.25,
        )
        daemon = Child(config, work / "daemon.log", env=fleet.CREDENTIALS, cwd=args.code)
        try:
            time.sleep(5)  # start-up, not measured
            idle_from, idle_requests = cpu_s(daemon.pid), answered["requests"]
            time.sleep(args.idle_s)
            busy_from, busy_requests = cpu_s(daemon.pid), answered["requests"]
            lab = Lab(s3, bucket=BUCKET)
            for i in range(args.worksets):
                lab.workset(f"ws-{i:03d}", prefix=PREFIX, samples=1)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and _complete(dynamodb) < args.worksets:
                time.sleep(0.5)
            end, end_requests = cpu_s(daemon.pid), answered["requests"]
        finally:
            daemon.stop(timeout_s=20)
        result = {
            "code": str(args.code),
            "idle_s": args.idle_s,
            "idle_cpu_s": round(busy_from[0] - idle_from[0], 2),
            "idle_requests": busy_requests - idle_requests,
            "worksets": args.worksets,
            "busy_cpu_s": round(end[0] - busy_from[0], 2),
            "busy_steps_cpu_s": round(end[1] - busy_from[1], 2),
            "busy_requests": end_requests - busy_requests,  # with this harness's own polling: 2 scans a second
            "webhook_deliveries": len(hook.requests),
        }
        print(json.dumps(result), flush=True)
    hooks.close()


def _complete(dynamodb: Any) -> int:
    items = dynamodb.scan(TableName=TABLE, ProjectionExpression="#s", ExpressionAttributeNames={"#s": "state"})
    return sum(1 for item in items["Items"] if item.get("state", {}).get("S") == "complete")


if __name__ == "__main__":
    main()
