"""The chaos suite: a fleet of real daemons, killed and paused at random, against an AWS that keeps failing.

    .venv/bin/python -m tests.chaos [--worksets 300] [--daemons 3] [--seed 1] [--json PATH]     (``make chaos``)

``tests/test_chaos.py`` runs a bounded version of it in ``make test``.

Setup: the local AWS emulator behind a fault injector (5 % of requests throttled, 1 % answered with HTTP 500, 2 % of
writes applied and then answered with HTTP 500: the response is lost, the write is not); N worksets dropped into S3;
K ``workset-monitor run`` processes, each with AWS credentials of its own, a short lease and two channels for every
event: a webhook (the receiver itself refuses 10 % of deliveries) and SNS, which is down for the whole run (every
``Publish`` answered 503). The step records the start and the stop of every run (``tests/runs.py``); it takes
0.3-2 s, 5-8 s (longer than a lease) for the first run of one workset in five; one workset in twenty fails its first
attempt with exit code 75 (temporary).

Chaos, until every workset is terminal: every 1-3 s one daemon (mostly one that holds work) is either SIGKILLed
together with its step processes (what systemd's control group does) and started again 0.5-2 s later, or SIGSTOPped
for 0.5-8 s (often longer than the lease, so its work is taken over while it sleeps) and then continued; or (one time
in ten) AWS goes silent for 3-6 s, longer than the lease: no request gets an answer before its client times out, so
every holder must fence itself and every loop must ride it out; or one daemon that has just started a long step
has its heartbeats answered ``AccessDeniedException`` for 6-10 s while its other requests succeed; or an operator
whose clock is a minute slow (``faketime -f -60s``) runs ``release`` on a workset whose long step has just started, or
``cancel`` and at once ``retry`` (cancelled worksets are retried again before the run may end). A denial, a release and
a cancel (each as soon as a long step has just started), a kill, an outage and a pause always happen first, 0.5-1.5 s
apart, even if the work is done before them.

Then the fleet is stopped with SIGTERM, the faults are switched off, and every invariant is checked:

- every workset is complete (each has 20 attempts: the chaos alone must not exhaust them);
- each workset has one ``complete`` event if it is complete, none otherwise;
- every recorded step run has an epoch of its own, with a ``started`` event; an epoch that a later one superseded
  ended with a recorded ``lease_expired`` (a takeover), ``released``, ``retrying`` or ``cancelled``;
- no two runs of a workset overlap in time (``tests/runs.py``: the step's monotonic start and stop, a SIGKILLed run's
  stop at its daemon's kill; an overlap whose first holder was frozen by a pause is the documented limit, counted
  as excused);
- no lease is left behind: nothing in progress, no lease token, the fleet counter at zero;
- the queue's counts (finished worksets: their counters, kept in the transactions) equal the worksets' states;
- every audit trail is contiguous (events 1..version);
- every event reached the webhook at least once; nothing is left in the outbox for the webhook (SNS, down, keeps
  its events there until they run out of rounds). How late each event was is reported: later than 2 x the
  notifier's interval after its commit, and not excused by a kill, a pause or an outage that overlapped its delivery
  or by an injected failure of its own delivery (then RETRY_ALLOWANCE_S more: ``_late``, ``_retried``); with how
  loaded the (serialized) emulator was while each event was in flight, and the CPU time of the emulator and of the
  daemons;
- every daemon is still running and exits 0 on SIGTERM (none died of a fault);
- every contract counter the run exercised moved: each daemon's ``/metrics`` is read just before it is killed and
  before the final stop, and the sums must show claims, heartbeats, lost leases (when a daemon logged one),
  takeovers (when the trail has one), transitions, notifications and AWS requests (``Report.counters``).

The daemons' logs stay in the report's ``workdir``.

``--calm``: the same fleet, worksets and channels with no chaos at all but SNS down for the whole run (no kill,
pause, outage, denial or operator; no AWS fault; the webhook refuses nothing). It isolates what one channel down does
to the others, and holds the bound as a violation: every event reaches the webhook within 2 x the notifier's
interval of its commit. Under the chaos the same lateness is measured and reported, not failed on: there it mostly
measures the emulator's load and the disturbances' aftermath (docs/performance.md). ``make chaos`` runs both.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import concurrent.futures
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import Emulator, WsgiApp
from monitor.config import TableConfig
from monitor.model import NOTIFIABLE_EVENTS, Event, EventType, State, WorksetId
from monitor.step_logs import folder as log_folder
from tests import fleet, runs
from tests.emulator_faults import HARNESS, Faults
from tests.fleet import CREDENTIALS, Daemon, Webhook
from tests.lab import Lab

BUCKET, PREFIX, TABLE = "chaos-lab", "chaos/", "chaos-worksets"
LEASE_S, HEARTBEAT_S, SWEEP_S = 3.0, 0.75, 1.0
READ_TIMEOUT_S = 1.5  # the daemons' [aws] read_timeout_s: an unanswered request fails after this
CLAIM_S = 5.0  # the daemons' [notify] claim_s: an event claimed by a daemon that then froze or died waits this long
DELIVERY_INTERVAL_S = 1.0  # the notifier's period ([scan] interval_s): events must reach a channel within twice it
OPERATOR_SKEW_S = -60  # the operator's clock, behind by a minute (faketime)
DOWN_TOPIC = "chaos-down"  # the SNS channel, refused for the whole run

# Records its runs (see tests/runs.py); the first run (epoch 1) of one workset in five takes 5-8 s, longer than a lease,
# so that a holder which stops renewing without stopping its step is caught running beside the next holder's run.
STEP = """\
import os, random, signal, sys, time
ws, epoch, attempt = os.environ["WORKSET_ID"], os.environ["WORKSET_EPOCH"], os.environ["WORKSET_ATTEMPT"]
def record(what):
    with open(sys.argv[1], "a") as runs:
        runs.write(f"{ws} {epoch} {attempt} {os.getpid()} {os.getppid()} {time.monotonic():.6f} {what}\\n")
