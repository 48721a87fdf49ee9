"""The soak: two real daemons for half an hour of steady work, then idle, watched for what breaks at minute thirty.

    .venv/bin/python -m tests.soak [--minutes 30] [--idle-minutes 5] [--every 30] [--arrival-s 2] [--seed 1]
                                   [--json PATH] [--plot PATH]                                          (``make soak``)

``tests/test_soak.py`` runs a bounded version of it (3 busy minutes, 1 idle, a sample every 10 s) in ``make test``.

Setup: the local AWS emulator (serialized moto on 127.0.0.1); ``--daemons`` ``workset-monitor run`` processes with a
1 s scan interval, a 6 s lease renewed every 1.5 s, a sweep every second, two worksets at a time each, a webhook
channel for every event (the receiver refuses 10 % of deliveries), and each its own ``NOTIFY_SOCKET`` (a datagram
socket this harness listens on, as systemd does) and ``WATCHDOG_USEC`` (``--watchdog-s``, 20 s: a ``WATCHDOG=1``
every 5 s while healthy). The step sleeps 0.2-1.5 s and exits 75 (temporary failure: ``retrying`` with backoff) on
one attempt in ten, never on the third, so every workset must end ``complete``.

Busy phase: a new workset in the Daylily layout arrives every ``--arrival-s`` seconds (a lab's upload: the files,
``daylily.ready`` last). Idle phase: nothing arrives. Every ``--every`` seconds a sample: each daemon's RSS, open fds,
threads and CPU time (/proc), its ``/healthz``, its AWS calls by operation (its own
``workset_monitor_aws_requests_total`` and ``..._aws_retries_total``), the machine's load average, and the backlog
(ready, in progress, retrying) and the notifications pending, read from the table, with how long each of those
worksets has been waiting.

Then both daemons get SIGTERM, and the run is checked (``tests/soak_checks.py``; exit 1 on any violation): every
``/healthz`` 200; no gap between ``WATCHDOG=1`` pings longer than half the watchdog period; RSS, fds and threads
within their bounds from the warm-up (5 minutes, at most a third of the busy phase) to the end; AWS calls (all, and
DynamoDB's) per workset in the last third of the busy phase at most 20 % above the first; idle calls per interval within
docs/performance.md's budget (measured once nothing waits and no notification is pending); a backlog that does not
grow and is empty at the end; every workset complete, none longer than 120 s after it arrived; the outbox empty; both
daemons exit 0; and the harness itself kept its schedule (no workset dropped more than 10 s late).

``--json`` writes every sample and the summary; ``--plot`` (needs matplotlib: the ``bench`` extra) draws RSS, AWS
calls and the backlog over time. The daemons' logs and the step's record of its runs stay in the report's workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import Emulator
from monitor.config import TableConfig
from monitor.model import EventType, State, WorksetId
from tests import fleet, soak_checks
from tests.emulator_faults import HARNESS, Faults
from tests.fleet import CREDENTIALS, Daemon, SystemdSocket, Webhook
from tests.lab import Lab
from tests.soak_checks import Bounds, DaemonSample, Result, Sample, check

BUCKET, PREFIX, TABLE = "soak-lab", "soak/", "soak-worksets"
_HARNESS = botocore.config.Config(user_agent_extra=HARNESS)  # the harness's own calls, which a down service spares
INTERVAL_S, LEASE_S, HEARTBEAT_S, SWEEP_S = 1.0, 6.0, 1.5, 1.0
QUEUE_REFRESH_S, FINISHED_REFRESH_S = 30.0, 900.0  # the defaults: the queue gauges run as in production
WAITING = (State.READY, State.IN_PROGRESS, State.RETRYING)

STEP = """\
import os, random, sys, time
ws, epoch, attempt = os.environ["WORKSET_ID"], os.environ["WORKSET_EPOCH"], int(os.environ["WORKSET_ATTEMPT"])
rng = random.Random(f"{sys.argv[2]}:{ws}:{attempt}")
with open(sys.argv[1], "a") as runs:
    runs.write(f"{ws} {epoch} {attempt} start\\n")
