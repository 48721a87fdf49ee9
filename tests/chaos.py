"""The chaos suite: a fleet of real daemons, killed and paused at random, against an AWS that keeps failing.

    .venv/bin/python -m tests.chaos [--worksets 300] [--daemons 3] [--seed 1] [--json PATH]     (``make chaos``)

``tests/test_chaos.py`` runs a bounded version of it in ``make test``.

Setup: the local AWS emulator behind a fault injector (5 % of requests throttled, 1 % answered with HTTP 500, 2 % of
writes applied and then answered with HTTP 500: the response is lost, the write is not); N worksets dropped into S3;
K ``workset-monitor run`` processes with a short lease and a webhook channel for every event (the receiver itself
refuses 10 % of deliveries). The step records every run in a file; one workset in twenty fails its first attempt
with exit code 75 (temporary).

Chaos, until every workset is terminal: every 1-3 s one daemon (mostly one that holds work) is either SIGKILLed
together with its step processes (what systemd's control group does) and started again 0.5-2 s later, or SIGSTOPped
for 0.5-8 s (often longer than the lease, so its work is taken over while it sleeps) and then continued; or (one time
in ten) AWS goes silent for 3-6 s, longer than the lease: no request gets an answer before its client times out, so
every holder must fence itself and every loop must ride it out. A kill, an outage and a pause always happen first,
0.5-1.5 s apart, even if the work is done before them.

Then the fleet is stopped with SIGTERM, the faults are switched off, and every invariant is checked:

- every workset is complete (each has 20 attempts: the chaos alone must not exhaust them);
- each workset has one ``complete`` event if it is complete, none otherwise;
- every recorded step run has an epoch of its own, with a ``started`` event; an epoch that a later one superseded
  ended with a recorded ``lease_expired`` (a takeover), ``released`` or ``retrying``;
- no lease is left behind: nothing in progress, no lease token, the fleet counter at zero;
- every audit trail is contiguous (events 1..version);
- every event reached the webhook at least once, and the outbox is empty;
- every daemon is still running and exits 0 on SIGTERM (none died of a fault);
- every contract counter the run exercised moved: each daemon's ``/metrics`` is read just before it is killed and
  before the final stop, and the sums must show claims, heartbeats, lost leases (when a daemon logged one),
  takeovers (when the trail has one), transitions, notifications and AWS requests (``Report.counters``).

The daemons' logs stay in the report's ``workdir``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.emulator import Emulator, WsgiApp
from monitor.config import TableConfig
from monitor.model import NOTIFIABLE_EVENTS, EventType, State, WorksetId
from tests import fleet
from tests.fleet import CREDENTIALS, Daemon, Webhook
from tests.lab import Lab

BUCKET, PREFIX, TABLE = "chaos-lab", "chaos/", "chaos-worksets"
LEASE_S, HEARTBEAT_S, SWEEP_S = 3.0, 0.75, 1.0
READ_TIMEOUT_S = 1.5  # the daemons' [aws] read_timeout_s: an unanswered request fails after this
HARNESS = "chaos-harness"  # in the User-Agent of this module's own AWS clients, which outages spare
_DYNAMODB_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")

STEP = """\
import os, sys, time, random
ws, epoch, attempt = os.environ["WORKSET_ID"], os.environ["WORKSET_EPOCH"], os.environ["WORKSET_ATTEMPT"]
with open(sys.argv[1], "a") as runs:
    runs.write(f"{ws} {epoch} {attempt} {os.getpid()} start\\n")
time.sleep(random.uniform(0.3, 2.0))
flaky = int(ws.rsplit("-", 1)[1]) % 20 == 7 and attempt == "1"
with open(sys.argv[1], "a") as runs:
    runs.write(f"{ws} {epoch} {attempt} {os.getpid()} {'fail' if flaky else 'end'}\\n")
