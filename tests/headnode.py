"""A Daylily head node on loopback for the tests: a real ``sshd`` (Debian's openssh-server, installed by ``make``) on
127.0.0.1 with keys made for the test, its own home and tmux server (``HOME``, ``TMUX_TMPDIR``), and a stand-in for
the pipeline's run command that behaves as Daylily's does: it writes ``daylily.successful_run`` or
``daylily.failed_run`` in its directory, logs to its output, and stops on Ctrl-C. Every run appends a line to ``runs``
(so a test can say "exactly one run")."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"

# The stand-in run. Its behaviour is read from the file named by its first argument when it starts:
# "succeed S" (work S seconds, then daylily.successful_run), "fail S" (then daylily.failed_run), "vanish S" (exit
# without a sentinel), "hang" (until Ctrl-C), "until FILE" (work until FILE exists, then daylily.successful_run).
FAKE_RUN = r"""#!/bin/bash
mode=$(cat "$1"); runs=$2
echo "$(date +%s) epoch=${WORKSET_EPOCH:-} id=${WORKSET_ID:-} pwd=$PWD args=${*:3}" >> "$runs"
trap 'echo "dy-r: interrupted (SIGINT), stopping the workflow"; exit 130' INT
set -- $mode
echo "dy-r: starting the workflow ($mode)"
case $1 in
  succeed) sleep "$2"; echo "dy-r: all jobs done"; touch daylily.successful_run ;;
  fail) sleep "$2"; for i in $(seq 1 60); do echo "rule align_sample_$i: done"; done
        echo "Error in rule call_variants: exit status 137"; touch daylily.failed_run; exit 1 ;;
  vanish) sleep "$2"; echo "dy-r: killed"; exit 137 ;;
  hang) while true; do sleep 0.2; done ;;
  until) while [ ! -e "$2" ]; do sleep 0.2; done; echo "dy-r: all jobs done"; touch daylily.successful_run ;;
esac
"""


@dataclass
class HeadNodeSite:
    port: int
    identity: Path
    root: Path  # a scratch directory: the pipeline directories live under root / "fsx"
    tmux_dir: Path

    @property
    def workdir(self) -> Path:
        return self.root / "fsx"

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = os.environ | {"TMUX_TMPDIR": str(self.tmux_dir)}
        return subprocess.run(["tmux", *args], env=env, capture_output=True, text=True, check=False)

    def sessions(self) -> list[str]:
        done = self.tmux("list-sessions", "-F", "#{session_name}")
        return done.stdout.split() if done.returncode == 0 else []

    def pipeline_dir(self, workset_id: str, mode: str) -> Path:
        """The workset's pipeline directory, with the stand-in run told to behave as ``mode``."""
        pdir = self.workdir / workset_id
        pdir.mkdir(parents=True, exist_ok=True)
        self.mode(workset_id, mode)
        return pdir

    def mode(self, workset_id: str, mode: str) -> None:
        """Tell the stand-in run how to behave for ``workset_id`` wherever its directory is (made by a clone)."""
        (self.root / f"{workset_id}.mode").write_text(mode)

    def run_command(self) -> str:
        """The [daylily] run_command: the stand-in, its mode file named by the workset id it is given."""
        return f'{self.root}/fake-day-run {self.root}/"$WORKSET_ID".mode {self.root}/"$WORKSET_ID".runs'

    def runs(self, workset_id: str) -> list[str]:
        path = self.root / f"{workset_id}.runs"
        return path.read_text().splitlines() if path.exists() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def head_node(root: Path) -> Iterator[HeadNodeSite]:
    if not Path(SSHD).exists() or shutil.which("tmux") is None:
        raise RuntimeError("the head-node tests need sshd and tmux: `make tools` installs openssh-server and tmux")
    root.mkdir(parents=True, exist_ok=True)
    keys = root / "keys"
    keys.mkdir()
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    (keys / "authorized_keys").chmod(0o600)
    tmux_dir = root / "tmux"
    tmux_dir.mkdir()
    home = root / "home"  # the ssh user's home on the head node (its ~/.workset-monitor), not this machine's
    home.mkdir()
    fake = root / "fake-day-run"
    fake.write_text(FAKE_RUN)
    fake.chmod(0o755)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"UsePAM no\nStrictModes no\nPidFile {root / 'sshd.pid'}\n"
        f"SetEnv TMUX_TMPDIR={tmux_dir} HOME={home}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = (root / "sshd.log").open("w")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    site = HeadNodeSite(port=port, identity=keys / "user", root=root, tmux_dir=tmux_dir)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or sshd.poll() is not None:
                raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()}")
            time.sleep(0.05)
        yield site
    finally:
        site.tmux("kill-server")
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(timeout=10)
        log.close()
