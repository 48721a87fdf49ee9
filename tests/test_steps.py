"""Steps as real child processes: outcomes, timeouts, killing whole process trees, placeholders, output tails."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from monitor import steps
from monitor.clock import SystemClock
from monitor.config import StepConfig
from monitor.steps import TAIL_BYTES, Outcome, Result, Runner
from tests.conftest import run

VALUES = {
    "workset_id": "ws-1",
    "bucket": "lab",
    "prefix": "w/ws-1/",
    "s3_uri": "s3://lab/w/ws-1/",
    "attempt": 2,
    "epoch": 7,
}


def step(
    code: str, *, kind: str = "exec", timeout_s: float = 30, interval_s: float = 0.1, args: tuple[str, ...] = ()
) -> StepConfig:
    return StepConfig(
        name="s",
        command=[sys.executable, "-c", code, *args],
        kind=kind,
        timeout_s=timeout_s,  # type: ignore[arg-type]
        interval_s=interval_s,
    )


def go(config: StepConfig, *, stop: asyncio.Event | None = None, kill_grace_s: float = 2.0) -> Result:
    runner = Runner(SystemClock(), base_env=dict(os.environ), kill_grace_s=kill_grace_s)

    async def main() -> Result:
        return await runner.run(config, VALUES, stop=stop or asyncio.Event())

    return run(main())


@pytest.mark.parametrize(
    ("code", "outcome", "exit_code"),
    [
        ("print('ok')", Outcome.DONE, 0),
        ("import sys; print('busy'); sys.exit(75)", Outcome.TEMPORARY, 75),
        ("import sys; sys.exit(3)", Outcome.FAILED, 3),
        ("raise SystemExit('boom')", Outcome.FAILED, 1),
    ],
)
def test_exit_codes_decide_the_outcome(code: str, outcome: Outcome, exit_code: int) -> None:
    result = go(step(code))
    assert (result.outcome, result.exit_code) == (outcome, exit_code)


def test_placeholders_and_environment_reach_the_step_without_a_shell() -> None:
    code = (
        "import os, sys; print(sys.argv[1:]); "
        "print(*(os.environ[k] for k in ('WORKSET_ID','WORKSET_BUCKET','WORKSET_PREFIX','WORKSET_S3_URI',"
        "'WORKSET_ATTEMPT','WORKSET_EPOCH','WORKSET_STEP')))"
    )
    result = go(step(code, args=("{workset_id}", "{s3_uri}", "$(id);`x`", "{epoch}")))
    assert "['ws-1', 's3://lab/w/ws-1/', '$(id);`x`', '7']" in result.tail
    assert "ws-1 lab w/ws-1/ s3://lab/w/ws-1/ 2 7 s" in result.tail


def test_a_step_that_runs_too_long_is_killed_and_counts_as_temporary() -> None:
    started = time.monotonic()
    result = go(step("import time; print('working'); time.sleep(60)", timeout_s=0.5))
    assert result.outcome is Outcome.TEMPORARY and result.exit_code is None
    assert time.monotonic() - started < 5 and "timed out" in result.describe("s")


def test_stopping_kills_the_whole_process_tree(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write('%d %d' % (os.getpid(), child.pid))\n"
        "time.sleep(60)\n"
    )
    stop = asyncio.Event()

    async def main() -> Result:
        runner = Runner(SystemClock(), base_env=dict(os.environ), kill_grace_s=1)
        task = asyncio.create_task(runner.run(step(code), VALUES, stop=stop))
        await _appears(pids)
        stop.set()
        return await task

    result = run(main())
    assert result.outcome is Outcome.STOPPED
    for pid in map(int, pids.read_text().split()):
        assert _dies(pid), f"process {pid} survived"


def test_a_step_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(ready)!r}, 'w'); time.sleep(60)"
    )
    stop = asyncio.Event()

    async def main() -> Result:
        runner = Runner(SystemClock(), base_env=dict(os.environ), kill_grace_s=0.5)
        task = asyncio.create_task(runner.run(step(code), VALUES, stop=stop))
        await _appears(ready)
        stop.set()
        return await task

    started = time.monotonic()
    assert run(main()).outcome is Outcome.STOPPED
    assert time.monotonic() - started < 5


def test_leftover_background_processes_do_not_hang_the_runner(tmp_path: Path) -> None:
    pid_file = tmp_path / "bg"
    code = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('left a child behind')"
    )
    started = time.monotonic()
    result = go(step(code), kill_grace_s=1)
    assert result.outcome is Outcome.DONE and time.monotonic() - started < 5
    assert _dies(int(pid_file.read_text()))


def test_a_poll_step_runs_until_done(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    code = (
        f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) if p.exists() else 0; "
        "p.write_text(str(n + 1)); print('check', n); sys.exit(0 if n >= 2 else 75)"
    )
    result = go(step(code, kind="poll"))
    assert (result.outcome, result.runs) == (Outcome.DONE, 3)


@pytest.mark.parametrize(
    ("code", "outcome"), [("import sys; sys.exit(75)", Outcome.TEMPORARY), ("import sys; sys.exit(4)", Outcome.FAILED)]
)
def test_a_poll_step_ends_on_failure_or_its_overall_timeout(code: str, outcome: Outcome) -> None:
    result = go(step(code, kind="poll", timeout_s=1.5, interval_s=0.1))
    assert result.outcome is outcome
    if outcome is Outcome.TEMPORARY:  # the deadline falls between two runs or (on a busy machine) during one
        assert result.runs >= 2 and result.exit_code is None
        assert result.describe("s").startswith("step s timed out"), result


def test_the_output_tail_is_bounded_and_long_lines_are_fine() -> None:
    result = go(step("import sys; sys.stdout.write('x' * 300000); print(); [print('line', i) for i in range(5000)]"))
    assert result.outcome is Outcome.DONE
    assert len(result.tail) <= TAIL_BYTES and result.tail.endswith("line 4999")


def test_a_missing_program_is_a_failure_not_a_crash() -> None:
    config = StepConfig(name="s", command=["/nonexistent/bin/stage"])
    result = go(config)
    assert result.outcome is Outcome.FAILED and "could not start" in result.tail


async def _appears(path: Path) -> None:
    for _ in range(400):
        if path.exists() and (path.read_text() or path.name == "ready"):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} never appeared")


def _dies(pid: int, within_s: float = 3.0) -> bool:
    """Whether ``pid`` is gone within a moment (a killed process closes its pipes a little before it is reaped)."""
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes; reap it if it is ours
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return _state(pid) not in ("Z", "X")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "X"


def test_a_step_sees_only_its_own_variables_and_the_allowed_ones() -> None:
    """Steps inherited the daemon's whole environment: a webhook secret, the Linear key and AWS credentials given by
    environment reached every step, and a step that printed them put them in the log and the audit trail."""
    daemon_env = {
        "PATH": os.environ["PATH"],
        "HOME": "/var/lib/workset-monitor",
        "LANG": "C.UTF-8",
        "WORKSET_MONITOR_NOTIFY__WEBHOOK__SECRET": "hook-secret",
        "WORKSET_MONITOR_NOTIFY__LINEAR__API_KEY": "lin_api_secret",
        "WORKSET_MONITOR_CONFIG": "/etc/workset-monitor/config.toml",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials",
        "CREDENTIALS_DIRECTORY": "/run/credentials/workset-monitor.service",
        "LC_ALL": "C.UTF-8",
    }
    dump = step("import json, os; print(json.dumps(dict(os.environ), sort_keys=True))")

    def seen(**runner: Any) -> dict[str, str]:
        async def main() -> Result:
            return await Runner(SystemClock(), base_env=daemon_env, **runner).run(dump, VALUES, stop=asyncio.Event())

        result = run(main())
        assert result.outcome is Outcome.DONE, result.tail
        env = json.loads(result.tail)
        env.pop("PWD", None)  # some platforms add it
        return env

    own = {f"WORKSET_{k.upper()}": str(v) for k, v in VALUES.items() if k != "workset_id"}
    own |= {"WORKSET_ID": "ws-1", "WORKSET_STEP": "s"}
    default = {"PATH": os.environ["PATH"], "HOME": "/var/lib/workset-monitor", "LANG": "C.UTF-8"}
    assert seen() == own | default
    # An operator lists what their steps need, a prefix ending in * included; the daemon's own settings never pass.
    listed = seen(passthrough=("PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LC_*"))
    assert listed == own | {
        "PATH": os.environ["PATH"],
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "LC_ALL": "C.UTF-8",
    }


def test_the_daemon_s_settings_never_pass_whatever_their_case() -> None:
    """pydantic-settings reads WORKSET_MONITOR_* case-insensitively, so workset_monitor_notify__webhook__secret is a
    setting too: a passthrough prefix in lower case (``work*``) let it through."""
    env = {"workset_monitor_notify__webhook__secret": "HMAC", "Workset_Monitor_X": "y", "workdir": "/w"}
    assert steps.passed_on(env, ["work*", "Work*"]) == {"workdir": "/w"}