sys.exit(75 if flaky else 0)
"""


# --- AWS that fails ----------------------------------------------------------------------------------------------


class Faults:
    """WSGI middleware around the emulator: throttling, server errors, and writes whose response is lost."""

    def __init__(
        self, app: WsgiApp, *, throttle: float = 0.05, error: float = 0.01, lost: float = 0.02, seed: int = 0
    ) -> None:
        self._app = app
        self._rates = (throttle, error, lost)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.enabled = True
        self.counts: collections.Counter[str] = collections.Counter()
        self._outage_until = 0.0

    def outage(self, seconds: float) -> None:
        """From now on, for ``seconds``, no request (but the harness's) gets an answer before its client gives up."""
        self._outage_until = time.monotonic() + seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if time.monotonic() < self._outage_until and HARNESS not in environ.get("HTTP_USER_AGENT", ""):
            with self._lock:
                self.counts["unanswered"] += 1
            time.sleep(READ_TIMEOUT_S + 0.5)  # not applied; the caller has timed out and hung up by now
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"outage"]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        service = "dynamodb" if target.startswith("DynamoDB_") else "s3"
        write = target.endswith(_DYNAMODB_WRITES) if service == "dynamodb" else environ["REQUEST_METHOD"] != "GET"
        throttle, error, lost = self._rates
        with self._lock:
            roll, lose = self._rng.random(), self._rng.random()
        if self.enabled and roll < throttle:
            return self._fail(start_response, service, "throttled")
        if self.enabled and roll < throttle + error:
            return self._fail(start_response, service, "server_error")
        if self.enabled and write and lose < lost:
            list(self._app(environ, lambda *_: None))  # applied...
            return self._fail(start_response, service, "response_lost")  # ...but the caller never hears so
        return self._app(environ, start_response)

    def _fail(self, start_response: Callable[..., Any], service: str, kind: str) -> list[bytes]:
        with self._lock:
            self.counts[kind] += 1
        if service == "dynamodb":
            code = "ThrottlingException" if kind == "throttled" else "InternalServerError"
            status = "400 Bad Request" if kind == "throttled" else "500 Internal Server Error"
            body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"})
            start_response(status, [("Content-Type", "application/x-amz-json-1.0")])
        else:
            code = "SlowDown" if kind == "throttled" else "InternalError"
            status = "503 Slow Down" if kind == "throttled" else "500 Internal Server Error"
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
            start_response(status, [("Content-Type", "application/xml")])
        return [body.encode()]


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
    faults: dict[str, int] = field(default_factory=dict)
    takeovers: int = 0
    step_runs: int = 0
    repeated_runs: int = 0  # step runs beyond the first for a workset (each under a new epoch)
    webhook_deliveries: int = 0
    webhook_refused: int = 0
    duplicate_deliveries: int = 0
    exit_codes: list[int] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)  # every daemon's counters, summed over the run
    lease_losses_logged: int = 0  # "lease lost" lines in the daemons' logs
    violations: list[str] = field(default_factory=list)
    workdir: str = ""  # the daemons' logs and configuration, the step's record of its runs


def run(
    *,
    worksets: int = 300,
    daemons: int = 3,
    seed: int = 1,
    timeout_s: float = 600,
    workdir: Path | None = None,
    out: Callable[[str], None] = print,
) -> Report:
    rng = random.Random(seed)
    os.environ.update(CREDENTIALS)
    report = Report(worksets=worksets, daemons=daemons)
    work = workdir or Path(tempfile.mkdtemp(prefix="wm-chaos-"))
    report.workdir = str(work)
    faults: Faults | None = None

    def wrap(app: WsgiApp) -> WsgiApp:
        nonlocal faults
        faults = Faults(app, seed=seed)
        return faults

    hook = Webhook(refuse=0.10, seed=seed)
    with Emulator(wrap=wrap) as emulator:
        assert faults is not None
        faults.enabled = False
        client = boto3.client(
            "dynamodb",
            endpoint_url=emulator.endpoint,
            config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": 20}, user_agent_extra=HARNESS
            ),
        )
        s3 = boto3.client("s3", endpoint_url=emulator.endpoint, config=botocore.config.Config(user_agent_extra=HARNESS))
        s3.create_bucket(Bucket=BUCKET)
        schema.ensure_table(client, TableConfig(name=TABLE))
        store = DynamoStore(client, TABLE)
        names = [f"ws-{n:04d}" for n in range(worksets)]
        _drop(s3, names)
        config = _config(work, emulator.endpoint, hook.url)
        faults.enabled = True
        started = time.monotonic()
        fleet = [Daemon(f"d{i}", config, work) for i in range(daemons)]
        counters: collections.Counter[str] = collections.Counter()  # of the daemons gone, read before they went
        restarts = 0
        try:
            actions = ["kill", "outage", "pause"]  # each at least once, then at random
            while time.monotonic() - started < timeout_s:
                # The scripted first actions come quickly and always happen, even on a machine fast enough to finish
                # the work before them (then they hit an idle fleet, which must survive them too).
                time.sleep(rng.uniform(0.5, 1.5) if actions else rng.uniform(1.0, 3.0))
                if not actions and _all_terminal(store):
                    break
                index = _victim(rng, fleet, store)
                action = actions.pop(0) if actions else rng.choices(["kill", "pause", "outage"], [45, 45, 10])[0]
                if action == "outage":
                    report.outages += 1
                    faults.outage(rng.uniform(3.0, 6.0))
                elif action == "kill":
                    counters.update(fleet[index].counters())
                    fleet[index].kill()
                    report.kills += 1
                    time.sleep(rng.uniform(0.5, 2.0))
                    restarts += 1
                    fleet[index] = Daemon(f"d{index}-r{restarts}", config, work)
                else:
                    report.pauses += 1
                    fleet[index].pause(rng.uniform(0.5, 8.0))
            else:
                report.violations.append(f"not every workset was terminal after {timeout_s:.0f} s")
            # The chaos is over: let the fleet deliver what is left in the outbox, then stop it.
            # Under chaos the outbox can run a minute behind: wait while deliveries still arrive, up to 5 minutes.
            last, quiet_since, give_up = -1, time.monotonic(), time.monotonic() + 300
            while time.monotonic() < give_up and asyncio.run(store.pending_events(limit=1)):
                delivered = sum(hook.received.values())
                if delivered != last:
                    last, quiet_since = delivered, time.monotonic()
                elif time.monotonic() - quiet_since > 60:
                    break
                time.sleep(0.5)
        finally:
            for daemon in fleet:
                counters.update(daemon.counters())
            report.exit_codes = [d.stop() for d in fleet]
            hook.close()
        report.counters = dict(sorted(counters.items()))
        report.lease_losses_logged = sum(
            log.read_text().count('"event": "lease lost"') for log in work.glob("d*.log") if log.is_file()
        )
        report.seconds = round(time.monotonic() - started, 1)
        faults.enabled = False
        report.faults = dict(faults.counts)
        _check(report, store, names, work / "runs.log", hook)
        report.violations += _unfed_counters(report)
    out(json.dumps(asdict(report), indent=2))
    return report


