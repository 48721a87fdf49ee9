"""Benchmark: what a full step log (``[run] step_logs = "s3"``) costs the daemon, held to budgets (exit 1 if missed).

Each case runs a real step (a Python child) through ``steps.Runner`` in a fresh process, with a ``LogStore`` that
counts the ``PutObject`` requests and bytes it is given and keeps nothing, so the process's peak RSS growth is the
runner's own: the bound on memory is one 8 MiB segment (and its copy while it is uploaded), whatever the output.

- ``burst N``: N MiB written as fast as the pipe takes it;
- ``drip``: 2 MiB as 2 000 lines over 20 s (a chatty, slow step): the open segment's rewrites.

    .venv/bin/python bench/step_logs.py [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor import logs, step_logs
from monitor.clock import SystemClock
from monitor.config import StepConfig
from monitor.steps import Outcome, Runner

BURST = "import sys; b = bytes(range(256)) * 4096; [sys.stdout.buffer.write(b) for _ in range({n})]"
DRIP = "import time\nfor i in range(2000): print(str(i).rjust(1023, '.'), flush=True); time.sleep(0.01)"
MIB = 1 << 20


class Counting:
    """A LogStore that counts and forgets."""

    def __init__(self) -> None:
        self.puts = 0
        self.uploaded = 0
        self.final: dict[str, int] = {}

    async def put(self, bucket: str, key: str, body: bytes) -> None:
        self.puts += 1
        self.uploaded += len(body)
        self.final[key] = len(body)

    async def sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        return dict(self.final)

    async def read(self, bucket: str, key: str, *, start: int = 0) -> bytes:
        return b""


def one(case: str, mib: int) -> dict[str, Any]:
    logs.configure(level="warning", stream=sys.stderr)  # stdout is this case's result
    code = BURST.replace("{n}", str(mib)) if case == "burst" else DRIP
    store = Counting()
    step = StepConfig(name="s", command=[sys.executable, "-c", code], timeout_s=600)
    values = {"workset_id": "ws", "bucket": "b", "prefix": "w/", "s3_uri": "", "attempt": 1, "epoch": 1}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = asyncio.run(
        Runner(SystemClock(), base_env={}, logs=step_logs.opener(store)).run(step, values, stop=asyncio.Event())
    )
    assert result.outcome is Outcome.DONE, result
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {
        "case": case if case == "drip" else f"burst {mib} MiB",
        "output_mib": round(sum(store.final.values()) / MIB, 2),
        "objects": len(store.final),
        "puts": store.puts,
        "uploaded_mib": round(store.uploaded / MIB, 2),
        "peak_rss_growth_mib": round(grown / 1024, 1),
        "seconds": result.seconds,
    }


CASES = [("burst", 1), ("burst", 10), ("burst", 100), ("drip", 2)]


def budget(row: dict[str, Any]) -> list[str]:
    problems = []
    if row["peak_rss_growth_mib"] > 40:
        problems.append(f"{row['case']}: the runner grew by {row['peak_rss_growth_mib']} MiB (budget 40: one segment)")
    if row["case"].startswith("burst"):
        segments = -(-row["output_mib"] // 8)
        if row["puts"] > segments + 2:
            problems.append(f"{row['case']}: {row['puts']} PutObjects for {segments:.0f} segments (budget +2)")
    elif row["uploaded_mib"] > 8 * row["output_mib"]:
        problems.append(f"drip: uploaded {row['uploaded_mib']} MiB for {row['output_mib']} MiB of output (budget 8x)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "MIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return 0
    rows = []
    for case, mib in CASES:  # each in a fresh process: peak RSS is per process
        out = subprocess.run(  # noqa: S603 - this script, again
            [sys.executable, __file__, "--one", case, str(mib)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout))
    print(f"{'case':<16}{'output MiB':>11}{'objects':>9}{'puts':>6}{'uploaded MiB':>14}{'RSS +MiB':>10}{'s':>7}")
    for r in rows:
        print(
            f"{r['case']:<16}{r['output_mib']:>11}{r['objects']:>9}{r['puts']:>6}{r['uploaded_mib']:>14}"
            f"{r['peak_rss_growth_mib']:>10}{r['seconds']:>7}"
        )
    problems = [p for r in rows for p in budget(r)]
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "problems": problems}, indent=2) + "\n")
    for problem in problems:
        print(f"OVER BUDGET: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
