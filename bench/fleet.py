"""Benchmark: the daemon as operators run it, as real processes against one local AWS emulator.

    .venv/bin/python bench/fleet.py [--quick] [--json PATH] [--plot PATH] [--idle-only N]

- **drain**: N new worksets dropped into S3 (the Daylily layout), K daemons with a trivial step and a webhook
  channel: time until every workset is complete, and the AWS calls per workset by operation (every daemon's own
  ``workset_monitor_aws_requests_total`` plus retries, summed).
- **idle**: N registered worksets (1 000, 10 000, 100 000; finished, as after a busy month), one daemon with nothing
  to do: AWS calls per scan interval by service and operation, daemon CPU per scan interval, its resident memory.
  The queue-gauge refreshes have their own intervals (``metrics.queue_refresh_s``, ``finished_refresh_s``) and are
  measured on their own.
- **takeover**: a daemon SIGKILLed while it runs a workset; the time until another daemon's sweeper takes the
  workset over, against ``sweep_interval_s + duration_s + 5 s``.

Budgets (exit status 1 when one is missed): an idle scan interval makes at most ceil(N/1000) + 1 S3 calls per prefix
and 3 DynamoDB calls (checked over a window of k intervals as at most k + 1 times that: each loop may tick once more
at the window's edge); the daemon's RSS stays under 150 MB with 100 000 registered; takeover within
``sweep_interval_s + duration_s + 5 s``. (Claims and heartbeats: ``bench/claim.py``; notification latency:
``bench/notify.py``.)

The emulator runs in this process; its bucket and table are seeded through moto's backends directly (seeding is not
what is measured). Daemons talk to it over HTTP on 127.0.0.1, exactly as they would to AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.lab

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.s3.models import s3_backends
from prometheus_client.parser import text_string_to_metric_families

from monitor import actions, states
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import Emulator
from monitor.child import Child
from monitor.config import TableConfig
from monitor.model import FINISHED_STATES, FLEET_ID, Priority, State, WorksetId
from monitor.states import Action, Context
from tests.lab import workset_files

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET, TABLE = "bench-fleet", "bench-fleet"
PREFIX, DRAIN, TAKEOVER = "worksets/", "drain/", "takeover/"  # one prefix per part: each lists only its own
RSS_BUDGET_MB = 150
TAKEOVER_SLACK_S = 5.0
DEFAULT_HEARTBEAT_S = 15.0  # [lease] heartbeat_s, which the idle part keeps: the chores role is renewed that often
ROLE_HELD = 'workset_monitor_role_held{"role": "chores"}'


# --- the site: an emulator with a bucket and a table ---------------------------------------------------------------


class Site:
    def __init__(self, emulator: Emulator, workdir: Path) -> None:
        self.endpoint = emulator.endpoint
        self.workdir = workdir
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint)
        self.dynamodb = boto3.client("dynamodb", endpoint_url=self.endpoint)
        self.s3.create_bucket(Bucket=BUCKET)
        schema.ensure_table(self.dynamodb, TableConfig(name=TABLE))
        self._s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        self._ddb = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        self.finished = 0  # folders seeded under PREFIX

    def seed_finished(self, count: int) -> None:
        """``count`` more worksets that ran long ago: a folder in S3 and a ``complete`` item in the table."""
        ctx = Context(now_ms=int(time.time() * 1000) - 86_400_000, actor="bench")
        counted: Counter[str] = Counter()
        for n in range(self.finished, self.finished + count):
            name = f"done-{n:06d}"
            self._s3.put_object(BUCKET, f"{PREFIX}{name}/daylily.complete", b"x", disable_notification=True)
            decision = states.new_workset(
                workset_id=WorksetId(name),
                bucket=BUCKET,
                prefix=f"{PREFIX}{name}/",
                priority=Priority.NORMAL,
                ctx=ctx,
                imported=State.COMPLETE,
            )
            self._ddb.put_item(TABLE, codec.workset_item(decision.after))
            counted[codec.done_counter_sk(decision.after)] += 1
        for sk, n in sorted(counted.items()):  # as the finishing transactions would have counted them
            self.dynamodb.update_item(
                TableName=TABLE,
                Key={"pk": {"S": FLEET_ID}, "sk": {"S": sk}},
                UpdateExpression="ADD n :n",
                ExpressionAttributeValues={":n": {"N": str(n)}},
            )
        self.finished += count

    def drop_new(self, prefix: str, names: list[str], *, samples: int = 2) -> None:
        """New worksets in the Daylily layout, ``daylily.ready`` last, as a lab's upload script writes them."""
        files = workset_files(samples=samples)
        for name in names:
            for relative, body in files.items():
                self._s3.put_object(BUCKET, f"{prefix}{name}/{relative}", body, disable_notification=True)

    def states(self) -> Counter[str]:
        """Every workset's state, read from the base table (consistent, through the emulator's HTTP API)."""
        found: Counter[str] = Counter()
        kwargs: dict[str, Any] = {
            "TableName": TABLE,
            "ConsistentRead": True,
            "FilterExpression": "sk = :ws",
            "ExpressionAttributeValues": {":ws": {"S": codec.CONTROL_SK}},
            "ProjectionExpression": "#s",
            "ExpressionAttributeNames": {"#s": "state"},
        }
        while True:
            page = self.dynamodb.scan(**kwargs)
            found.update(item["state"]["S"] for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def cancel(self, workset_id: str) -> None:
        """What an operator does with a workset nobody should run: ``workset-monitor cancel``."""
        store = DynamoStore(self.dynamodb, TABLE)
        ctx = Context(now_ms=int(time.time() * 1000), actor="bench", reason="benchmark over")
        asyncio.run(actions.act(store, WorksetId(workset_id), Action.CANCEL, ctx))

    def free_chores(self) -> None:
        """What a clean stop does: no holder of the chores role (a SIGKILLed holder's would hold it for a lease)."""
        self.dynamodb.delete_item(TableName=TABLE, Key=codec.CHORES_KEY)

    def history(self, workset_id: str) -> list[dict[str, Any]]:
        page = self.dynamodb.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :evt)",
            ExpressionAttributeValues={":pk": {"S": workset_id}, ":evt": {"S": "evt#"}},
            ConsistentRead=True,
        )
        return [codec.decode_fields(item) for item in page["Items"]]


