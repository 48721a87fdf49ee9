"""A fleet of real ``workset-monitor run`` processes, for the suites that run one for minutes (chaos, soak).

What it provides: daemons with the emulator's credentials (``Daemon``); a webhook receiver that refuses a fraction of
deliveries; the systemd side of the notify protocol; the daemon's configuration, its step script, its metrics
(scraped over HTTP) and its resource use (read from /proc).

Each ``Daemon`` is a ``monitor.child.Child`` (the harness the demo and the benchmarks use too): ``stop`` returns the
exit code of a SIGTERM, or kills the daemon and its steps after the timeout and returns -9. ``Webhook.close`` and
``SystemdSocket.close`` join their threads. Not guaranteed: anything about a daemon the caller never stops — use them
in ``try/finally``.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from monitor.child import Child
from monitor.model import NOTIFIABLE_EVENTS

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_DEFAULT_REGION": "us-east-1"}


# --- what the daemons talk to -------------------------------------------------------------------------------------


class Webhook:
    """The receiving end of the webhook channel: remembers every event id and when (wall clock) it first arrived;
    refuses some deliveries."""

    def __init__(self, *, refuse: float, seed: int) -> None:
        received: collections.Counter[str] = collections.Counter()
        rng, lock = random.Random(seed), threading.Lock()
        refused = collections.Counter[str]()
        first_at: dict[str, float] = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event_id = self.headers.get("X-Workset-Monitor-Event-Id", "?")
                with lock:
                    refuse_it = rng.random() < refuse
                    (refused if refuse_it else received)[event_id] += 1
                    if not refuse_it:
                        first_at.setdefault(event_id, time.time())
                self.send_response(503 if refuse_it else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.received, self.refused, self.first_at = received, refused, first_at
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class SystemdSocket:
    """systemd's end of ``$NOTIFY_SOCKET``: a unix datagram socket; every message with the monotonic time it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.25)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, name=f"notify {path.name}", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            self.messages.extend((at, field) for field in data.decode(errors="replace").split("\n") if field)

    def times(self, field: str) -> list[float]:
        """When each message containing ``field`` (e.g. ``WATCHDOG=1``) arrived."""
        return [at for at, got in list(self.messages) if got == field]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._socket.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


# --- the daemons --------------------------------------------------------------------------------------------------


def write_step(work: Path, script: str, *args: str) -> list[str]:
    """Write a step script into ``work``; the argv list that runs it with ``args``."""
    path = work / "step.py"
    path.write_text(script)
    return [sys.executable, str(path), *args]


def write_config(
    path: Path,
    *,
    endpoint: str,
    table: str,
    bucket: str,
    prefix: str,
    step: list[str],
    hook_url: str,
    interval_s: float = 1.0,
    lease_s: float,
    heartbeat_s: float,
    sweep_s: float,
    read_timeout_s: float | None = None,
    max_concurrent: int = 3,
    max_attempts: int = 20,
    shutdown_grace_s: float = 2,
    backoff_s: tuple[float, float] = (1, 2),
    claim_s: float = 5,
    metrics: str = "",
    sns_topic_arn: str | None = None,
) -> Path:
    """A daemon's configuration: JSON logs, a webhook channel for every notifiable event (and an SNS one with
    ``sns_topic_arn``), a free metrics port, one ``exec`` step named ``record``; ``metrics`` adds lines to
    ``[metrics]``."""
    sns = f'[notify.sns]\ntopic_arn = "{sns_topic_arn}"\n' if sns_topic_arn else ""
    timeout = f"read_timeout_s = {read_timeout_s}\n" if read_timeout_s is not None else ""
    path.write_text(
        f'[aws]\nregion = "us-east-1"\nendpoint_url = "{endpoint}"\n{timeout}'
        f'[table]\nname = "{table}"\n'
        f'[scan]\nbucket = "{bucket}"\nprefixes = ["{prefix}"]\ninterval_s = {interval_s}\n'
        f"[lease]\nduration_s = {lease_s}\nheartbeat_s = {heartbeat_s}\nsweep_interval_s = {sweep_s}\n"
        f"[run]\nmax_concurrent = {max_concurrent}\nmax_attempts = {max_attempts}\n"
        f"shutdown_grace_s = {shutdown_grace_s}\n"
        f"retry_backoff_base_s = {backoff_s[0]}\nretry_backoff_max_s = {backoff_s[1]}\n"
        f"[notify]\nevents = {json.dumps(sorted(e.value for e in NOTIFIABLE_EVENTS))}\nclaim_s = {claim_s}\n"
        f'{sns}[notify.webhook]\nurl = "{hook_url}"\n'
        f"[metrics]\nport = 0\n{metrics}"  # each daemon its own free port
        '[log]\nlevel = "info"\nformat = "json"\n'
        f'[[pipeline.steps]]\nname = "record"\ncommand = {json.dumps(step)}\ntimeout_s = 60\n'
    )
    return path


