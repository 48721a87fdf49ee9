"""``workset-monitor demo``: the real daemon, end to end, against an AWS emulator on loopback.

It starts the emulator (moto, 127.0.0.1, a free port), creates the bucket, the table and an SNS topic, drops six
worksets in the Daylily layout into S3 (urgent, normal, low; one invalid; one whose pipeline fails once then
succeeds; one that fails for good), and starts ``workset-monitor run`` as a child process: the production code path,
only the endpoint differs. The example steps (``monitor.aws.demo_steps``) read each manifest from S3 and write
results back. Progress is printed as the states change; with ``--until-idle`` the demo stops the daemon once every
workset is terminal and prints a summary. Nothing outside a temporary folder and the loopback interface is touched.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from monitor import render, step_logs
from monitor.aws import schema
from monitor.aws.clients import Clients
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Logs
from monitor.child import Child
from monitor.config import AwsConfig, TableConfig
from monitor.model import Workset

BUCKET, PREFIX, TABLE, TOPIC = "demo-genomics-lab", "worksets/", "demo-worksets", "workset-demo"
EXPECTED = {
    "ws-urgent-tumour": "complete",
    "ws-normal-germline": "complete",
    "ws-low-resequence": "complete",
    "ws-missing-fastq": "error",
    "ws-flaky-cluster": "complete",
    "ws-bad-reference": "error",
}
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_SESSION_TOKEN": "demo"}
TIMEOUT_S = 110.0


def run(*, until_idle: bool, out: TextIO = sys.stdout, timeout_s: float = TIMEOUT_S, as_json: bool = False) -> int:
    """Run the demo; 0 when (with ``until_idle``) every workset ended as expected. ``as_json``: the progress goes
    to stderr and the outcome is one JSON document on ``out``."""
    result, out = out, (sys.stderr if as_json else out)
    from monitor.aws.emulator import Emulator  # noqa: PLC0415 - lazy: needs moto (the dev extra)

    workdir = Path(tempfile.mkdtemp(prefix="workset-monitor-demo-"))
    with Emulator() as emulator:
        endpoint = emulator.endpoint
        env = {**_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
        clients = _clients(endpoint)
        _setup(clients, out)
        config = _write_config(workdir, endpoint)
        print(f"emulator:  {endpoint} (moto, loopback only)", file=out)
        print(f"config:    {config}", file=out)
        print(f"daemon log: {workdir / 'daemon.log'}", file=out)
        daemon = Child(config, workdir / "daemon.log", env=env)  # the demo's own config, nothing of the caller's
        try:
            side_port = daemon.side_port(timeout_s=20)
            metrics = f"{side_port}/metrics" if side_port else "(not known: see the daemon log)"
            print(f"metrics:   {metrics}  (also /healthz, /readyz)\n", file=out)
            finals = asyncio.run(_watch(clients, daemon, out, until_idle=until_idle, timeout_s=timeout_s))
        except KeyboardInterrupt:
            finals = None
        finally:
            code = daemon.stop(timeout_s=30)
        if finals is None:
            print(f"\nstopped; daemon exit code {code}", file=out)
            if as_json:
                print(render.to_json({"ok": code == 0, "daemon_exit_code": code, "worksets": []}), file=result)
            return 0 if code == 0 else 1
        logged = asyncio.run(_step_logs(clients, finals))
        return _summary(finals, code, result if as_json else out, as_json=as_json, logged=logged)


def _clients(endpoint: str) -> Clients:
    for key, value in _CREDENTIALS.items():
        os.environ.setdefault(key, value)  # the demo process's own clients: never a real account
    return Clients(AwsConfig(region="us-east-1", endpoint_url=endpoint, max_attempts=3))


def _setup(clients: Clients, out: TextIO) -> None:
    s3 = clients.get("s3")
    s3.create_bucket(Bucket=BUCKET)
    schema.ensure_table(clients.get("dynamodb"), TableConfig(name=TABLE), poll_s=0.2)
    clients.get("sns").create_topic(Name=TOPIC)
    seeds = {
        "ws-urgent-tumour": ("urgent", 3, "", None),
        "ws-normal-germline": ("normal", 2, "", None),
        "ws-low-resequence": ("low", 1, "", None),
        "ws-missing-fastq": ("normal", 2, "", "S1_R2.fastq.gz"),
        "ws-flaky-cluster": ("normal", 2, "demo: fail-once\n", None),
        "ws-bad-reference": ("low", 1, "demo: fail-always\n", None),
    }
    for name, (priority, samples, behaviour, missing) in seeds.items():
        folder = f"{PREFIX}{name}/"
        rows = ["RUN_ID\tSAMPLE_ID\tSAMPLE_TYPE\tR1_FQ\tR2_FQ"]
        rows += [f"RUN7\tS{i}\tblood\tS{i}_R1.fastq.gz\tS{i}_R2.fastq.gz" for i in range(samples)]
        files = {
            "stage_samples.tsv": "\n".join(rows) + "\n",
            "daylily_work.yaml": "day-clone: -d {workdir_name} -t main\ndy-r: -p produce_snv_concordances\n"
            + behaviour,
            "daylily_info.yaml": f"workset_name: {name}\npriority: {priority}\n",
            "daylily.ready": "2026-11-26T00:00:00Z",
        }
        files |= {f"sample_data/S{i}_R{r}.fastq.gz": "@r\nACGT\n+\nFFFF\n" for i in range(samples) for r in (1, 2)}
        if missing:
            files.pop(f"sample_data/{missing}")
        for key, body in files.items():
            s3.put_object(Bucket=BUCKET, Key=folder + key, Body=body.encode())
    print(f"seeded {len(seeds)} worksets into s3://{BUCKET}/{PREFIX}", file=out)


def _write_config(workdir: Path, endpoint: str) -> Path:
    step = [sys.executable, "-m", "monitor.aws.demo_steps"]
    steps = "".join(
        f'\n[[pipeline.steps]]\nname = "{name}"\nkind = "{kind}"\ncommand = {[*step, name]!r}\n'
        f"timeout_s = 60\ninterval_s = 0.5\n".replace("'", '"')
        for name, kind in (("stage", "exec"), ("analyse", "poll"), ("export", "exec"))
    )
    text = f"""# written by `workset-monitor demo`: short intervals so the whole story takes seconds
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
max_attempts = 3