def stopped(*_):
    record("stopped")
    os._exit(143)
signal.signal(signal.SIGTERM, stopped)
record("start")
n = int(ws.rsplit("-", 1)[1])
time.sleep(random.uniform(5.0, 8.0) if n % 5 == 3 and epoch == "1" else random.uniform(0.3, 2.0))
flaky = n % 20 == 7 and attempt == "1"
record("fail" if flaky else "end")
sys.exit(75 if flaky else 0)
"""


def _long(workset_id: str, epoch: int) -> bool:
    """Whether the step runs longer than a lease for this workset's run under ``epoch`` (as ``STEP`` decides)."""
    return int(workset_id.rsplit("-", 1)[1]) % 5 == 3 and epoch == 1


_NEED_LONG = ("deny", "release", "cancel")


def _fresh_long_runs(runs_log: Path) -> list[runs.Run]:
    """Runs that will go on for seconds yet: long ones (5-8 s), started less than 3 s ago, not stopped. (2 s left a
    fast run of 30 worksets without a long step for its scripted cancel: every long one had started earlier.)"""
    lines = runs_log.read_text().splitlines() if runs_log.exists() else []
    now = time.monotonic()
    return [
        r
        for r in runs.parse(lines, kills={}, end=now)
        if r.how == "open" and _long(r.workset, r.epoch) and now - r.start < 3.0
    ]


# --- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    worksets: int
    daemons: int
    seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    pauses: int = 0
    outages: int = 0
    denials: int = 0  # windows in which one daemon's heartbeats were answered AccessDenied
    releases: int = 0  # operator releases (clock skewed) that took a running workset away
    cancels: int = 0  # operator cancels (clock skewed) of a running workset, each retried at once
    operator: list[str] = field(default_factory=list)  # each command the operator ran, with its exit code
    denied: list[str] = field(default_factory=list)  # each daemon whose heartbeats were denied: name, pid, seconds
    faults: dict[str, int] = field(default_factory=dict)
    takeovers: int = 0
    step_runs: int = 0
    repeated_runs: int = 0  # step runs beyond the first for a workset (each under a new epoch)
    overlaps_excused: int = 0  # overlapping runs whose first holder was frozen (SIGSTOP): see tests/runs.py
    webhook_deliveries: int = 0
    webhook_refused: int = 0
    duplicate_deliveries: int = 0
    late: int = 0  # events later than 2 x the delivery interval, outside any disturbance
    late_excused: int = 0  # events later than 2 x the delivery interval, during or just after a kill/pause/outage
    late_retried: int = 0  # ... whose own delivery met an injected failure (a throttled or failed call, a refusal)
    worst_latency_s: float = 0.0  # commit -> first receipt by the webhook, over every event
    emulator_answer_ms: dict[str, float] = field(default_factory=dict)  # its answer time (queue + work): how loaded
    timeline: list[str] = field(default_factory=list)  # each disturbance: seconds into the run, what, how long
    # events on time / late (outside disturbances or not), by the emulator's median answer time while each was in flight
    latency_by_load: dict[str, list[int]] = field(default_factory=dict)
    # CPU seconds used: the emulator with the harness (one process), and the daemons with their steps and the CLI
    cpu_s: dict[str, float] = field(default_factory=dict)
    exit_codes: list[int] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)  # every daemon's counters, summed over the run
    lease_losses_logged: int = 0  # "lease lost" lines in the daemons' logs
    # --step-logs: objects written; complete worksets whose completing epoch left a log, or none; failed writes counted
    step_logs: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    workdir: str = ""  # the daemons' logs and configuration, the step's record of its runs


