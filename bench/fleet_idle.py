"""Benchmark: what an idle fleet costs, by registered worksets (N) and daemons (D): real daemon processes against one
local AWS emulator, N finished worksets in the table and their folders in S3, nothing to do.

    .venv/bin/python bench/fleet_idle.py [--sizes 1000 10000 100000] [--daemons 1 3 10] [--json PATH]

For each N and D: D daemons started together; once one holds the chores role, the AWS calls of every daemon over a
window of scan intervals (each daemon's own ``workset_monitor_aws_requests_total``): DynamoDB reads and S3 calls per
interval for the whole fleet, for the holder of the role and for the others. Writes are reported apart (presence,
one ``PutItem`` per ``[run] presence_interval_s``; the role's renewal, one ``UpdateItem`` per ``heartbeat_s``). The
queue gauges' refresh is measured apart (``bench/finished_count.py``): it has its own intervals.

Budgets (exit status 1 when one is missed): per interval, each daemon makes at most 3 DynamoDB reads, plus 1 for the
role's holder (its occasional look at the retrying partition, the 5-minute bound); so the fleet at most 3 D + 1;
the fleet lists each prefix ceil(N/1000) times (not D times); and at each D the fleet's reads at the largest N are
within 0.5 per interval of those at the smallest (independent of N). A window of k intervals is allowed one more
tick of each loop at its edge.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import CREDENTIALS, IDLE_GAUGES, ROLE_HELD, Daemon, Site, aws_calls, idle_config

from monitor.aws.emulator import Emulator

WRITES = ("dynamodb.PutItem", "dynamodb.UpdateItem")


def requests(samples: dict[str, Any]) -> Counter[str]:
    """The daemon's own requests (``aws_requests_total``), without botocore's retries of them: an emulator this busy
    times requests out, which says nothing about what the daemon asks for (``retries`` counts them apart)."""
    return Counter({k: v for k, v in aws_calls(samples).items()}) - retries(samples)


def retries(samples: dict[str, Any]) -> Counter[str]:
    return aws_calls({k: v for k, v in samples.items() if k.startswith("workset_monitor_aws_retries_total")})


def reads(calls: Counter[str]) -> int:
    return sum(v for k, v in calls.items() if k.startswith("dynamodb.") and k not in WRITES)


def s3(calls: Counter[str]) -> int:
    return sum(v for k, v in calls.items() if k.startswith("s3."))


def measure(site: Site, *, registered: int, daemons: int, interval_s: float, cycles: int) -> dict[str, Any]:
    if site.finished < registered:
        site.seed_finished(registered - site.finished)
    config = idle_config(interval_s)
    fleet = [Daemon(site, f"idle-{registered}-{daemons}-{i}", config, metrics=IDLE_GAUGES) for i in range(daemons)]
    try:
        holder = wait_for_holder(fleet, timeout_s=900)
        # Settle: the holder's first scan after taking the role is a cold start (it reads every registered id,
        # minutes of the emulator's time at 100 000); measure from the end of the scan after it.
        wait_for_scans(fleet[holder], 2, timeout_s=1800)
        time.sleep(interval_s)
        scrapes = [d.metrics() for d in fleet]
        t0 = time.monotonic()
        time.sleep(cycles * interval_s)
        ends = [d.metrics() for d in fleet]
        before, after = [requests(m) for m in scrapes], [requests(m) for m in ends]
        retried = sum((retries(e) - retries(b) for b, e in zip(scrapes, ends, strict=True)), Counter())
        n_cycles = (time.monotonic() - t0) / interval_s
        still = [d for d in fleet if d.metrics().get(ROLE_HELD) == 1]
    finally:
        for d in fleet:
            d.stop()
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    total: Counter[str] = sum(deltas, Counter())
    others = [reads(c) / n_cycles for i, c in enumerate(deltas) if i != holder]
    return {
        "registered": registered,
        "daemons": daemons,
        "interval_s": interval_s,
        "cycles": round(n_cycles, 2),
        "role_kept": still == [fleet[holder]],
        "fleet_dynamodb_reads_per_cycle": round(reads(total) / n_cycles, 2),
        "fleet_s3_per_cycle": round(s3(total) / n_cycles, 2),
        "holder_dynamodb_reads_per_cycle": round(reads(deltas[holder]) / n_cycles, 2),
        "others_dynamodb_reads_per_cycle_max": round(max(others), 2) if others else None,
        "others_s3_calls": sum(s3(c) for i, c in enumerate(deltas) if i != holder),
        "fleet_writes": {k: v for k, v in sorted(total.items()) if k in WRITES},
        "fleet_retries": dict(sorted(retried.items())),
        "fleet_calls_per_cycle": {k: round(v / n_cycles, 2) for k, v in sorted(total.items())},
        "budget_s3_per_cycle": math.ceil(registered / 1000),
        "budget_dynamodb_reads_per_cycle": 3 * daemons + 1,
        "window_edge": round(n_cycles) + 1,
    }


def wait_for_holder(fleet: list[Daemon], *, timeout_s: float) -> int:
    """The index of the daemon holding the chores role, once every daemon serves metrics and one holds it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = []
        for i, d in enumerate(fleet):
            if not d.child.running():
                raise RuntimeError(f"daemon {d.name} exited; its log ends:\n{d.child.log()[-2000:]}")
            try:
                held.append(d.metrics().get(ROLE_HELD))
            except OSError:
                held.append(None)
            if held[-1] == 1:
                holder = i
        if None not in held and held.count(1) == 1:
            return holder
        time.sleep(0.2)
    raise RuntimeError("no daemon took the chores role in time")