# --- daemons ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``workset-monitor run`` as a child process, with its metrics port."""

    def __init__(self, site: Site, name: str, config: str, *, metrics: str = "") -> None:
        self.name = name
        self.port = free_port()
        path = site.workdir / f"{name}.toml"
        path.write_text(
            f'[aws]\nregion = "us-east-1"\nendpoint_url = "{site.endpoint}"\n'
            f'[table]\nname = "{TABLE}"\n'
            f'[metrics]\nhost = "127.0.0.1"\nport = {self.port}\n{metrics}'
            '[log]\nlevel = "warning"\nformat = "json"\n' + config
        )
        self.child = Child(path, site.workdir / f"{name}.log", env=CREDENTIALS)
        self.process = self.child.process

    def metrics(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def wait_serving(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.child.running():
                tail = self.child.log()[-2000:]
                raise RuntimeError(f"daemon {self.name} exited with {self.process.returncode}; its log ends:\n{tail}")
            with contextlib.suppress(OSError):
                if any("loop_last_success" in key and '"scanner"' in key for key in self.metrics()):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"daemon {self.name} did not finish a scan within {timeout_s} s")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size."""
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024

    def stop(self) -> int:
        return self.child.stop()

    def kill(self) -> None:
        self.child.kill()


def aws_calls(samples: dict[str, Any], *, outcomes: bool = False) -> Counter[str]:
    """``service.Operation`` (with ``outcomes``: `` outcome``) -> requests, retries included, from one scrape."""
    calls: Counter[str] = Counter()
    for key, value in samples.items():
        name, _, labels = key.partition("{")
        if name in ("workset_monitor_aws_requests_total", "workset_monitor_aws_retries_total"):
            parsed = json.loads("{" + labels)
            outcome = parsed.get("outcome", "retried")
            calls[f"{parsed['service']}.{parsed['operation']}" + (f" {outcome}" if outcomes else "")] += int(value)
    return calls


def step_command(script: str) -> str:
    return json.dumps([sys.executable, "-c", script])


# --- drain --------------------------------------------------------------------------------------------------------


class Webhook:
    """A local webhook receiver that counts deliveries."""

    def __init__(self) -> None:
        received: Counter[str] = Counter()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received[json.loads(body).get("event", {}).get("event", "?")] += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def drain(site: Site, *, worksets: int, daemons: int, concurrency: int, timeout_s: float = 600) -> dict[str, Any]:
    hook = Webhook()
    config = (
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["{DRAIN}"]\ninterval_s = 2.0\n'
        "[lease]\nduration_s = 20.0\nheartbeat_s = 5.0\nsweep_interval_s = 5.0\n"
        f"[run]\nmax_concurrent = {concurrency}\n"
        f'[notify]\nevents = ["complete", "error"]\n[notify.webhook]\nurl = "{hook.url}"\n'
        f'[[pipeline.steps]]\nname = "noop"\ncommand = {step_command("pass")}\n'
    )
    names = [f"new-{n:05d}" for n in range(worksets)]
    baseline = site.states()["complete"]
    site.drop_new(DRAIN, names)
    fleet = [Daemon(site, f"drain-{i}", config) for i in range(daemons)]
    started = time.monotonic()
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if site.states()["complete"] - baseline >= worksets:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        time.sleep(3)  # the last notifications
        calls: Counter[str] = Counter()
        for daemon in fleet:
            calls.update(aws_calls(daemon.metrics(), outcomes=True))
    finally:
        codes = [daemon.stop() for daemon in fleet]
        hook.close()
    done = site.states()["complete"] - baseline
    per = {op: round(n / worksets, 2) for op, n in sorted(calls.items())}
    by_op: Counter[str] = Counter()
    for op, n in calls.items():
        by_op[op.split(" ")[0]] += n
    return {
        "worksets": worksets,
        "daemons": daemons,
        "max_concurrent": concurrency,
        "completed": done,
        "seconds": round(elapsed, 1),
        "worksets_per_s": round(done / elapsed, 1),
        "calls_per_workset": per,
        "dynamodb_per_workset": round(sum(v for k, v in by_op.items() if k.startswith("dynamodb.")) / worksets, 1),
        "s3_per_workset": round(sum(v for k, v in by_op.items() if k.startswith("s3.")) / worksets, 1),
        "webhooks": sum(hook.received.values()),
        "exit_codes": codes,
    }


# --- idle ---------------------------------------------------------------------------------------------------------


IDLE_GAUGES = "queue_refresh_s = 86400\nfinished_refresh_s = 86400\n"  # the gauges have their own interval: apart


def idle_config(interval_s: float) -> str:
    """An idle daemon's configuration: the bench's prefix scanned and swept every ``interval_s``, one no-op step."""
    return (
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["{PREFIX}"]\ninterval_s = {interval_s}\n'
        f"[lease]\nsweep_interval_s = {interval_s}\n"
        f'[[pipeline.steps]]\nname = "noop"\ncommand = {step_command("pass")}\n'
    )


def idle(site: Site, *, registered: int, interval_s: float, cycles: int) -> dict[str, Any]:
    if site.finished < registered:
        site.seed_finished(registered - site.finished)
    started = time.monotonic()
    daemon = Daemon(site, f"idle-{registered}", idle_config(interval_s), metrics=IDLE_GAUGES)
    try:
        daemon.wait_serving(timeout_s=600)
        deadline = time.monotonic() + 120
        while daemon.metrics().get(ROLE_HELD) != 1:  # the one daemon does the chores: measure it doing them
            if time.monotonic() > deadline:
                raise RuntimeError(f"the idle daemon never took the chores role; see {daemon.child.log_path}")
            time.sleep(0.1)
        startup_s = round(time.monotonic() - started, 1)
        time.sleep(2 * interval_s)  # settle: the retrying reads confirm the counter
        before, cpu_before, t0 = aws_calls(daemon.metrics()), daemon.cpu_s(), time.monotonic()
        windows: list[Counter[str]] = []
        previous = before
        for k in range(1, cycles + 1):
            time.sleep(max(t0 + k * interval_s - time.monotonic(), 0))
            now = aws_calls(daemon.metrics())
            windows.append(now - previous)
            previous = now
        elapsed = time.monotonic() - t0
        cpu = daemon.cpu_s() - cpu_before
        rss, peak = daemon.rss_mb()
        total = previous - before
    finally:
        daemon.stop()
    refresh = gauge_refresh(site)
    n_cycles = elapsed / interval_s
    by_op = {op: round(n / n_cycles, 2) for op, n in sorted(total.items())}
    # Writes are reported apart from the idle reads: the presence item's (one PutItem per [run] presence_interval_s)
    # and the chores role's renewal (one UpdateItem per [lease] heartbeat_s; an idle daemon holds no workset).
    writes = ("dynamodb.PutItem", "dynamodb.UpdateItem")

    def reads(calls: Counter[str]) -> int:
        return sum(v for k, v in calls.items() if k.startswith("dynamodb.") and k not in writes)

    return {
        "registered": registered,
        "interval_s": interval_s,
        "cycles": round(n_cycles, 2),
        "s3_calls": sum(v for k, v in total.items() if k.startswith("s3.")),
        "dynamodb_calls": reads(total),
        "presence_writes": total.get("dynamodb.PutItem", 0),
        "role_renewals": total.get("dynamodb.UpdateItem", 0),
        "startup_s": startup_s,
        "s3_per_cycle": round(sum(v for k, v in total.items() if k.startswith("s3.")) / n_cycles, 2),
        "dynamodb_per_cycle": round(reads(total) / n_cycles, 2),
        "max_dynamodb_in_a_cycle": max(reads(w) for w in windows),
        "calls_per_cycle": by_op,
        "cpu_s_per_cycle": round(cpu / n_cycles, 3),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "budget_s3": math.ceil(registered / 1000) + 1,
        "budget_dynamodb": 3,
        "gauge_refresh": refresh,
    }


def gauge_refresh(site: Site) -> dict[str, Any]:
    """The queue-gauge refreshes (``Store.stats``), in this process: every ``queue_refresh_s`` the active states,
    every ``finished_refresh_s`` all of them (complete, ignored and cancelled only grow)."""
    client = boto3.client("dynamodb", endpoint_url=site.endpoint)
    sends: Counter[str] = Counter()
    client.meta.events.register("before-send.dynamodb", lambda event_name, **_: sends.update([event_name]))
    store, result = DynamoStore(client, TABLE), {}
    for name, chosen in (("active", [s for s in State if s not in FINISHED_STATES]), ("all", None)):
        sends.clear()
        started = time.perf_counter()
        asyncio.run(store.stats(now_ms=int(time.time() * 1000), states=chosen))
        result[name] = {"dynamodb_calls": sum(sends.values()), "seconds": round(time.perf_counter() - started, 2)}
    return result


# --- takeover -----------------------------------------------------------------------------------------------------


def takeover(site: Site, *, lease_s: float, sweep_s: float, trials: int) -> dict[str, Any]:
    config = (
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["{TAKEOVER}"]\ninterval_s = 1.0\n'
        f"[lease]\nduration_s = {lease_s}\nheartbeat_s = {lease_s / 4}\nsweep_interval_s = {sweep_s}\n"
        "[run]\nmax_concurrent = 1\n"
        f'[[pipeline.steps]]\nname = "hold"\ncommand = {step_command("import time; time.sleep(3600)")}\n'
    )
    measured: list[float] = []
    roles: list[float] = []  # kill to the survivor holding the chores role
    for trial in range(trials):
        name = f"kill-{trial:02d}"
        victim = Daemon(site, f"victim-{trial}", config)
        try:
            victim.wait_serving()
            site.drop_new(TAKEOVER, [name])
            deadline = time.monotonic() + 60
            while not any(e["type"] == "started" for e in site.history(name)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was never started; see {victim.child.log_path}")
                time.sleep(0.1)
            time.sleep(lease_s / 4 * 1.5)  # a heartbeat or two
        except BaseException:
            victim.stop()
            raise
        survivor = Daemon(site, f"survivor-{trial}", config)
        survivor.wait_serving()
        killed_ms = time.time() * 1000
        victim.kill()
        try:
            deadline = time.monotonic() + sweep_s + 2 * lease_s + 60
            while time.monotonic() < deadline:
                if len(roles) <= trial and survivor.metrics().get(ROLE_HELD) == 1:
                    roles.append((time.time() * 1000 - killed_ms) / 1000)
                expired = [e for e in site.history(name) if e["type"] == "lease_expired"]
                if expired:
                    measured.append((expired[0]["at_ms"] - killed_ms) / 1000)
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"{name} was not taken over; see {survivor.child.log_path}")
        finally:
            survivor.kill()  # it may have claimed the workset again, to run the hour-long step itself
            site.cancel(name)  # leave nothing behind for the next part
            site.free_chores()
    # The victim held the chores role (it was alone when it started): the survivor takes the role over first (a
    # lease after the victim's last renewal, plus up to a sweep interval), then watches the workset for a lease.
    budget = sweep_s + 2 * lease_s + TAKEOVER_SLACK_S
    return {
        "lease_s": lease_s,
        "sweep_interval_s": sweep_s,
        "trials": trials,
        "seconds": [round(s, 2) for s in measured],
        "max_s": round(max(measured), 2),
        "median_s": round(statistics.median(measured), 2),
        "budget_s": budget,
        "role_seconds": [round(s, 2) for s in roles],
        "role_max_s": round(max(roles), 2),
        "role_budget_s": lease_s + sweep_s + TAKEOVER_SLACK_S,
    }


# --- report -------------------------------------------------------------------------------------------------------


def plot(idle_results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - the bench extra; only needed for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ns = [r["registered"] for r in idle_results]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(ns, [r["s3_per_cycle"] for r in idle_results], "o-", label="S3 calls (measured)")
    ax.plot(ns, [r["budget_s3"] for r in idle_results], "--", color="tab:blue", alpha=0.5, label="S3 budget")
    ax.plot(ns, [r["dynamodb_per_cycle"] for r in idle_results], "s-", label="DynamoDB calls (measured)")
    ax.axhline(3, linestyle="--", color="tab:orange", alpha=0.5, label="DynamoDB budget (3)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("registered worksets (N)")
    ax.set_ylabel("AWS calls per idle scan interval")
    ax.set_title("workset-monitor: the cost of doing nothing")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check(results: dict[str, Any]) -> list[str]:
    missed = []
    for r in results["idle"]:
        n = r["registered"]
        # Each loop ticks once per interval, but a window of k intervals may catch one more tick of each at its edge.
        edge = round(r["cycles"]) + 1
        if r["s3_calls"] > r["budget_s3"] * edge:
            missed.append(f"idle N={n}: {r['s3_per_cycle']} S3 calls per cycle (budget {r['budget_s3']})")
        if r["dynamodb_calls"] > r["budget_dynamodb"] * edge:
            missed.append(f"idle N={n}: {r['dynamodb_per_cycle']} DynamoDB calls per cycle (budget 3)")
        if r["role_renewals"] > r["cycles"] * r["interval_s"] / DEFAULT_HEARTBEAT_S + 1:
            missed.append(f"idle N={n}: {r['role_renewals']} role renewals (one per {DEFAULT_HEARTBEAT_S:g} s)")
        if n >= 100_000 and r["peak_rss_mb"] >= RSS_BUDGET_MB:
            missed.append(f"idle N={n}: peak RSS {r['peak_rss_mb']} MB (budget {RSS_BUDGET_MB})")
    t = results["takeover"]
    if t["max_s"] > t["budget_s"]:
        missed.append(f"takeover took {t['max_s']} s (budget {t['budget_s']} s)")
    if len(t["role_seconds"]) < t["trials"] or t["role_max_s"] > t["role_budget_s"]:
        missed.append(f"the chores role's failover took {t['role_max_s']} s (budget {t['role_budget_s']} s)")
    d = results["drain"]
    if d["completed"] != d["worksets"]:
        missed.append(f"drain: {d['completed']} of {d['worksets']} worksets completed")
    return missed


def progress(part: str, result: dict[str, Any]) -> dict[str, Any]:
    print(f"{part}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the idle-cost plot (PNG) here")
    parser.add_argument("--idle-only", type=int, metavar="N", help="only the idle part, at N registered worksets")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    # (registered, scan interval, intervals measured): longer windows where intervals are cheap
    sizes = [(1000, 2.0, 30), (10_000, 5.0, 20), (100_000, 30.0, 10)]
    sizes = [(n, p, 5) for n, p, _ in sizes[:2]] if args.quick else sizes
    results: dict[str, Any] = {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as tmp, Emulator() as emulator:
        site = Site(emulator, Path(tmp))
        if args.idle_only:
            print(json.dumps(idle(site, registered=args.idle_only, interval_s=30.0, cycles=3), indent=2))
            return 0
        # Small table first: a daemon's start reads the registered ids, which takes the emulator minutes at 100 000.
        drained = drain(site, worksets=60 if args.quick else 300, daemons=3, concurrency=8)
        results["drain"] = progress("drain", drained)
        taken = takeover(site, lease_s=6.0, sweep_s=3.0, trials=2 if args.quick else 5)
        results["takeover"] = progress("takeover", taken)
        results["idle"] = []
        for n, p, cycles in sizes:
            results["idle"].append(progress(f"idle {n}", idle(site, registered=n, interval_s=p, cycles=cycles)))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results["idle"], args.plot)
    missed = check(results)
    for line in missed:
        print(f"BUDGET MISSED: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
