"""The container images ``make deploy-test`` runs, built on this machine from Debian packages and cached in podman's
own image store, so a second run on one machine skips them.

- ``BASE``: Debian bookworm (debootstrap, minbase) with systemd, D-Bus, Python 3.11 and curl.
- ``HOST``: ``BASE`` plus what a machine running the Daylily steps has (``HOST_PACKAGES``, by apt-get). The systemd
  tests boot it with ``/sbin/init`` as PID 1.
- ``PYTHON``: a local stand-in for ``python:3.11-slim-bookworm``, which ``deploy/docker/Dockerfile`` starts from and
  which cannot be pulled here (no image registry is reachable). It is ``BASE`` plus ``/usr/local/bin/python`` ->
  Debian's ``python3`` (3.11) and the official image's ``PATH`` and ``LANG``; it is tagged with the official name,
  ``docker.io/library/python:3.11-slim-bookworm``, so the unmodified Dockerfile resolves it locally (``--pull=never``).
  An image of that name that is not ours (a real pull, on a machine with a registry) is used as it is.

Each image's tag carries a hash of what it is built from, so changing the package list rebuilds it. Building is
serialized by a file lock: two test workers never debootstrap twice. ``python -m tests.deploy.images`` builds them all.

Not guaranteed: the stand-in is not byte-for-byte the official image (Debian's Python 3.11.2 instead of the image's
own 3.11.x build in /usr/local); it has what the Dockerfile uses (``python -m venv``, pip, apt-get, useradd).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTAINERS_CONF = HERE / "containers.conf"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "python3",
    "python3-venv",
    "curl",
)
# openssh-client: the Daylily steps SSH to the head node (tests/deploy/test_systemd_daylily.py); libnss-systemd, as
# on a standard Debian install: ssh needs a name for the unit's DynamicUser uid ("No user exists for uid" without it);
# nodejs: creating a ParallelCluster runs the AWS CDK on Node.js (pcluster create-cluster requires it). Not in BASE,
# so the stand-in for the official Python image has none of them either (deploy/daylily/Dockerfile adds them).
HOST_PACKAGES = ("openssh-client", "libnss-systemd", "nodejs")
_KEY = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:10]
BASE = f"localhost/workset-monitor-deploy/debian:{SUITE}-{_KEY}"
_HOST_KEY = hashlib.sha256(f"{_KEY} {' '.join(HOST_PACKAGES)}".encode()).hexdigest()[:10]
HOST = f"localhost/workset-monitor-deploy/debian-host:{SUITE}-{_HOST_KEY}"
PYTHON = "docker.io/library/python:3.11-slim-bookworm"
STAND_IN_LABEL = "org.workset-monitor.stand-in"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workset-monitor-deploy"

STAND_IN = f"""\
FROM {BASE}
RUN ln -s /usr/bin/python3 /usr/local/bin/python
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
LABEL {STAND_IN_LABEL}="{_KEY}"
CMD ["python3"]
"""


def env() -> dict[str, str]:
    """The environment every podman call runs with: the project's containers.conf, not the machine's."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout_s: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run podman with the project's settings; output captured as text unless ``stdout``/``stderr`` are given."""
    if "stdout" not in kw and "stderr" not in kw:
        kw["capture_output"] = True
    result = subprocess.run(["podman", *args], env=env(), text=True, timeout=timeout_s, check=False, **kw)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr or ''}"[-4000:])
    return result  # type: ignore[no-any-return]


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _say(text: str) -> None:
    print(f"deploy-test images: {text}", file=sys.stderr, flush=True)


def ensure_base() -> str:
    """``BASE``, built by debootstrap once per machine (~1 min, ~300 MB)."""
    with _locked():
        if exists(BASE):
            return BASE
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="wm-rootfs-", dir="/var/tmp") as tmp:
            root = Path(tmp, "root")
            _say(f"debootstrap {SUITE} with {', '.join(PACKAGES)} (once per machine)")
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=1200,
            )
            shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            podman("import", "--change", 'CMD ["/sbin/init"]', "-", BASE, stdin=tar.stdout)
            assert tar.wait() == 0, "tar of the rootfs failed"
        _say(f"{BASE} built in {time.monotonic() - started:.0f} s")
        return BASE


def ensure_host() -> str:
    """``HOST``: ``BASE`` plus ``HOST_PACKAGES`` from Debian's mirror (once per machine)."""
    ensure_base()
    with _locked():
        if exists(HOST):
            return HOST
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="wm-host-") as tmp:
            Path(tmp, "Containerfile").write_text(
                f"FROM {BASE}\n"
                "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                f"--no-install-recommends {' '.join(HOST_PACKAGES)} >/dev/null && rm -rf /var/lib/apt/lists/*\n"
                'CMD ["/sbin/init"]\n'
            )
            podman("build", "--pull=never", "--network=host", "--layers=false", "-t", HOST, tmp, timeout_s=1200)
        _say(f"{HOST} built in {time.monotonic() - started:.0f} s (with {', '.join(HOST_PACKAGES)})")
        return HOST


def ensure_python() -> str:
    """``PYTHON``: the stand-in for the official image (built from ``BASE`` when missing or out of date)."""
    ensure_base()
    with _locked():
        if exists(PYTHON):
            label = podman("image", "inspect", "--format", f'{{{{index .Labels "{STAND_IN_LABEL}"}}}}', PYTHON)
            found = label.stdout.strip()
            if found in (_KEY, "<no value>", ""):
                if found != _KEY:
                    _say(f"{PYTHON} exists and is not our stand-in: using it as it is")
                return PYTHON
        with tempfile.TemporaryDirectory(prefix="wm-stand-in-") as tmp:
            Path(tmp, "Containerfile").write_text(STAND_IN)
            podman("build", "--pull=never", "--network=none", "--layers=false", "-t", PYTHON, tmp)
        _say(f"{PYTHON} built as a local stand-in from {BASE}")
        return PYTHON


def pip_mounts() -> list[str]:
    """``--volume`` options (read-only, same path) for this machine's pip configuration: the files ``pip config
    debug`` lists and every local path they or the PIP_* variables name (CA bundle, constraints, local indexes), so a
    ``RUN pip install`` in ``podman build`` reaches the package index the way pip on this machine does."""
    debug = subprocess.run(
        [sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True, check=True
    ).stdout
    paths: set[str] = set()
    for raw in debug.splitlines():
        line = raw.strip()
        if line.endswith(", exists: True"):
            paths.add(line.removesuffix(", exists: True"))
        elif ": " in line or "=" in line:
            value = line.split(": ", 1)[1] if ": " in line else line.split("=", 1)[1]
            for word in value.strip("'\"").split():
                path = word.removeprefix("file://").rstrip("/")
                if path.endswith("/simple"):  # a local index links to its files beside it: ../files/...
                    path = path.removesuffix("/simple")
                if path.startswith("/") and Path(path).exists():
                    paths.add(path)
    return [f"--volume={path}:{path}:ro" for path in sorted(paths)]


if __name__ == "__main__":
    ensure_base()
    ensure_host()
    ensure_python()