SCANS = "workset_monitor_scan_duration_seconds_count{}"  # observed after each real scan, not a tick without the role


def wait_for_scans(daemon: Daemon, count: int, *, timeout_s: float) -> None:
    """Until ``daemon`` has finished ``count`` more scans (the first, after taking the role, is the cold start)."""
    target = daemon.metrics().get(SCANS, 0) + count
    deadline = time.monotonic() + timeout_s
    while daemon.metrics().get(SCANS, 0) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon {daemon.name} finished no scan in {timeout_s} s")
        time.sleep(0.5)


def check(rows: list[dict[str, Any]]) -> list[str]:
    missed = []
    for r in rows:
        where = f"N={r['registered']} D={r['daemons']}"
        edge = r["window_edge"] / r["cycles"]  # one more tick of each loop at the window's edge
        if r["fleet_dynamodb_reads_per_cycle"] > r["budget_dynamodb_reads_per_cycle"] * edge:
            missed.append(f"{where}: {r['fleet_dynamodb_reads_per_cycle']} DynamoDB reads per interval")
        if r["fleet_s3_per_cycle"] > r["budget_s3_per_cycle"] * edge:
            missed.append(f"{where}: {r['fleet_s3_per_cycle']} S3 calls per interval")
        if r["others_s3_calls"]:
            missed.append(f"{where}: daemons without the role made {r['others_s3_calls']} S3 calls")
        if not r["role_kept"]:
            missed.append(f"{where}: the chores role moved while the fleet was idle")
    for d in sorted({r["daemons"] for r in rows}):
        at = sorted((r["registered"], r["fleet_dynamodb_reads_per_cycle"]) for r in rows if r["daemons"] == d)
        if len(at) > 1 and at[-1][1] > at[0][1] + 0.5:
            missed.append(f"D={d}: fleet reads grow with N: {at[0][1]} at {at[0][0]}, {at[-1][1]} at {at[-1][0]}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--daemons", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--interval", type=float, help="the scan and sweep interval (default 5 s, 30 s above 10 000)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as tmp, Emulator() as emulator:
        site = Site(emulator, Path(tmp))
        for n in sorted(args.sizes):
            interval_s = args.interval or (5.0 if n <= 10_000 else 30.0)  # 100 pages take the emulator seconds
            for d in args.daemons:
                row = measure(site, registered=n, daemons=d, interval_s=interval_s, cycles=args.cycles)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    missed = check(rows)
    result = {
        "benchmark": "fleet_idle",
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rows": rows,
        "missed": missed,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for line in missed:
        print(f"BUDGET MISSED: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
