"""A Debian host with systemd 252 as PID 1, in a podman container on the host's network, and an operator's shell on
it that keeps its environment and working directory from one command to the next (``export``, ``cd``), as a terminal
does. Every command runs with ``podman exec``; nothing is edited in what the operator installs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from tests.deploy.images import podman

CHECKOUT = "/path/to/workset-monitor"  # the guide's own placeholder, made real: the checkout is copied there
_SESSION = "/root/.operator-session"


@dataclass
class SystemdHost:
    name: str
    unit: str = "workset-monitor"

    def sh(
        self,
        script: str,
        *,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout_s: float = 180,
        tty: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root; output captured (``tty``: on a terminal, as `systemctl edit` requires)."""
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()] + (["--tty"] if tty else [])
        result = podman("exec", *flags, self.name, "bash", "-c", script, check=False, timeout_s=timeout_s)
        if check and result.returncode != 0:
            journal = self.sh("journalctl --no-pager --output=cat -n 40", check=False).stdout
            raise AssertionError(
                f"on the host: {script!r} exited {result.returncode}:\n{result.stdout}{result.stderr}\n{journal}"
            )
        return result

    def operator(
        self, text: str, *, env: dict[str, str], timeout_s: float = 300, tty: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """One command typed into the operator's root shell (its exports and ``cd`` carry over); output captured."""
        script = (
            f"[ -f {_SESSION}.env ] && . {_SESSION}.env\n"
            f'cd "$(cat {_SESSION}.cwd 2>/dev/null || echo {CHECKOUT})"\n'
            "set -o pipefail\n"
            f"{text}\n"
            "rc=$?\n"
            f"export -p > {_SESSION}.env; pwd > {_SESSION}.cwd\n"
            "exit $rc\n"
        )
        return self.sh(script, env=env, check=False, timeout_s=timeout_s, tty=tty)

    def show(self, *properties: str) -> dict[str, str]:
        out = self.sh(f"systemctl show --property={','.join(properties)} {self.unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.sh(f"journalctl --unit={self.unit} --no-pager --output=cat").stdout

    def write(self, path: str, text: str) -> None:
        """Write a file's content in place (an editor keeps the file's owner and mode)."""
        result = podman("exec", "-i", self.name, "bash", "-c", f"cat > {path}", input=text, check=False)
        assert result.returncode == 0, result.stderr
