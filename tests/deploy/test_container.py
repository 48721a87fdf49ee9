"""The shipped Docker image, built from deploy/docker/Dockerfile unmodified, run the way docs/deployment.md says.

``podman build --format docker`` (Docker's image format keeps the HEALTHCHECK) against a local stand-in for
``python:3.11-slim-bookworm`` (no image registry is reachable here: see tests/deploy/images.py), with the build's
network and this machine's pip configuration mounted read-only, so the Dockerfile's ``RUN pip install`` and
``apt-get install tini`` work as they would anywhere. The guide's ``docker run`` is run with podman, mapped explicitly
(below). There is no systemd on this machine to schedule the HEALTHCHECK, so the test runs it, once per interval.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import State, Workset, WorksetId
from tests.conftest import REGION, ROOT, run
from tests.deploy import guide, images
from tests.deploy.conftest import aws, free_port, wait_for
from tests.deploy.images import podman
from tests.lab import BUCKET, Lab

TABLE = "deploy-container"
HEALTH_INTERVAL_S = 30  # the Dockerfile's HEALTHCHECK --interval
SLEEP = (  # what it prints is in its full step log in S3 ([run] step_logs), for `workset-monitor logs`
    "import sys, time; print('working on', sys.argv[1], flush=True); "
    "time.sleep(3600 if sys.argv[1].startswith('slow-') else 1)"
)


def build(tag: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker build -f deploy/docker/Dockerfile -t TAG .`` (the guide's step 1), with podman."""
    return podman(
        "build",
        "--format=docker",
        "--layers=false",  # no intermediate images left behind (and no stale cache between runs)
        "--pull=never",  # the stand-in base image is local
        "--network=host",  # pip and apt-get reach their registries from the build
        *images.pip_mounts(),
        *args,
        "--file=deploy/docker/Dockerfile",
        f"--tag={tag}",
        str(ROOT),
        timeout_s=900,
    )


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    images.ensure_python()
    tag = f"localhost/workset-monitor:deploy-test-{uuid.uuid4().hex[:8]}"
    build(tag)
    yield tag
    podman("rmi", "--force", tag, check=False)


def docker_run(*, name: str, image: str, config: Path, port: int) -> list[str]:
    """The guide's ``docker run`` block as podman arguments, each change explicit."""
    [command] = [c for c in guide.commands() if c.words[:2] == ["docker", "run"]]
    words = shlex.split(command.text.replace("\\\n", " "))
    assert words[:2] == ["docker", "run"] and words[-1] == "workset-monitor", words
    inside = "/etc/workset-monitor/config.toml"
    replace = {
        "workset-monitor": name,  # --name
        f"{inside}:{inside}:ro": f"{config}:{inside}:ro",  # this test's file, installed as step 1 says
    }
    mapped: list[str] = []
    for word in words[2:-1]:
        if word == "127.0.0.1:10090:10090":
            # no bridge networks here (and no address but loopback may be used): the host's network, the side port
            # on the host's loopback as -p 127.0.0.1:... would publish it
            mapped[-1:] = ["--network=host", "--env=WORKSET_MONITOR_METRICS__HOST=127.0.0.1"]
        else:
            mapped.append(replace.get(word, word))
    # the credentials an instance or task role gives on AWS
    aws_env = ["--env=AWS_ACCESS_KEY_ID=testing", "--env=AWS_SECRET_ACCESS_KEY=testing"]
    return ["run", *mapped, *aws_env, f"--env=WORKSET_MONITOR_METRICS__PORT={port}", image]