time.sleep(rng.uniform(0.2, 1.5))
temporary = attempt <= 2 and rng.random() < 0.1
with open(sys.argv[1], "a") as runs:
    runs.write(f"{ws} {epoch} {attempt} {'fail' if temporary else 'end'}\\n")
sys.exit(75 if temporary else 0)
"""


def run(
    *,
    minutes: float = 30,
    idle_minutes: float = 5,
    every_s: float = 30,
    arrival_s: float = 2,
    daemons: int = 2,
    seed: int = 1,
    watchdog_s: float = 20,
    bounds: Bounds | None = None,
    down_channel: bool = False,
    step_logs: bool = False,
    workdir: Path | None = None,
    out: Any = print,
) -> Result:
    """``down_channel``: an SNS channel beside the webhook, refused for the whole run (every ``Publish`` answered
    503): the daemons run on with a backlog that only grows, for longer than the longest rest (``REST_MAX_S``).
    ``step_logs``: the daemons write every step run's full output to S3 (``[run] step_logs = "s3"``)."""
    os.environ.update(CREDENTIALS)
    work = workdir or Path(tempfile.mkdtemp(prefix="wm-soak-"))
    result = Result(
        minutes=minutes,
        idle_minutes=idle_minutes,
        every_s=every_s,
        arrival_s=arrival_s,
        daemons=daemons,
        seed=seed,
        watchdog_s=watchdog_s,
        interval_s=INTERVAL_S,
        queue_refresh_s=QUEUE_REFRESH_S,
        finished_refresh_s=FINISHED_REFRESH_S,
        heartbeat_s=HEARTBEAT_S,
        date=datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        load_average={"start": [round(x, 2) for x in os.getloadavg()]},
        workdir=str(work),
        down_channel=down_channel,
        step_logs=step_logs,
    )
    hook = Webhook(refuse=0.10, seed=seed)
    sockets: list[SystemdSocket] = []
    daemons_: list[Daemon] = []
    arrived_ms: dict[str, int] = {}
    try:
        wrap = _down if down_channel else None
        with Emulator(wrap=wrap) as emulator:
            s3 = boto3.client("s3", endpoint_url=emulator.endpoint)
            sns = boto3.client("sns", endpoint_url=emulator.endpoint, config=_HARNESS)
            topic = sns.create_topic(Name="soak-down")["TopicArn"] if down_channel else None
            s3.create_bucket(Bucket=BUCKET)
            client = boto3.client("dynamodb", endpoint_url=emulator.endpoint)
            schema.ensure_table(client, TableConfig(name=TABLE))
            store = DynamoStore(client, TABLE)
            config = fleet.write_config(
                work / "soak.toml",
                endpoint=emulator.endpoint,
                table=TABLE,
                bucket=BUCKET,
                prefix=PREFIX,
                step=fleet.write_step(work, STEP, str(work / "runs.log"), str(seed)),
                hook_url=hook.url,
                sns_topic_arn=topic,
                interval_s=INTERVAL_S,
                lease_s=LEASE_S,
                heartbeat_s=HEARTBEAT_S,
                sweep_s=SWEEP_S,
                max_concurrent=2,
                max_attempts=5,
                backoff_s=(2, 8),
                claim_s=10,
                metrics=f"queue_refresh_s = {QUEUE_REFRESH_S}\nfinished_refresh_s = {FINISHED_REFRESH_S}\n",
            )
            env = {"WATCHDOG_USEC": str(round(watchdog_s * 1_000_000))}
            if step_logs:
                env["WORKSET_MONITOR_RUN__STEP_LOGS"] = "s3"
            for i in range(daemons):
                sockets.append(SystemdSocket(work / f"d{i}.notify"))
                daemons_.append(Daemon(f"d{i}", config, work, env=env | {"NOTIFY_SOCKET": str(sockets[-1].path)}))
            _wait_serving(daemons_, result)
            t0 = time.monotonic()
            if not result.died:
                _busy_then_idle(result, daemons_, store, Lab(s3, bucket=BUCKET), arrived_ms, t0, bounds or Bounds())
            result.stopped_at_s = time.monotonic() - t0
            result.exit_codes = [d.stop() for d in daemons_]
            result.pings = [[round(t - t0, 2) for t in sock.times("WATCHDOG=1")] for sock in sockets]
            asyncio.run(_final(result, store, arrived_ms))
    finally:
        for daemon in daemons_:
            if daemon.process.poll() is None:
                daemon.kill()
        for sock in sockets:
            sock.close()
        hook.close()
    result.webhook_deliveries = sum(hook.received.values())
    result.webhook_refused = sum(hook.refused.values())
    runs = (work / "runs.log").read_text().split("\n") if (work / "runs.log").exists() else []
    result.step_runs = sum(line.endswith(" start") for line in runs)
    result.temporary_failures = sum(line.endswith(" fail") for line in runs)
    result.load_average["end"] = [round(x, 2) for x in os.getloadavg()]
    result.summary, found = check(result, bounds or Bounds())
    result.violations += found
    out(json.dumps(result.summary, indent=2))
    return result


