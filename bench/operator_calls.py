"""Benchmark: the AWS requests each everyday operator command makes, held to budgets (exit 1 when one is missed).

300 worksets (200 ready, 100 in error) in moto, in process; every command through the real command line
(``cli.main``), counting requests by operation. The numbers are deterministic: they are what a user pays for.

    .venv/bin/python bench/operator_calls.py [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* (the lab, register)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")  # noqa: S106 - moto

import boto3
from moto import mock_aws

from monitor import cli, states
from monitor.aws.dynamo import DynamoStore
from monitor.model import Lease, WorksetId
from monitor.states import Action, Context
from tests.conftest import register, run
from tests.faults import aws_calls
from tests.lab import Lab

READY, ERRORS = 200, 100
TABLE = "daylily-worksets"
REGION = "us-east-1"


def seed(config: Path) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="lab-bucket")
    Lab(s3).workset("ws-good")
    assert cli.main(["--config", str(config), "init"]) == 0
    store = DynamoStore(boto3.client("dynamodb", region_name=REGION), TABLE)
    now = int(time.time() * 1000)
    for i in range(READY + ERRORS):
        register(store, f"ws-{i:03d}", ctx=Context(now_ms=now - 600_000, actor="scanner"))
    for i in range(ERRORS):
        ws = run(store.get(WorksetId(f"ws-{i:03d}")))
        token = f"{i:032d}"
        lease = Lease(token=token, owner="host:1:a", heartbeat_at_ms=now, expires_at_ms=now + 60_000)
        ctx = Context(now_ms=now - 300_000, actor="host:1:a")
        claimed = run(store.commit(states.decide(ws, Action.CLAIM, ctx, lease=lease)))
        run(store.commit(states.decide(claimed, Action.FAIL_PERMANENT, ctx, error="exit 2"), fence_token=token))


# (command line, the most requests it may make, why)
BUDGETS: list[tuple[list[str], int, str]] = [
    (["list"], len(states.State) + math.ceil((READY + ERRORS) / 100), "a query per state + a BatchGetItem per 100"),
    (["list", "--limit", "50"], 2, "one index page and one BatchGetItem: it stops one past the limit"),
    (["list", "--state", "error", "--since", "1h", "--prefix", "worksets/ws-05"], 2, "filters cost no extra read"),
    (["report"], len(states.State) + math.ceil((READY + ERRORS) / 100), "what list costs"),
    (["validate", "s3://lab-bucket/worksets/ws-good/"], 8, "2 listings, 2 reads, a HEAD per data object (4)"),
    (["retry", "--state", "error", "--dry-run"], 2, "the selection only"),
    (["retry", "--state", "error", "--yes"], 2 + ERRORS, "the selection + one conditional write each"),
    (["cancel", "ws-100", "ws-101", "ws-102"], 6, "a read and a conditional write each"),
    (["set-priority", "ws-103", "urgent"], 2, "a read and a conditional write"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results, missed = [], 0
    with tempfile.TemporaryDirectory() as tmp, mock_aws():
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[aws]\nregion = "{REGION}"\n[table]\nname = "{TABLE}"\n'
            '[scan]\nbucket = "lab-bucket"\nprefixes = ["worksets/"]\n'
        )
        seed(config)
        for argv, budget, why in BUDGETS:
            out, err = io.StringIO(), io.StringIO()
            with aws_calls() as calls, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["--config", str(config), *argv])
            total = sum(calls.values())
            ok = code == 0 and total <= budget
            missed += not ok
            results.append(
                {
                    "command": " ".join(argv),
                    "exit": code,
                    "calls": dict(calls),
                    "total": total,
                    "budget": budget,
                    "why": why,
                    "ok": ok,
                }
            )
            print(f"{'ok  ' if ok else 'MISS'} {' '.join(argv):62s} {total:4d} <= {budget:4d}  {dict(calls)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
