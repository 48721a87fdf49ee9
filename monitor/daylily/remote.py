"""The head node over SSH: one ``ssh`` process per remote script, the script on its stdin (never in its arguments,
so no value is ever parsed twice by a shell), run by a login ``bash``.

``Unreachable`` is SSH's own failure (exit 255, or no answer in time): the step answers "temporary". Anything the
script itself exits with is the script's answer.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from monitor.sections import DaylilyConfig

SSH_FAILED = 255  # ssh's own exit status for a connection or authentication failure


class Unreachable(Exception):
    """The head node did not run the script: SSH failed, or it did not answer in time."""


@dataclass(frozen=True, slots=True)
class Answer:
    code: int  # the script's exit status
    out: str  # its stdout and stderr, interleaved as written


class HeadNode:
    def __init__(self, cfg: DaylilyConfig, address: str) -> None:
        self.address = address
        self._cfg = cfg

    def argv(self) -> list[str]:
        """The ``ssh`` command line. ``ssh_extra_args`` come first: for ``-o`` options the first value wins, so an
        operator's options override the defaults that follow them."""
        cfg = self._cfg
        identity = ["-i", cfg.ssh_identity_file] if cfg.ssh_identity_file else []
        return [
            "ssh",
            *cfg.ssh_extra_args,
            *identity,
            "-p",
            str(cfg.ssh_port),
            "-o",
            "BatchMode=yes",  # never prompt: a step has no terminal
            "-o",
            f"ConnectTimeout={max(1, round(cfg.ssh_connect_timeout_s))}",
            # Ephemeral clusters reuse addresses with new host keys, as the old monitor assumed too.
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            f"{cfg.ssh_user}@{self.address}",
            "bash -l -s",
        ]

    def run(self, script: str, *, timeout_s: float | None = None) -> Answer:
        """Run ``script`` on the head node; its exit status and output. Raises ``Unreachable``."""
        limit = self._cfg.ssh_command_timeout_s if timeout_s is None else timeout_s
        try:
            done = subprocess.run(  # noqa: S603 - a fixed argv; the script goes to stdin
                self.argv(),
                input=script,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Unreachable(f"{self.address}: no answer in {limit:g} s") from None
        except OSError as exc:
            raise Unreachable(f"cannot run ssh: {exc}") from None
        if done.returncode == SSH_FAILED:
            last = done.stdout.strip().splitlines()[-1:] or ["ssh exited 255"]
            raise Unreachable(f"{self._cfg.ssh_user}@{self.address}:{self._cfg.ssh_port}: {last[0]}")
        return Answer(done.returncode, done.stdout)