def run(
    *,
    worksets: int = 300,
    daemons: int = 3,
    seed: int = 1,
    timeout_s: float = 600,
    drain_s: float = 300,
    down_channel: bool = True,
    latency_bound: bool = False,
    calm: bool = False,
    step_logs: bool = False,
    workdir: Path | None = None,
    out: Callable[[str], None] = print,
) -> Report:
    """``drain_s``: how long, once every workset is terminal, to wait for the webhook to have every event;
    ``down_channel``: the SNS channel, refused for the whole run; ``latency_bound``: a late notification is a
    violation (a performance bound, held by the calm run of ``make chaos``; otherwise it is reported); ``calm``: no
    chaos at all, only the channel that is down (no kill, pause, outage, denial or operator, no AWS or webhook
    faults): the run that isolates what one channel down does to the others' latency; ``step_logs``: the daemons
    write full step logs (``[run] step_logs = "s3"``) through the same faults, and each complete workset's
    completing run must have left one, unless the daemons counted that many failed log writes."""
    rng = random.Random(seed)
    os.environ.update(CREDENTIALS)
    report = Report(worksets=worksets, daemons=daemons)
    work = workdir or Path(tempfile.mkdtemp(prefix="wm-chaos-"))
    report.workdir = str(work)
    faults: Faults | None = None

    def wrap(app: WsgiApp) -> WsgiApp:
        nonlocal faults
        faults = Faults(app, seed=seed, hang_s=READ_TIMEOUT_S + 0.5, down=frozenset({"sns"} if down_channel else ()))
        return faults

    hook = Webhook(refuse=0.0 if calm else 0.10, seed=seed)
    with Emulator(wrap=wrap) as emulator:
        assert faults is not None
        faults.enabled = False
        harness = botocore.config.Config(user_agent_extra=HARNESS)
        client = boto3.client(
            "dynamodb",
            endpoint_url=emulator.endpoint,
            config=harness.merge(botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 20})),
        )
        s3 = boto3.client("s3", endpoint_url=emulator.endpoint, config=harness)
        s3.create_bucket(Bucket=BUCKET)
        topic = boto3.client("sns", endpoint_url=emulator.endpoint, config=harness).create_topic(Name=DOWN_TOPIC)
        schema.ensure_table(client, TableConfig(name=TABLE))
        store = DynamoStore(client, TABLE)
        names = [f"ws-{n:04d}" for n in range(worksets)]
        _drop(s3, names)
        config = _config(work, emulator.endpoint, hook.url, topic["TopicArn"] if down_channel else None)
        faults.enabled = not calm
        started, started_wall = time.monotonic(), time.time()
        everyone: list[Daemon] = []  # every daemon started, for the kill times and pauses of its steps

        def start(name: str) -> Daemon:
            logs = {"WORKSET_MONITOR_RUN__STEP_LOGS": "s3"} if step_logs else {}
            everyone.append(Daemon(name, config, work, env={"AWS_ACCESS_KEY_ID": f"chaos-{name}"} | logs))
            return everyone[-1]

        fleet = [start(f"d{i}") for i in range(daemons)]
        counters: collections.Counter[str] = collections.Counter()  # of the daemons gone, read before they went
        disturbed: list[tuple[float, float]] = []  # wall-clock windows of kills, pauses and outages
        denied: tuple[Daemon | None, float] = (None, 0.0)  # spared other chaos while its heartbeats are denied
        restarts = 0
        try:
            # each at least once, then at random; those that need a long step just started first, while there are many
            actions = [] if calm else ["deny", "release", "cancel", "kill", "outage", "pause"]
            while time.monotonic() - started < timeout_s:
                # The scripted first actions come quickly and always happen, even on a machine fast enough to finish
                # the work before them (then they hit an idle fleet, which must survive them too). Those that need a
                # long step just started come quickest: in a fast run every long step starts in the first second, and
                # at the old pace the third of them (the cancel) sometimes found none left.
                pace = (0.2, 0.6) if actions and actions[0] in _NEED_LONG else (0.5, 1.5) if actions else (1.0, 3.0)
                time.sleep(rng.uniform(*pace))
                if not actions and _settled(store, work, config, report):
                    break
                if calm:
                    continue
                spared = denied[0] if time.monotonic() < denied[1] else None
                index = _victim(rng, fleet, store, spare=spared)
                fresh = _fresh_long_runs(work / "runs.log")
                if actions:  # the scripted ones: those that need a long step as soon as one has just started
                    ready = [a for a in actions if (a in _NEED_LONG) == bool(fresh)] or [
                        a for a in actions if a not in _NEED_LONG
                    ]
                    if not ready:  # only those that need a long step are left, and none is running
                        if _settled(store, work, config, report):
                            actions.clear()  # the work is done: there will be none
                        continue
                    action = ready[0]
                    actions.remove(action)
                    scripted = True
                else:
                    scripted = False
                    action = rng.choices(
                        ["kill", "pause", "outage", "deny", "release", "cancel"], [35, 35, 10, 6, 8, 6]
                    )[0]
                    if action in _NEED_LONG and not fresh:
                        continue
                at, lasting = time.time(), None
                if action == "outage":
                    report.outages += 1
                    seconds = rng.uniform(3.0, 6.0)
                    faults.outage(seconds)
                    lasting = seconds
                    disturbed.append((at, at + seconds + READ_TIMEOUT_S))
                elif action == "kill":
                    counters.update(fleet[index].counters())
                    fleet[index].kill()
                    report.kills += 1
                    time.sleep(rng.uniform(0.5, 2.0))
                    restarts += 1
                    fleet[index] = start(f"d{index}-r{restarts}")
                    disturbed.append((at, time.time()))
                elif action == "pause":
                    report.pauses += 1
                    fleet[index].pause(rng.uniform(0.5, 8.0))
                    disturbed.append((at, time.time()))
                elif action == "deny":
                    pids = {r.daemon_pid for r in fresh}
                    victim = rng.choice([daemon for daemon in fleet if daemon.process.pid in pids] or fleet)
                    seconds = rng.uniform(6.0, 10.0)  # longer than a lease: another daemon takes its work over
                    faults.deny_heartbeats(f"chaos-{victim.name}", seconds)
                    report.denied.append(f"{victim.name} (pid {victim.process.pid}) for {seconds:.1f} s")
                    denied = (victim, time.monotonic() + seconds)
                    report.denials += 1
                    lasting = seconds
                else:  # release or cancel, by an operator whose clock is behind
                    target = rng.choice(sorted({r.workset for r in fresh}))
                    took = _operator(work, config, action, target, report=report) == 0
                    if action == "release":
                        report.releases += took
                    elif took:
                        report.cancels += 1
                        _operator(work, config, "retry", target, report=report)  # again at the end if need be
                    if scripted and not took:  # the step ended meanwhile (on a fast machine): on the next long one
                        actions.insert(0, action)
                lasting = time.time() - at if lasting is None else lasting
                report.timeline.append(f"{at - started_wall:6.1f} s: {action} ({lasting:.1f} s)")
            else:
                report.violations.append(f"not every workset was terminal after {timeout_s:.0f} s")
            # The chaos is over: let the fleet deliver what is left, then stop it. Under chaos the outbox can run a
            # minute behind: wait while the webhook still misses events and deliveries still arrive, up to drain_s.
            wanted = {e.event_id for name in names for e in _history(store, name) if e.type in NOTIFIABLE_EVENTS}
            last, quiet_since, give_up = -1, time.monotonic(), time.monotonic() + drain_s
            while time.monotonic() < give_up and wanted - set(hook.received):
                delivered = sum(hook.received.values())
                if delivered != last:
                    last, quiet_since = delivered, time.monotonic()
                elif time.monotonic() - quiet_since > 60:
                    break
                time.sleep(0.5)
        finally:
            for daemon in fleet:
                counters.update(daemon.counters())
            with concurrent.futures.ThreadPoolExecutor(len(fleet)) as pool:  # each flushes its outbox for up to 10 s
                report.exit_codes = list(pool.map(Daemon.stop, fleet))
            hook.close()
        report.counters = dict(sorted(counters.items()))
        report.lease_losses_logged = sum(
            log.read_text().count('"event": "lease lost"') for log in work.glob("d*.log") if log.is_file()
        )
        report.seconds = round(time.monotonic() - started, 1)
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        report.cpu_s = {
            "emulator_and_harness": round(own.ru_utime + own.ru_stime, 1),
            "daemons_steps_and_cli": round(children.ru_utime + children.ru_stime, 1),
        }
        faults.enabled = False
        report.faults = dict(faults.counts)
        report.emulator_answer_ms = _answer_times(faults.answers)
        _check(
            report,
            store,
            names,
            work / "runs.log",
            hook,
            kills={d.process.pid: d.killed_at for d in everyone if d.killed_at is not None},
            paused={d.process.pid: d.paused for d in everyone},
            disturbed=disturbed,
            down=("sns",) if down_channel else (),
            latency_bound=latency_bound,
            answers=faults.answers,
            faulted=faults.faulted,
        )
        report.violations += _unfed_counters(report)
        if step_logs:
            _check_step_logs(report, store, s3)
    out(json.dumps(asdict(report), indent=2))
    return report