def _victim(rng: random.Random, fleet: list[Daemon], store: DynamoStore) -> int:
    """Mostly a daemon that holds work right now (that is where the bugs are), sometimes any."""
    holders = {ws.lease.owner for ws in asyncio.run(store.list(state=State.IN_PROGRESS)) if ws.lease}
    busy = [i for i, daemon in enumerate(fleet) if daemon.find_owner() in holders]
    return rng.choice(busy) if busy and rng.random() < 0.8 else rng.randrange(len(fleet))


def _drop(s3: Any, names: list[str]) -> None:
    lab = Lab(s3, bucket=BUCKET)
    for name in names:
        lab.workset(name, prefix=PREFIX, samples=1)


def _config(work: Path, endpoint: str, hook_url: str) -> Path:
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
    )


def _all_terminal(store: DynamoStore) -> bool:
    worksets = asyncio.run(store.list())
    return bool(worksets) and all(ws.state.terminal for ws in worksets)


def _check(report: Report, store: DynamoStore, names: list[str], runs_log: Path, hook: Webhook) -> None:
    violations = report.violations
    worksets = {ws.workset_id: ws for ws in asyncio.run(store.list())}
    report.states = dict(collections.Counter(ws.state.value for ws in worksets.values()))
    missing = sorted(set(names) - set(worksets))
    if missing:
        violations.append(f"never registered: {missing[:5]}")

    runs: dict[str, list[int]] = collections.defaultdict(list)
    for line in runs_log.read_text().splitlines() if runs_log.exists() else []:
        ws_id, run_epoch, _, _, what = line.split()
        if what == "start":
            runs[ws_id].append(int(run_epoch))
    report.step_runs = sum(len(epochs) for epochs in runs.values())
    report.repeated_runs = sum(len(epochs) - 1 for epochs in runs.values() if epochs)

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
        epochs = runs.get(ws_id, [])
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
            if hook.received[event.event_id] == 0:
                violations.append(f"{event.event_id} ({event.type.value}) never reached the webhook")
        if len(violations) > 50:
            violations.append("(stopped checking after 50 violations)")
            break
    pending = asyncio.run(store.pending_events(limit=10))
    if pending:
        violations.append(f"the outbox still holds {[e.event_id for e in pending]}")
    fleet = asyncio.run(store.fleet())
    if fleet.running != 0:
        violations.append(f"the fleet counter says {fleet.running} in progress")
    report.webhook_deliveries = sum(hook.received.values())
    report.webhook_refused = sum(hook.refused.values())
    report.duplicate_deliveries = sum(n - 1 for n in hook.received.values() if n > 1)
    if any(code != 0 for code in report.exit_codes):
        violations.append(f"a daemon did not stop cleanly: exit codes {report.exit_codes}")


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


_EPOCH_ENDINGS = frozenset({EventType.LEASE_EXPIRED, EventType.RELEASED, EventType.RETRYING})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worksets", type=int, default=300)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(worksets=args.worksets, daemons=args.daemons, seed=args.seed, timeout_s=args.timeout)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    for violation in report.violations:
        print(f"VIOLATION: {violation}", file=sys.stderr)
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
