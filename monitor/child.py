"""``workset-monitor run`` as a child process: the one harness the demo, the test suites, chaos, soak and the
benchmarks start daemons with.

What it provides: the daemon in a session of its own, logging (JSON) to a file of its own, with nothing inherited
that could change its behaviour (``WORKSET_MONITOR_*`` settings, a ``NOTIFY_SOCKET`` or ``WATCHDOG_USEC`` of the
caller's own; pass them in ``env`` to mean them); fields of its log lines (its owner id, its side port's URL).

Guaranteed: ``stop`` returns the exit code of a SIGTERM, or kills the daemon and every process it started (its
steps run in process groups of their own, so a group kill would miss them) after the timeout and returns -9, as
systemd does to a unit's control group. Not guaranteed: anything about a child the caller never stops — use it in
``try/finally``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

NOT_INHERITED = ("WORKSET_MONITOR_", "NOTIFY_SOCKET", "WATCHDOG_")


class Child:
    def __init__(
        self, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
        with log_path.open("a") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
                [sys.executable, "-m", "monitor", "run", "--config", str(config)],
                env=inherited | dict(env or {}),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.killed_at: float | None = None  # time.monotonic() once its whole tree is dead

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()
        return ""

    def log_field(self, event: str, key: str) -> str | None:
        """``key`` of the latest log line whose event is ``event`` (None until there is one); a log file appended to
        may hold an earlier daemon's lines before this one's."""
        return last_field(self.log(), event, key)

    def side_port(self, timeout_s: float = 0.0) -> str | None:
        """``http://host:port`` of its side port (``/metrics``, ``/healthz``, ``/readyz``), from its ``serving
        metrics`` line; waits up to ``timeout_s`` for it while the daemon runs."""
        deadline = time.monotonic() + timeout_s
        while True:
            url = self.log_field("serving metrics", "url")
            if url is not None:
                return url.removesuffix("/metrics")
            if time.monotonic() >= deadline or not self.running():
                return None
            time.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        """Its exit code, once it has exited (``subprocess.TimeoutExpired`` after ``timeout_s``)."""
        return self.process.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and its exit code; -9 when it had to be killed after ``timeout_s``."""
        if not self.running():
            return self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """SIGKILL the daemon and every process it started. The daemon is frozen first: a step it started between
        our listing of its tree and its death would escape the kill and run on as an orphan."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGSTOP)
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.killed_at = time.monotonic()


def last_field(log: str, event: str, key: str) -> str | None:
    """``key`` of the last JSON line of ``log`` whose event is ``event``; searched from the end (logs grow long, and
    callers poll)."""
    marker, end = f'"{event}"', len(log)
    while (at := log.rfind(marker, 0, end)) >= 0:
        start, stop = log.rfind("\n", 0, at) + 1, log.find("\n", at)
        with contextlib.suppress(ValueError):
            record = json.loads(log[start : stop if stop >= 0 else len(log)])
            if isinstance(record, dict) and record.get("event") == event and key in record:
                return str(record[key])
        end = start
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: Linux)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