def _wait_serving(daemons: list[Daemon], result: Result, timeout_s: float = 90) -> None:
    """Until every daemon's /healthz answers 200 (it has started its loops), or record why not."""
    deadline = time.monotonic() + timeout_s
    waiting = list(daemons)
    while waiting and time.monotonic() < deadline:
        for daemon in list(waiting):
            if daemon.process.poll() is not None:
                result.died.append(f"{daemon.name}: exited with {daemon.process.returncode} while starting")
                waiting.remove(daemon)
            elif daemon.get("/healthz", timeout_s=2)[0] == 200:
                waiting.remove(daemon)
        time.sleep(0.2)
    result.died += [f"{daemon.name}: not serving {timeout_s:.0f} s after its start" for daemon in waiting]


def _busy_then_idle(
    result: Result,
    daemons: list[Daemon],
    store: DynamoStore,
    lab: Lab,
    arrived_ms: dict[str, int],
    t0: float,
    bounds: Bounds,
) -> None:
    """Drop a workset every ``arrival_s`` until the busy phase ends, sample every ``every_s`` until the idle one ends
    (a last sample at the very end); drift-free: both schedules are multiples of their period from ``t0``. A due
    sample goes first; a drop that comes late is recorded (``arrival_lag_s``): the harness must keep its schedule."""
    busy_end, end = t0 + result.minutes * 60, t0 + (result.minutes + result.idle_minutes) * 60
    next_drop, next_sample, seen_waiting = t0, t0, {}
    while True:
        now = time.monotonic()
        if next_sample <= now or now >= end:
            result.samples.append(_sample(result, daemons, store, arrived_ms, t0, seen_waiting, bounds))
            next_sample += result.every_s
            dead = [d for d in daemons if d.process.poll() is not None]
            if dead or now >= end:
                result.died += [f"{d.name}: exited with {d.process.returncode} during the run" for d in dead]
                return
            continue
        if next_drop <= now and next_drop < busy_end:
            result.arrival_lag_s = round(max(result.arrival_lag_s, now - next_drop), 2)
            name = f"ws-{len(arrived_ms):05d}"
            lab.workset(name, prefix=PREFIX, samples=1)
            arrived_ms[name] = int(time.time() * 1000)
            next_drop += result.arrival_s
            continue
        wake = min(next_sample, end, *([next_drop] if next_drop < busy_end else []))
        time.sleep(max(0.0, wake - time.monotonic()))