[table]
name = "{TABLE}"

[scan]
bucket = "{BUCKET}"
prefixes = ["{PREFIX}"]
interval_s = 1.0

[lease]
duration_s = 8.0
heartbeat_s = 2.0
sweep_interval_s = 2.0
grace_s = 2.0

[run]
max_concurrent = 2
max_attempts = 3
shutdown_grace_s = 5.0
retry_backoff_base_s = 2.0
retry_backoff_max_s = 4.0
# the example steps read and write S3 themselves, with the demo's (fake) credentials and the emulator's endpoint
step_env_passthrough = ["PATH", "HOME", "LANG", "TZ", "AWS_*"]
step_logs = "s3"  # each step run's full output in the workset's folder (the summary's LOG column)

[metrics]
host = "127.0.0.1"
port = 0  # a free port; the daemon logs which

[log]
level = "info"
format = "json"
{steps}"""
    path = workdir / "demo.toml"
    path.write_text(text)
    return path


async def _watch(
    clients: Clients, daemon: Child, out: TextIO, *, until_idle: bool, timeout_s: float
) -> dict[str, Workset]:
    store = DynamoStore(clients.get("dynamodb"), TABLE)
    seen: dict[str, tuple[str, str | None]] = {}
    started = time.monotonic()
    latest: dict[str, Workset] = {}
    while True:
        latest = {ws.workset_id: ws for ws in await store.list()}
        for name, ws in sorted(latest.items(), key=lambda kv: kv[1].updated_at_ms):
            now = (ws.state.value, ws.current_step)
            if seen.get(name) != now:
                step = f" (step {ws.current_step})" if ws.current_step else ""
                before = seen.get(name, ("-", None))[0]
                print(f"{_clock(started)}  {name:<20} {before:>11} -> {ws.state.value}{step}", file=out, flush=True)
                seen[name] = now
        terminal = len(latest) == len(EXPECTED) and all(ws.state.terminal for ws in latest.values())
        if until_idle and terminal:
            return latest
        if not daemon.running():
            print(f"the daemon exited early with code {daemon.wait()}; see its log", file=out)
            return latest
        if time.monotonic() - started > timeout_s:
            print(f"timed out after {timeout_s:.0f} s", file=out)
            return latest
        await asyncio.sleep(0.5)


def _clock(started: float) -> str:
    return f"[{time.monotonic() - started:5.1f}s]"


async def _step_logs(clients: Clients, finals: dict[str, Workset]) -> dict[str, int]:
    """Bytes of full step logs in S3, per workset."""
    store = S3Logs(clients.get("s3"))
    found = {}
    for name, ws in finals.items():
        objects = await store.sizes(ws.bucket, step_logs.folder(ws.prefix))
        found[name] = sum(log.size for log in step_logs.step_logs(objects, ws.prefix))
    return found


def _summary(
    finals: dict[str, Workset],
    daemon_code: int,
    out: TextIO,
    *,
    as_json: bool = False,
    logged: dict[str, int] | None = None,
) -> int:
    logged = logged or {}
    rows: list[tuple[Any, ...]] = []
    wrong = []
    for name, expected in EXPECTED.items():
        ws = finals.get(name)
        state = ws.state.value if ws else "not registered"
        if state != expected:
            wrong.append(name)
        note = (ws.last_error or "") if ws else ""
        log = logged.get(name, 0)
        rows.append((name, state, ws.priority.value if ws else "", ws.attempts if ws else "", log, note[:80]))
    if as_json:
        worksets = [
            {"workset_id": r[0], "state": r[1], "expected": EXPECTED[r[0]], "priority": r[2] or None, "attempts": r[3]}
            | {"step_log_bytes": r[4], "last_error": r[5] or None}
            for r in rows
        ]
        ok = not wrong and daemon_code == 0
        print(render.to_json({"ok": ok, "daemon_exit_code": daemon_code, "worksets": worksets}), file=out)
        return 0 if ok else 1
    print("\n" + render.table(("WORKSET", "STATE", "PRIORITY", "ATTEMPTS", "LOG", "LAST ERROR"), rows), file=out)
    print(f"\ndaemon stopped with exit code {daemon_code}", file=out)
    if wrong or daemon_code != 0:
        print(f"demo FAILED: unexpected final state for {', '.join(wrong) or 'none'}", file=out)
        return 1
    print("demo finished: every workset reached its expected state.", file=out)
    return 0