@dataclass(frozen=True)
class Usage:
    """A process's resources, from /proc."""

    rss_mb: float
    fds: int
    threads: int
    cpu_s: float  # user + system, since it started


class Daemon(Child):
    """A named daemon of the fleet, with the emulator's credentials; what it counts, what it uses, pausing it."""

    def __init__(self, name: str, config: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        super().__init__(config, workdir / f"{name}.log", env=CREDENTIALS | (env or {}))
        self.name = name
        self.owner: str | None = None
        self.metrics_url: str | None = None
        self.paused: list[tuple[float, float]] = []  # (SIGSTOP, SIGCONT), time.monotonic()

    def find_owner(self) -> str | None:
        """Its lease owner id, from its start line."""
        if self.owner is None:
            owner = self.log_field("starting", "owner")
            if owner is not None and f":{self.pid}:" in owner:  # not an earlier daemon's
                self.owner = owner
        return self.owner

    def find_metrics_url(self) -> str | None:
        """``http://host:port`` of its side port, from its ``serving metrics`` line."""
        if self.metrics_url is None:
            self.metrics_url = self.side_port()
        return self.metrics_url

    def get(self, path: str, timeout_s: float = 10) -> tuple[int, str]:
        """(HTTP status, body) of a GET on its side port; status 0 when it does not answer."""
        base = self.find_metrics_url()
        if base is None:
            return 0, "no side port yet"
        try:
            with urllib.request.urlopen(base + path, timeout=timeout_s) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def counters(self) -> collections.Counter[str]:
        """Its ``workset_monitor_*`` counters and histogram counts (``name{labels}`` -> value); empty if it has not
        served them yet or does not answer."""
        status, text = self.get("/metrics", timeout_s=5)
        if status != 200:
            return collections.Counter()
        return collections.Counter(
            {
                sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
                for family in text_string_to_metric_families(text)
                if family.type in ("counter", "histogram") and family.name.startswith("workset_monitor_")
                for sample in family.samples
                if sample.name.endswith(("_total", "_count"))
            }
        )

    def usage(self) -> Usage:
        proc = Path(f"/proc/{self.process.pid}")
        status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        return Usage(
            rss_mb=int(status["VmRSS"].split()[0]) / 1024,
            fds=len(os.listdir(proc / "fd")),
            threads=int(status["Threads"]),
            cpu_s=(int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        )

    def pause(self, seconds: float) -> None:
        started = time.monotonic()
        os.kill(self.process.pid, signal.SIGSTOP)  # the daemon only: its running steps carry on, unaware
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.process.pid, signal.SIGCONT)
            self.paused.append((started, time.monotonic()))


def aws_calls(metrics_text: str) -> collections.Counter[str]:
    """``service.Operation`` -> AWS requests made (retries inside a call included: each is billed), from a scrape."""
    calls: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in ("workset_monitor_aws_requests_total", "workset_monitor_aws_retries_total"):
                calls[f"{sample.labels['service']}.{sample.labels['operation']}"] += int(sample.value)
    return calls