def _sample(
    result: Result,
    daemons: list[Daemon],
    store: DynamoStore,
    arrived_ms: dict[str, int],
    t0: float,
    seen_waiting: dict[str, str],
    bounds: Bounds,
) -> Sample:
    t_s = time.monotonic() - t0
    per_daemon = []
    for daemon in daemons:
        try:
            usage = daemon.usage()
        except OSError:  # it has exited: the caller records that
            usage = fleet.Usage(rss_mb=0, fds=0, threads=0, cpu_s=0)
        status, body = daemon.get("/healthz")
        _, metrics = daemon.get("/metrics")
        with contextlib.suppress(ValueError):
            body = json.loads(body).get("reason", body) if status != 200 else ""
        per_daemon.append(
            DaemonSample(
                rss_mb=round(usage.rss_mb, 2),
                fds=usage.fds,
                threads=usage.threads,
                cpu_s=usage.cpu_s,
                healthz=status,
                health_reason=body[:200],
                calls=dict(sorted(fleet.aws_calls(metrics).items())) if metrics.startswith("#") else {},
            )
        )
    waiting = asyncio.run(_waiting(store))
    now_ms = int(time.time() * 1000)
    for ws_id, state in waiting.items():
        age_s = (now_ms - arrived_ms.get(ws_id, now_ms)) / 1000
        if age_s > bounds.stuck_s and ws_id not in seen_waiting:
            seen_waiting[ws_id] = state
            result.stuck.append(f"{ws_id}: still {state} {age_s:.0f} s after it arrived (bound {bounds.stuck_s:g} s)")
    return Sample(
        t_s=round(t_s, 2),
        phase="busy" if t_s < result.minutes * 60 else "idle",
        dropped=len(arrived_ms),
        backlog={state.value: sum(s == state.value for s in waiting.values()) for state in WAITING},
        **_outbox(store, result.down_channel),
        load1=round(os.getloadavg()[0], 2),
        daemons=per_daemon,
    )


def _outbox(store: DynamoStore, down_channel: bool) -> dict[str, int]:
    """What the outbox holds: pending (up to 100); with a channel down, those the webhook still waits for, and
    every pending event (the down channel's backlog: read whole, thousands of events, once a sample)."""
    if not down_channel:
        return {"outbox": len(asyncio.run(store.pending_events(limit=100)))}
    pending = asyncio.run(store.pending_events(limit=100_000))
    return {"outbox": sum("webhook" not in e.notified for e in pending), "parked": len(pending)}


def _down(app: Any) -> Any:
    """The emulator with SNS refused (503) for the whole run, everything else answered as usual."""
    faults = Faults(app, down=frozenset({"sns"}))
    faults.enabled = False  # no other fault: only the channel is down
    return faults


async def _waiting(store: DynamoStore) -> dict[str, str]:
    """Every workset that is ready, in progress or retrying, with its state (the table's word, read now)."""
    found: dict[str, str] = {}
    for state in WAITING:
        found |= {ws.workset_id: ws.state.value for ws in await store.list(state=state)}
    return found


async def _final(result: Result, store: DynamoStore, arrived_ms: dict[str, int]) -> None:
    """Every workset's final state and its time from arrival to ``complete``; what the outbox still holds."""
    worksets = {ws.workset_id: ws for ws in await store.list()}
    result.states = {}
    for ws in worksets.values():
        result.states[ws.state.value] = result.states.get(ws.state.value, 0) + 1
    result.not_complete = sorted(
        name for name in arrived_ms if name not in worksets or worksets[WorksetId(name)].state is not State.COMPLETE
    )
    for name, at_ms in sorted(arrived_ms.items()):
        if name in worksets and worksets[WorksetId(name)].state is State.COMPLETE:
            done = [e.at_ms for e in await store.history(WorksetId(name)) if e.type is EventType.COMPLETE]
            result.latency_s.extend(round((ms - at_ms) / 1000, 2) for ms in done[:1])
    if result.down_channel:
        pending = await store.pending_events(limit=100_000)
        result.outbox_left = sum("webhook" not in e.notified for e in pending)
        result.parked_left = len(pending)
    else:
        result.outbox_left = len(await store.pending_events(limit=100))