@pytest.mark.timeout(1500)
def test_the_image_runs_healthy_as_non_root_processes_worksets_and_stops_cleanly(
    image: str, emulator: str, tmp_path: Path
) -> None:
    lab = Lab(aws("s3", emulator))
    lab.s3.create_bucket(Bucket=BUCKET)
    schema.ensure_table(aws("dynamodb", emulator), TableConfig(name=TABLE))
    store = DynamoStore(aws("dynamodb", emulator), TABLE)
    port = free_port()
    draft = tmp_path / "config.example.toml"
    draft.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{emulator}"\n[table]\nname = "{TABLE}"\n'
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["worksets/"]\ninterval_s = 1\n'
        '[run]\nstep_logs = "s3"\n'
        f'[[pipeline.steps]]\nname = "work"\ncommand = ["python", "-c", "{SLEEP}", "{{workset_id}}"]\n'
    )
    config = tmp_path / "config.toml"
    subprocess.run(["install", "-m", "0644", str(draft), str(config)], check=True)  # the guide's step 1
    name = f"wm-deploy-{uuid.uuid4().hex[:8]}"
    try:
        podman(*docker_run(name=name, image=image, config=config, port=port))

        def get(workset: str) -> Workset | None:
            return run(store.get(WorksetId(workset)))

        # --- healthy: the HEALTHCHECK passes after its start period and at every interval after ------------------
        started = time.monotonic()
        wait_for(
            "the first healthy check",
            lambda: podman("healthcheck", "run", name, check=False).returncode == 0,
            timeout_s=60,
            every_s=2,
        )
        dropped = []
        for period in range(4):
            dropped.append(f"ws-{period}")
            lab.workset(dropped[-1])
            time.sleep(max(0.0, started + (period + 1) * HEALTH_INTERVAL_S - time.monotonic()))
            check = podman("healthcheck", "run", name, check=False)
            assert check.returncode == 0, check  # podman 4.3 prints nothing when healthy
        health = podman("inspect", "--format={{.State.Health.Status}}", name).stdout.strip()
        assert health == "healthy", health

        # --- worksets dropped meanwhile are complete; the daemon runs as uid 10001 ------------------------------
        wait_for(
            "the worksets", lambda: all((w := get(n)) and w.state is State.COMPLETE for n in dropped), timeout_s=60
        )
        status = podman("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == ["10001"] * 4, f"PID 1 (tini) runs as {uids}"
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"

        # --- an operator in the container: the daemon alive in `fleet`; a step's full log from S3 --------------------
        fleet = json.loads(podman("exec", name, "workset-monitor", "fleet", "--json").stdout)
        [daemon] = fleet["daemons"]
        assert daemon["status"] == "alive" and daemon["writes"] >= 1, fleet
        printed = podman("exec", name, "workset-monitor", "logs", dropped[0], "--step", "work")
        assert printed.stdout == f"working on {dropped[0]}\n", printed

        # --- stop with a step still running: exit 0 within the grace period, the workset released ----------------
        lab.workset("slow-1")
        wait_for("slow-1 in progress", lambda: (w := get("slow-1")) and w.state is State.IN_PROGRESS, timeout_s=60)
        began = time.monotonic()
        podman("stop", name, timeout_s=120)
        took = time.monotonic() - began
        code = podman("inspect", "--format={{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", podman("logs", name).stdout[-3000:]
        assert took < 60, f"podman stop took {took:.0f} s (--stop-timeout 60)"
        slow = get("slow-1")
        assert slow is not None and slow.state is State.READY and slow.lease is None, slow
        logs = podman("logs", name)
        assert "shutdown: done" in logs.stdout + logs.stderr
        assert run(store.presences()) == [], "a clean stop removes the daemon's presence item"
    finally:
        podman("rm", "--force", "--time=0", name, check=False)


@pytest.mark.timeout(900)
def test_docker_run_image_demo_says_in_one_line_what_it_needs_and_the_demo_build_runs_it(image: str) -> None:
    result = podman("run", "--rm", "--network=none", image, "demo", "--until-idle", check=False)
    # podman itself complains that there is no systemd on this machine to schedule the HEALTHCHECK: not ours
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith('time="')]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "--build-arg EXTRAS=demo" in lines[0] and "internal error" not in lines[0], lines
    tag = f"{image}-demo"
    try:
        build(tag, "--build-arg=EXTRAS=demo")
        demo = podman("run", "--rm", "--network=none", tag, "demo", "--until-idle", check=False, timeout_s=300)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "complete" in demo.stdout
    finally:
        podman("rmi", "--force", tag, check=False)
