"""The Daylily steps under the shipped systemd unit, unmodified but for one drop-in: systemd 252 as PID 1 in a podman
container on the host's network, the daemon as the unit runs it (DynamicUser, the sandbox), the head node a real
sshd and tmux on this machine's loopback (tests/headnode.py), S3 and DynamoDB the emulator.

The operator's story: the SSH key is given to the service as a credential by the shipped drop-in
(deploy/daylily/daylily.conf: the dynamic user cannot read a root-owned key); a workset dropped in S3 is launched in
its tmux session and watched; the service is SIGKILLed mid-watch (``systemctl kill -s KILL``); systemd restarts it,
the new process takes the workset over after a lease, re-attaches to the same run and completes it — exactly one
pipeline run — with the run lasting well over five leases.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import EventType, State, WorksetId
from tests.conftest import REGION, ROOT, run
from tests.deploy.conftest import aws, boot_systemd_host, free_port, wait_for
from tests.deploy.images import podman
from tests.deploy.systemd_host import SystemdHost
from tests.headnode import HeadNodeSite, head_node
from tests.lab import BUCKET, Lab

TABLE = "deploy-daylily"
CREDENTIAL = "/run/credentials/workset-monitor.service/daylily.pem"
LEASE_S = 6.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HeadNodeSite]:
    with head_node(tmp_path / "head") as site:
        yield site


@pytest.fixture
def host(containers: Callable[..., str], base_image: str, wheelhouse: Path) -> Iterator[SystemdHost]:
    yield boot_systemd_host(containers, base_image, wheelhouse)


def config(*, emulator: str, port: int, node: HeadNodeSite) -> str:
    def step(name: str, extra: str = "") -> str:
        command = json.dumps(
            ["/opt/workset-monitor/bin/workset-daylily", "--config", "/etc/workset-monitor/config.toml", name]
        )
        return f'[[pipeline.steps]]\nname = "{name}"\ncommand = {command}\ntimeout_s = 600\n{extra}'

    daylily = {
        "head_node": "127.0.0.1",
        "ssh_user": "root",
        "ssh_port": node.port,
        "ssh_identity_file": CREDENTIAL,
        "workdir": str(node.workdir),
        "run_command": node.run_command(),
        "login_shell_init": "true",
        "tmux_session_prefix": f"sd{node.port}",
    }
    return (
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{emulator}"\n'
        f'[table]\nname = "{TABLE}"\n'
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["w/"]\ninterval_s = 1\n'
        f"[lease]\nduration_s = {LEASE_S}\nheartbeat_s = 1.5\nsweep_interval_s = 2\ngrace_s = 1\n"
        '[run]\nretry_backoff_base_s = 1\nretry_backoff_max_s = 1\nstep_env_passthrough = ["PATH", "HOME", "AWS_*"]\n'
        f"[metrics]\nport = {port}\n"
        "[daylily]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in daylily.items())
        + step("launch")
        + step("watch", 'kind = "poll"\ninterval_s = 1\n')
    )


@pytest.mark.timeout(1200)
def test_the_daylily_steps_run_under_systemd_and_survive_a_sigkill_with_exactly_one_run(
    host: SystemdHost, emulator: str, node: HeadNodeSite
) -> None:
    lab = Lab(aws("s3", emulator))
    lab.s3.create_bucket(Bucket=BUCKET)
    schema.ensure_table(aws("dynamodb", emulator), TableConfig(name=TABLE))
    store = DynamoStore(aws("dynamodb", emulator), TABLE)
    run_s = 8 * LEASE_S  # the run outlasts five leases, and the takeover happens in its middle
    node.pipeline_dir("ws-sd", f"succeed {run_s:.0f}")

    # --- install: the package from the wheels, the unit as shipped, the config, the key and the drop-in -------------
    host.sh(
        "python3 -m venv /opt/workset-monitor && /opt/workset-monitor/bin/pip install --quiet --no-index "
        "--find-links /wheels workset-monitor",
        timeout_s=600,
    )
    podman("cp", str(ROOT / "deploy/systemd/workset-monitor.service"), f"{host.name}:/etc/systemd/system/")
    host.sh("mkdir -p /etc/workset-monitor /etc/systemd/system/workset-monitor.service.d")
    host.write("/etc/workset-monitor/config.toml", config(emulator=emulator, port=free_port(), node=node))
    host.write("/etc/workset-monitor/daylily.pem", node.identity.read_text())
    host.sh("chmod 0600 /etc/workset-monitor/daylily.pem")
    dropins = "/etc/systemd/system/workset-monitor.service.d/"
    podman("cp", str(ROOT / "deploy/daylily/daylily.conf"), f"{host.name}:{dropins}")
    host.write("/etc/default/workset-monitor", "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n")
    host.sh("systemctl daemon-reload && systemctl start workset-monitor")

    # --- a workset: launched in its session on the head node, then watched ----------------------------------------
    lab.workset("ws-sd", prefix="w/")

    def current() -> object:
        return run(store.get(WorksetId("ws-sd")))

    try:
        wait_for("the run to start on the head node", lambda: node.runs("ws-sd"), timeout_s=90)
    except BaseException:
        print(host.journal()[-6000:])
        raise
    wait_for("the daemon to watch it", lambda: getattr(current(), "current_step", None) == "watch", timeout_s=30)

    # --- SIGKILL the service mid-watch: systemd restarts it, the new process takes the workset over ----------------
    pid = host.show("MainPID")["MainPID"]
    host.sh("systemctl kill -s KILL workset-monitor")
    wait_for("a restart", lambda: host.show("MainPID")["MainPID"] not in ("0", pid), timeout_s=30)
    done = wait_for(
        "the takeover to complete the workset",
        lambda: (ws := current()) is not None and ws.state is State.COMPLETE and ws,  # type: ignore[attr-defined]
        timeout_s=run_s + 60,
    )

    assert len(node.runs("ws-sd")) == 1, node.runs("ws-sd")  # exactly one pipeline run across the restart
    assert done.epoch >= 2
    trail = run(store.history(WorksetId("ws-sd")))
    assert EventType.LEASE_EXPIRED in [e.type for e in trail]
    assert "the run succeeded" in trail[-2].detail
    state = host.show("NRestarts", "ActiveState")
    assert state == {"NRestarts": "1", "ActiveState": "active"}, state
    host.sh("systemctl stop workset-monitor")
