"""Fixtures of the real deployment tests (``make deploy-test``): the local AWS emulator on 127.0.0.1 (the containers
share the host's network, so they reach it there), a wheelhouse of the project's pinned dependencies, the images,
and containers that are always removed, even when a test fails.

These tests need root, podman, runc and debootstrap (``make deploy-test`` installs them) and take minutes: ``make
test`` does not collect this folder (``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor.aws.emulator import Emulator
from tests.conftest import REGION, ROOT
from tests.deploy import images
from tests.deploy.images import podman
from tests.deploy.systemd_host import SystemdHost
from tests.headnode import HeadNodeSite
from tests.lab import BUCKET


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    with Emulator(host="127.0.0.1", port=0) as running:
        yield running.endpoint


def aws(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the project, its pinned dependencies (constraints.txt), its build backend and the AWS CLI: what the
    operator's ``pip install`` resolves from inside the systemd host (PIP_NO_INDEX, PIP_FIND_LINKS)."""
    house = tmp_path_factory.mktemp("wheels")
    source = copy_source(tmp_path_factory.mktemp("wheel-src") / "workset-monitor")  # the build leaves files there
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "-c", str(ROOT / "constraints.txt"), "-w", str(house)]
    subprocess.run([*build, str(source), "awscli", "setuptools>=77", "wheel"], check=True, capture_output=True)
    return house


# What an operator's checkout holds (no virtual environment, no caches): copied into the hosts.
SOURCE = (
    "pyproject.toml",
    "README.md",
    "constraints.txt",
    "config.example.toml",
    "monitor",
    "deploy",
    "docs",
)


def copy_source(dest: Path) -> Path:
    """A clean copy of the checkout (SOURCE only) at ``dest``."""
    dest.mkdir(parents=True)
    tar = subprocess.run(
        ["tar", "-C", str(ROOT), "--exclude=__pycache__", "-c", *SOURCE], check=True, capture_output=True
    )
    subprocess.run(["tar", "-C", str(dest), "-x"], input=tar.stdout, check=True)
    return dest


@pytest.fixture
def containers() -> Iterator[Callable[..., str]]:
    """A factory: containers(*podman_run_args) -> the name of a detached container, force-removed at teardown."""
    names: list[str] = []

    def start(*args: str, name: str | None = None) -> str:
        name = name or f"wm-deploy-{uuid.uuid4().hex[:8]}"
        names.append(name)
        podman("run", "-d", "--name", name, *args)
        return name

    yield start
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture(scope="session")
def host_image() -> str:
    return images.ensure_host()


def wait_for(what: str, check: Callable[[], Any], *, timeout_s: float, every_s: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {result!r})")
        time.sleep(every_s)


def boot_systemd_host(
    containers: Callable[..., str], host_image: str, wheelhouse: Path, *, mounts: dict[Path, str] | None = None
) -> SystemdHost:
    """A Debian host with systemd as PID 1 on the host's network, the wheelhouse at /wheels, ``mounts`` (this
    machine's path -> the host's) read-only, booted."""
    # On a real machine systemd makes / a shared mount at boot; in a container it leaves that to the engine, and
    # without it LoadCredential= hands the service an empty $CREDENTIALS_DIRECTORY. So: shared first, then systemd.
    init = "mount --make-rshared / && exec /sbin/init"
    volumes = [f"--volume={wheelhouse}:/wheels:ro", *(f"--volume={a}:{b}:ro" for a, b in (mounts or {}).items())]
    name = containers("--privileged", "--systemd=always", "--network=host", *volumes, host_image, "/bin/sh", "-c", init)
    machine = SystemdHost(name)
    wait_for(
        "systemd to boot",
        lambda: machine.sh("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded"),
        timeout_s=60,
    )
    return machine


def daylily_section(node: HeadNodeSite, *, create: str, identity: str, tag: str) -> dict[str, Any]:
    """``[daylily]`` for the deploy tests: clusters in us-west-2a, made by ``create`` when none is ready there; SSH as
    root with ``identity`` to the loopback head node (the emulated head node's address is not reachable: ``-o
    HostName`` takes every connection to 127.0.0.1); runs in sessions named ``<tag><port>``; teardown after 3 s idle."""
    return {
        "region": "us-west-2",
        "availability_zone": "us-west-2a",
        "create_command": [create, *("--cluster-name", "{cluster}", "--region", "{region}", "--zone", "us-west-2a")],
        "cluster_poll_s": 1,
        "ssh_user": "root",
        "ssh_port": node.port,
        "ssh_identity_file": identity,
        "ssh_extra_args": ["-o", "HostName=127.0.0.1"],
        "workdir": str(node.workdir),
        "run_command": node.run_command(),
        "login_shell_init": "true",
        "tmux_session_prefix": f"{tag}{node.port}",
        "auto_teardown": True,
        "idle_teardown_minutes": 0.05,
        "queue_command": "true",
    }


def daylily_daemon_config(
    *, emulator: str, table: str, command: str, daylily: dict[str, Any], steps: Sequence[str], sections: str = ""
) -> str:
    """The daemon's config for the Daylily deploy tests: the emulator, ``table``, the lab bucket's ``w/`` scanned
    every second, ``sections`` (more TOML), the steps' AWS environment passed through, ``[daylily]`` and one
    ``command``-run step per name (``watch`` and ``teardown`` as poll steps)."""

    def step(name: str) -> str:
        argv = json.dumps([command, "--config", "/etc/workset-monitor/config.toml", name])
        poll = 'kind = "poll"\ninterval_s = 1\n' if name in ("watch", "teardown") else ""
        return f'[[pipeline.steps]]\nname = "{name}"\ncommand = {argv}\ntimeout_s = 600\n{poll}'

    return (
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{emulator}"\n'
        f'[table]\nname = "{table}"\n'
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["w/"]\ninterval_s = 1\n'
        f"{sections}"
        '[run]\nretry_backoff_base_s = 1\nretry_backoff_max_s = 1\nstep_env_passthrough = ["PATH", "HOME", "AWS_*"]\n'
        "[daylily]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in daylily.items())
        + "".join(step(name) for name in steps)
    )