# --- report -------------------------------------------------------------------------------------------------------


def plot(result: Result, path: Path) -> None:
    import matplotlib  # the bench extra; only needed for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    minutes = [s.t_s / 60 for s in samples]
    fig, (rss, calls, backlog) = plt.subplots(3, 1, figsize=(8, 7.5), dpi=110, sharex=True)
    for d in range(result.daemons):
        rss.plot(minutes, [s.daemons[d].rss_mb for s in samples], ".-", label=f"daemon d{d}")
        rates = [
            (sum(b.daemons[d].calls.values()) - sum(a.daemons[d].calls.values())) / (b.t_s - a.t_s)
            for a, b in itertools.pairwise(samples)
        ]
        calls.plot(minutes[1:], rates, ".-", label=f"daemon d{d}")  # each rate at the end of its interval
    backlog.plot(minutes, [sum(s.backlog.values()) for s in samples], ".-", color="tab:green", label="waiting")
    backlog.plot(minutes, [s.backlog.get("retrying", 0) for s in samples], ".-", color="tab:red", label="retrying")
    backlog.plot(minutes, [s.outbox for s in samples], ".-", color="tab:purple", label="notifications pending")
    warmup_min = result.summary.get("warmup_s", 0) / 60
    for ax in (rss, calls, backlog):
        ax.axvspan(0, warmup_min, color="grey", alpha=0.12)
        ax.axvline(result.minutes, color="black", linestyle="--", alpha=0.5)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    rss.set_ylabel("RSS (MB)")
    calls.set_ylabel("AWS calls per second")
    backlog.set_ylabel("waiting")
    backlog.set_xlabel(
        f"minutes (grey: warm-up; dashed: last arrival, then idle); a workset every {result.arrival_s:g} s"
    )
    done = result.states.get("complete", 0)
    rss.set_title(f"workset-monitor soak: {result.daemons} daemons, {done} worksets completed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="the busy phase (default 30)")
    parser.add_argument("--idle-minutes", type=float, default=5, help="the idle phase after it (default 5)")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples (default 30)")
    parser.add_argument("--arrival-s", type=float, default=2, help="seconds between new worksets (default 2)")
    parser.add_argument("--daemons", type=int, default=2)
    parser.add_argument("--watchdog-s", type=float, default=20, help="WATCHDOG_USEC, in seconds (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the result (summary and every sample) here")
    parser.add_argument("--plot", type=Path, help="draw RSS, AWS calls and the backlog over time (PNG) here")
    parser.add_argument(
        "--down-channel", action="store_true", help="an SNS channel refused all run, beside the webhook"
    )
    parser.add_argument("--step-logs", action="store_true", help="the daemons write full step logs ([run] step_logs)")
    parser.add_argument("--recheck", type=Path, metavar="JSON", help="no run: check (and --plot) a saved result")
    args = parser.parse_args()
    if args.recheck:
        result = soak_checks.load(json.loads(args.recheck.read_text()))
        result.summary, result.violations = check(result, Bounds())
        print(json.dumps(result.summary, indent=2))
    else:
        result = run(
            minutes=args.minutes,
            idle_minutes=args.idle_minutes,
            every_s=args.every,
            arrival_s=args.arrival_s,
            daemons=args.daemons,
            seed=args.seed,
            watchdog_s=args.watchdog_s,
            down_channel=args.down_channel,
            step_logs=args.step_logs,
        )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    for violation in result.violations:
        print(f"VIOLATION: {violation}", file=sys.stderr)
    print(f"workdir: {result.workdir}", file=sys.stderr)
    return 1 if result.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