def _check_step_logs(report: Report, store: DynamoStore, s3: Any) -> None:
    """Each complete workset's completing run (its last epoch) left a full step log in S3, unless a failed log write
    (an injected fault, an outage) was counted for it."""
    logs: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        logs += [obj["Key"] for obj in page.get("Contents", []) if "/.workset-monitor/logs/" in obj["Key"]]
    complete = asyncio.run(store.list(state=State.COMPLETE))
    missing = [
        ws.workset_id
        for ws in complete
        if not any(key.startswith(f"{log_folder(ws.prefix)}{ws.epoch}-") for key in logs)
    ]
    writes = {"ok": 0, "failed": 0}
    for key, value in report.counters.items():
        for outcome in writes:
            if key == f'workset_monitor_step_log_writes_total{{"outcome": "{outcome}"}}':
                writes[outcome] += int(value)
    report.step_logs = {
        "objects": len(logs),
        "complete_with_log": len(complete) - len(missing),
        "complete_without_log": len(missing),
        "writes_ok": writes["ok"],
        "writes_failed": writes["failed"],
    }
    if not logs or len(missing) > writes["failed"]:
        report.violations.append(f"{len(missing)} complete worksets have no step log of their last run: {missing[:5]}")


def _answer_times(answers: Sequence[tuple[float, float]]) -> dict[str, float]:
    """The emulator's answer times, median, p95 and worst, overall and in its busiest 10 s (by median)."""
    if not answers:
        return {}

    def summary(seconds: list[float], prefix: str = "") -> dict[str, float]:
        seconds = sorted(seconds)

        def at(q: float) -> float:
            return round(seconds[min(int(q * len(seconds)), len(seconds) - 1)] * 1000, 1)

        return {f"{prefix}p50": at(0.5), f"{prefix}p95": at(0.95), f"{prefix}max": at(1.0)}

    windows: dict[int, list[float]] = collections.defaultdict(list)
    for wall, seconds in answers:
        windows[int(wall // 10)].append(seconds)
    busiest = max(windows.values(), key=lambda w: sorted(w)[len(w) // 2])
    return {"requests": len(answers), **summary([s for _, s in answers]), **summary(busiest, "busiest_10s_")}


def _victim(rng: random.Random, fleet: list[Daemon], store: DynamoStore, *, spare: Daemon | None = None) -> int:
    """Mostly a daemon that holds work right now (that is where the bugs are), sometimes any; never ``spare``."""
    holders = {ws.lease.owner for ws in asyncio.run(store.list(state=State.IN_PROGRESS)) if ws.lease}
    allowed = [i for i, daemon in enumerate(fleet) if daemon is not spare] or list(range(len(fleet)))
    busy = [i for i in allowed if fleet[i].find_owner() in holders]
    return rng.choice(busy) if busy and rng.random() < 0.8 else rng.choice(allowed)


def _operator(work: Path, config: Path, verb: str, workset_id: str, *, report: Report) -> int:
    """``workset-monitor VERB ID`` run by an operator whose clock is OPERATOR_SKEW_S off (faketime); its exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSET_MONITOR_")}
    command = [sys.executable, "-m", "monitor", verb, "--config", str(config), workset_id, "--reason", "chaos"]
    with (work / "operator.log").open("a") as log:
        log.write(f"$ faketime {OPERATOR_SKEW_S:+d}s workset-monitor {verb} {workset_id}\n")
        log.flush()
        code = subprocess.run(  # noqa: PLW1510
            ["faketime", "-f", f"{OPERATOR_SKEW_S:+d}s", *command],
            env=env | CREDENTIALS | {"AWS_ACCESS_KEY_ID": "chaos-operator"},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        ).returncode
    report.operator.append(f"{verb} {workset_id}: exit {code}")
    return code


def _drop(s3: Any, names: list[str]) -> None:
    lab = Lab(s3, bucket=BUCKET)
    for name in names:
        lab.workset(name, prefix=PREFIX, samples=1)


def _config(work: Path, endpoint: str, hook_url: str, topic_arn: str | None) -> Path:
    return fleet.write_config(
        work / "chaos.toml",
        endpoint=endpoint,
        table=TABLE,
        bucket=BUCKET,
        prefix=PREFIX,
        step=fleet.write_step(work, STEP, str(work / "runs.log")),
        hook_url=hook_url,
        read_timeout_s=READ_TIMEOUT_S,
        lease_s=LEASE_S,
        heartbeat_s=HEARTBEAT_S,
        sweep_s=SWEEP_S,
        interval_s=DELIVERY_INTERVAL_S,
        claim_s=CLAIM_S,
        sns_topic_arn=topic_arn,
    )


def _settled(store: DynamoStore, work: Path, config: Path, report: Report) -> bool:
    """Whether every workset dropped is registered and terminal, none cancelled; the cancelled ones (the
    operator's) are retried. (Counting the registered ones only ended two runs early: a scan pass over 300 folders
    takes a minute or more under the chaos, and each restart begins one.)"""
    worksets = asyncio.run(store.list())
    for ws in worksets:
        if ws.state is State.CANCELLED:
            _operator(work, config, "retry", ws.workset_id, report=report)
    done = all(ws.state.terminal and ws.state is not State.CANCELLED for ws in worksets)
    return len(worksets) >= report.worksets and done


def _history(store: DynamoStore, name: str) -> list[Event]:
    return asyncio.run(store.history(WorksetId(name)))


def _check(
    report: Report,
    store: DynamoStore,
    names: list[str],
    runs_log: Path,
    hook: Webhook,
    *,
    kills: Mapping[int, float] | None = None,
    paused: Mapping[int, Sequence[tuple[float, float]]] | None = None,
    disturbed: Sequence[tuple[float, float]] = (),
    down: Sequence[str] = (),
    latency_bound: bool = True,
    answers: Sequence[tuple[float, float]] = (),
    faulted: Sequence[tuple[float, str]] = (),
) -> None:
    """``kills``/``paused``: daemon pid -> when the harness SIGKILLed its tree / its SIGSTOP windows (monotonic);
    ``disturbed``: wall-clock windows of kills, pauses and outages; ``down``: the channels refused all along."""
    violations = report.violations
    worksets = {ws.workset_id: ws for ws in asyncio.run(store.list())}
    report.states = dict(collections.Counter(ws.state.value for ws in worksets.values()))
    missing = sorted(set(names) - set(worksets))
    if missing:
        violations.append(f"never registered: {missing[:5]}")

    lines = runs_log.read_text().splitlines() if runs_log.exists() else []
    recorded = runs.parse(lines, kills=kills or {}, end=time.monotonic())
    epochs_of: dict[str, list[int]] = collections.defaultdict(list)
    for step_run in recorded:
        epochs_of[step_run.workset].append(step_run.epoch)
    report.step_runs = len(recorded)
    report.repeated_runs = sum(len(epochs) - 1 for epochs in epochs_of.values() if epochs)
    overlapping, report.overlaps_excused = runs.overlaps(recorded, paused=paused or {})
    notifiable: list[Event] = []
    unreached: list[str] = []  # one violation for all of them: a dead channel must not hide the other checks

    for ws_id, ws in sorted(worksets.items()):
        history = asyncio.run(store.history(WorksetId(ws_id)))
        if not ws.state.terminal:
            violations.append(f"{ws_id}: not terminal ({ws.state.value})")
        elif ws.state is not State.COMPLETE:  # 20 attempts each: chaos alone must not exhaust them
            violations.append(f"{ws_id}: ended {ws.state.value}" + (f": {ws.last_error}" if ws.last_error else ""))
        if [e.seq for e in history] != list(range(1, ws.version + 1)):
            violations.append(f"{ws_id}: trail {[e.seq for e in history]} is not 1..{ws.version}")
        completes = sum(e.type is EventType.COMPLETE for e in history)
        if completes != (1 if ws.state is State.COMPLETE else 0):
            violations.append(f"{ws_id}: {completes} complete events, state {ws.state.value}")
        if ws.lease is not None:
            violations.append(f"{ws_id}: a lease is left behind ({ws.lease.owner})")
        report.takeovers += sum(e.type is EventType.LEASE_EXPIRED for e in history)
        epochs = epochs_of.get(ws_id, [])
        if len(epochs) != len(set(epochs)):
            violations.append(f"{ws_id}: the step ran twice under one epoch: {sorted(epochs)}")
        started = {e.epoch for e in history if e.type is EventType.STARTED}
        ended = {e.epoch for e in history if e.type in _EPOCH_ENDINGS}
        for epoch in sorted(set(epochs)):
            if epoch not in started:
                violations.append(f"{ws_id}: a step ran under epoch {epoch}, which no claim recorded")
            if epoch < max(epochs) and epoch not in ended:
                violations.append(f"{ws_id}: epoch {epoch} was superseded without a recorded takeover or retry")
        for event in history:
            if event.type not in NOTIFIABLE_EVENTS:
                continue
            notifiable.append(event)
            if hook.received[event.event_id] == 0:
                unreached.append(f"{event.event_id} ({event.type.value})")
        if len(violations) > 50:
            violations.append("(stopped checking after 50 violations)")
            break
    if unreached:
        violations.append(f"{len(unreached)} events never reached the webhook: {', '.join(unreached[:10])}")
    violations += overlapping
    late, report.late, report.late_excused, report.late_retried, report.worst_latency_s = _late(
        notifiable, hook.first_at, disturbed, retried=_retried(notifiable, hook, faulted)
    )
    report.latency_by_load = _by_load(notifiable, hook.first_at, answers)
    if latency_bound:
        violations += late
    # A channel that is down keeps its events in the outbox (until they run out of rounds); the webhook must not.
    pending = asyncio.run(store.pending_events(limit=100_000))
    held = [e.event_id for e in pending if not down or "webhook" not in e.notified]
    if held:
        violations.append(f"the outbox still holds {held[:10]}" + (f" for the webhook ({len(held)})" if down else ""))
    fleet = asyncio.run(store.fleet())
    if fleet.running != 0:
        violations.append(f"the fleet counter says {fleet.running} in progress")
    counted = asyncio.run(store.stats(now_ms=int(time.time() * 1000)))
    miscounted = {s.value: counted.count(s) for s in State if counted.count(s) != report.states.get(s.value, 0)}
    if miscounted:
        violations.append(f"the queue counts {miscounted}, the worksets' states are {report.states}")
    report.webhook_deliveries = sum(hook.received.values())
    report.webhook_refused = sum(hook.refused.values())
    report.duplicate_deliveries = sum(n - 1 for n in hook.received.values() if n > 1)
    if any(code != 0 for code in report.exit_codes):
        violations.append(f"a daemon did not stop cleanly: exit codes {report.exit_codes}")


_LOAD_BUCKETS_MS = (25, 50, 100, 200, 400)


def _by_load(
    events: Sequence[Event], first_at: Mapping[str, float], answers: Sequence[tuple[float, float]]
) -> dict[str, list[int]]:
    """[on time, later than 2 x DELIVERY_INTERVAL_S] per bucket of the emulator's median answer time between each
    event's commit and its arrival: how much of the lateness is the (serialized, two-core) emulator's."""
    answers = sorted(answers)  # by when each was answered (the emulator's threads append out of order)
    walls = [wall for wall, _ in answers]
    found: dict[str, list[int]] = {}
    for event in events:
        if event.event_id not in first_at:
            continue
        committed = event.at_ms / 1000 - (OPERATOR_SKEW_S if event.actor.startswith("operator:") else 0)
        arrived = first_at[event.event_id]
        first, last = bisect.bisect_left(walls, committed), bisect.bisect_right(walls, arrived)
        during = sorted(seconds for _, seconds in answers[first:last])
        if not during:
            continue
        median_ms = during[len(during) // 2] * 1000
        bucket = next((f"<{b} ms" for b in _LOAD_BUCKETS_MS if median_ms < b), f">={_LOAD_BUCKETS_MS[-1]} ms")
        found.setdefault(bucket, [0, 0])[int(arrived - committed > 2 * DELIVERY_INTERVAL_S)] += 1
    return dict(sorted(found.items(), key=lambda kv: float(kv[0].strip("<>= ms"))))


RETRY_ALLOWANCE_S = 2.0  # a retried call's wait: botocore's first retry after a throttle or a 500 up to 1 s,
# the webhook channel's after a refusal up to 0.5 s, and the read timeout of a write whose answer was lost


def _retried(events: Sequence[Event], hook: Webhook, faulted: Sequence[tuple[float, str]]) -> set[str]:
    """The events whose delivery met an injected failure of its own: the receiver refused it once, or a DynamoDB
    request about its workset (the event's claim, record, finish, or the read of the workset) failed while it was
    in flight."""
    by_workset: dict[str, list[float]] = collections.defaultdict(list)
    for wall, pk in faulted:
        by_workset[pk].append(wall)
    found = {event_id for event_id, refusals in hook.refused.items() if refusals}
    for event in events:
        arrived = hook.first_at.get(event.event_id)
        committed = event.at_ms / 1000 - (OPERATOR_SKEW_S if event.actor.startswith("operator:") else 0)
        if arrived is not None and any(committed <= wall <= arrived for wall in by_workset[event.workset_id]):
            found.add(event.event_id)
    return found


def _late(
    events: Sequence[Event],
    first_at: Mapping[str, float],
    disturbed: Sequence[tuple[float, float]],
    *,
    retried: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[str], int, int, int, float]:
    """The events that reached the webhook more than 2 x DELIVERY_INTERVAL_S after their commit: (violations, how
    many were late, how many more were excused by a disturbance, how many by a retry of their own, the worst).

    An event's commit time is its ``at_ms`` (the committing process's wall clock; an operator's is OPERATOR_SKEW_S
    off, which is put back). Excused: an event whose delivery a kill, a pause or an outage overlapped; its deadline
    moves to the end of that disturbance plus CLAIM_S (a frozen or killed daemon's claim on the event runs out) plus
    2 x DELIVERY_INTERVAL_S, as often as another disturbance overlaps the new deadline. An event in ``retried`` (its
    own delivery met an injected failure and was retried, as designed) has RETRY_ALLOWANCE_S more."""
    bound_s = 2 * DELIVERY_INTERVAL_S
    late: list[tuple[float, Event]] = []
    excused, after_retry, worst = 0, 0, 0.0
    for event in events:
        if event.event_id not in first_at:
            continue  # never arrived: its own check says so
        committed = event.at_ms / 1000 - (OPERATOR_SKEW_S if event.actor.startswith("operator:") else 0)
        latency = first_at[event.event_id] - committed
        worst = max(worst, latency)
        if latency <= bound_s:
            continue
        deadline, moved = committed + bound_s, True
        while moved:
            moved = False
            for begin, end in disturbed:
                if begin < deadline and end > committed and end + CLAIM_S + bound_s > deadline:
                    deadline, moved = end + CLAIM_S + bound_s, True
        if committed + latency <= deadline:
            excused += 1
        elif event.event_id in retried and committed + latency <= deadline + RETRY_ALLOWANCE_S:
            after_retry += 1
        else:
            late.append((latency, event))
    late.sort(key=lambda pair: pair[0], reverse=True)
    examples = ", ".join(f"{e.event_id} ({e.type.value} by {e.actor}) {latency:.1f} s" for latency, e in late[:5])
    violations = (
        [
            f"{len(late)} of {len(events)} events reached the webhook later than {bound_s:g} s after their commit, "
            f"outside any kill, pause or outage and not explained by a retry of its own; the latest: {examples}"
        ]
        if late
        else []
    )
    return violations, len(late), excused, after_retry, round(worst, 2)


def _unfed_counters(report: Report) -> list[str]:
    """The contract counters (DESIGN §10) that stayed at zero although the run did what they count."""

    def total(name: str, **labels: str) -> float:
        return sum(
            value
            for key, value in report.counters.items()
            if key.partition("{")[0] == f"workset_monitor_{name}"
            and labels.items() <= json.loads("{" + key.partition("{")[2]).items()
        )

    exercised = {
        "claims_total{result=won}": (total("claims_total", result="won"), report.step_runs > 0),
        "heartbeats_total{result=ok}": (total("heartbeats_total", result="ok"), report.step_runs > 0),
        "leases_lost_total": (total("leases_lost_total"), report.lease_losses_logged > 0),
        "stale_leases_reclaimed_total": (total("stale_leases_reclaimed_total"), report.takeovers > 0),
        "transitions_total{to_state=complete}": (
            total("transitions_total", to_state="complete"),
            report.states.get("complete", 0) > 0,
        ),
        "notifications_total{channel=webhook,outcome=sent}": (
            total("notifications_total", channel="webhook", outcome="sent"),
            report.webhook_deliveries > 0,
        ),
        "aws_requests_total{outcome=ok}": (total("aws_requests_total", outcome="ok"), True),
        # botocore retries a throttled or failed call; the call then counts as ok and its retries here
        "aws_retries_total": (total("aws_retries_total"), bool(report.faults)),
        "step_duration_seconds_count": (total("step_duration_seconds_count"), report.step_runs > 0),
        "scan_duration_seconds_count": (total("scan_duration_seconds_count"), True),
        "notification_delivery_seconds_count": (
            total("notification_delivery_seconds_count"),
            report.webhook_deliveries > 0,
        ),
    }
    return [
        f"the counter {name} stayed 0 although the run exercised it"
        for name, (value, used) in exercised.items()
        if used and value <= 0
    ]


_EPOCH_ENDINGS = frozenset({EventType.LEASE_EXPIRED, EventType.RELEASED, EventType.RETRYING, EventType.CANCELLED})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worksets", type=int, default=300)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--drain", type=float, default=300, help="seconds to wait for the webhook at the end")
    parser.add_argument("--no-down-channel", action="store_true", help="no SNS channel (the latency check's baseline)")
    parser.add_argument(
        "--calm", action="store_true", help="no chaos, SNS down all run; fails on an event later than 2 intervals"
    )
    parser.add_argument("--step-logs", action="store_true", help="the daemons write full step logs ([run] step_logs)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(
        worksets=args.worksets,
        daemons=args.daemons,
        seed=args.seed,
        timeout_s=args.timeout,
        drain_s=args.drain,
        down_channel=not args.no_down_channel,
        calm=args.calm,
        step_logs=args.step_logs,
        latency_bound=args.calm,  # the channel-down bound, isolated; under the chaos lateness is reported
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    for violation in report.violations:
        print(f"VIOLATION: {violation}", file=sys.stderr)
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
