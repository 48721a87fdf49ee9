"""`workset-monitor run` as a real child process against the emulator: systemd notify, SIGTERM, SIGKILL and
takeover by a second daemon, SIGHUP with a broken file, and the demo."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import cli
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.child import Child
from monitor.config import TableConfig
from monitor.model import EventType, State, Workset, WorksetId
from tests.conftest import REGION, ROOT, run
from tests.fake_http import FakeServer, Reply
from tests.lab import BUCKET, Lab
from tests.test_step_logs import BIG, expected_big

TABLE = "daemon-test"


@pytest.fixture
def env(aws_endpoint: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    daemons: list[Child] = []

    def start(config: Path, name: str = "daemon", **kw: Any) -> Child:
        daemon = Child(config, tmp_path / f"{name}.log", cwd=ROOT, **kw)
        daemons.append(daemon)
        return daemon

    yield {
        "lab": Lab(s3),
        "store": DynamoStore(dynamodb, TABLE),
        "tmp": tmp_path,
        "endpoint": aws_endpoint,
        "start": start,
    }
    for daemon in daemons:
        if daemon.running():
            daemon.kill()


def write_config(
    env: dict[str, Any], step_code: str, *, name: str = "config.toml", extra: str = "", metrics_port: int = 0
) -> Path:
    path: Path = env["tmp"] / name
    command = json.dumps([sys.executable, "-c", step_code])
    path.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{env["endpoint"]}"\nmax_attempts = 2\n'
        f'[table]\nname = "{TABLE}"\n[scan]\nbucket = "{BUCKET}"\nprefixes = ["w/"]\ninterval_s = 0.5\n'
        "[lease]\nduration_s = 3\nheartbeat_s = 0.75\nsweep_interval_s = 0.5\ngrace_s = 1\n"
        "[run]\nshutdown_grace_s = 1\nretry_backoff_base_s = 1\nretry_backoff_max_s = 1\n"
        f'[log]\nformat = "json"\n[metrics]\nport = {metrics_port}\nqueue_refresh_s = 1\nfinished_refresh_s = 1\n'
        f'{extra}\n[[pipeline.steps]]\nname = "main"\ncommand = {command}\n'
    )
    return path


def until(check: Callable[[], Any], timeout_s: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get(env: dict[str, Any], name: str) -> Workset | None:
    return run(env["store"].get(WorksetId(name)))


def test_systemd_hears_ready_watchdog_and_stopping(env: dict[str, Any]) -> None:
    sock_path = env["tmp"] / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    daemon = env["start"](
        write_config(env, "print(1)"), env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    )
    messages: list[str] = []
    try:
        while messages.count("WATCHDOG=1") < 3:
            messages += sock.recv(4096).decode().split("\n")
        assert "READY=1" in messages and messages.index("READY=1") < messages.index("WATCHDOG=1")
        assert any(m.startswith("STATUS=serving") for m in messages)
        daemon.signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages += sock.recv(4096).decode().split("\n")
    finally:
        sock.close()
    assert daemon.wait() == 0


def test_sigterm_during_a_long_step_gives_the_workset_back_and_exits_0(env: dict[str, Any]) -> None:
    env["lab"].workset("ws-long", prefix="w/")
    daemon = env["start"](write_config(env, "import time; print('working', flush=True); time.sleep(60)"))
    until(lambda: (ws := get(env, "ws-long")) and ws.current_step == "main", what="the step to start")
    stopped_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert time.monotonic() - stopped_at < 1 + 5 + 3  # grace + kill grace + a release write
    ws = get(env, "ws-long")
    assert ws is not None and (ws.state, ws.attempts, ws.lease) == (State.READY, 0, None)
    assert '"shutdown: drain"' in daemon.log() and '"stopped"' in daemon.log()


def test_after_sigkill_a_second_daemon_takes_the_workset_over_and_completes_it(env: dict[str, Any]) -> None:
    pids = env["tmp"] / "pids"
    pids.mkdir()
    code = (
        f"import os, time; open(os.path.join({str(pids)!r}, os.environ['WORKSET_EPOCH']), 'w')"
        ".write(str(os.getpid())); time.sleep(60 if os.environ['WORKSET_EPOCH'] == '1' else 0)"
    )
    config = write_config(env, code)
    env["lab"].workset("ws-crash", prefix="w/")
    first = env["start"](config, name="first")
    until((pids / "1").exists, what="the first attempt's step")
    first.signal(signal.SIGKILL)
    first.wait()
    os.killpg(int((pids / "1").read_text()), signal.SIGKILL)  # under systemd the control group goes with it
    killed_at = time.monotonic()
    second = env["start"](config, name="second")
    ws = until(
        lambda: (w := get(env, "ws-crash")) and w.state is State.COMPLETE and w, timeout_s=40, what="the takeover"
    )
    assert time.monotonic() - killed_at < 3 + 1 + 0.5 + 1 + 10  # lease + grace + sweep + backoff + slack
    assert ws.epoch == 2
    history = run(env["store"].history(WorksetId("ws-crash")))
    assert [e.type for e in history] == [
        EventType.REGISTERED,
        EventType.STARTED,
        EventType.LEASE_EXPIRED,
        EventType.STARTED,
        EventType.STEP_FINISHED,
        EventType.COMPLETE,
    ]
    assert history[-1].actor != history[1].actor
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_sighup_with_a_broken_file_keeps_the_daemon_running_on_the_old_one(env: dict[str, Any]) -> None:
    config = write_config(env, "print('ok')")
    daemon = env["start"](config)
    until(lambda: '"starting"' in daemon.log(), what="the daemon to start")
    good = config.read_text()
    config.write_text(good + "\n[run]\nmax_concurrent = 'many'\n")
    daemon.signal(signal.SIGHUP)
    until(lambda: "config reload failed" in daemon.log(), what="the reload to fail")
    env["lab"].workset("ws-after", prefix="w/")
    until(lambda: (ws := get(env, "ws-after")) and ws.state is State.COMPLETE, what="work to go on")
    config.write_text(good.replace('format = "json"', 'format = "json"\nlevel = "debug"'))
    daemon.signal(signal.SIGHUP)
    until(lambda: '"config reloaded"' in daemon.log(), what="a good reload")
    assert daemon.process.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_the_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--until-idle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo finished: every workset reached its expected state." in result.stdout
    assert "ws-flaky-cluster    complete  normal    2" in result.stdout
    assert re.search(r"ws-flaky-cluster +complete +normal +2 +[1-9][0-9]*\b", result.stdout)  # both attempts' logs


def test_a_notification_survives_a_daemon_killed_while_delivering_it(env: dict[str, Any]) -> None:
    server = FakeServer().start()
    try:
        server.script = [Reply(delay_s=3)]  # the first delivery hangs: the daemon dies in the middle of it
        notify = f'[notify]\nevents = ["error"]\nclaim_s = 2\n[notify.webhook]\nurl = "{server.url}"\ntimeout_s = 30\n'
        config = write_config(env, "import sys; print('bad reference'); sys.exit(2)", extra=notify)
        env["lab"].workset("ws-fails", prefix="w/")
        first = env["start"](config, name="first")
        until(lambda: server.requests, what="the first delivery attempt")
        first.signal(signal.SIGKILL)
        first.wait()
        [pending] = run(env["store"].pending_events(limit=10))  # committed, not delivered
        assert (pending.workset_id, pending.type) == ("ws-fails", EventType.ERROR)
        second = env["start"](config, name="second")
        until(lambda: not run(env["store"].pending_events(limit=10)), what="the delivery after the restart")
        history = run(env["store"].history(WorksetId("ws-fails")))
        error = next(e for e in history if e.type is EventType.ERROR)
        assert error.notified == {"webhook": "sent"}
        ids = {r.headers["x-workset-monitor-event-id"] for r in server.requests}
        assert ids == {error.event_id} and len(server.requests) >= 2  # the same event id: none lost
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
    finally:
        server.stop()
        time.sleep(3)  # the hung request's thread finishes its delayed reply


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_real_prometheus_scrapes_the_daemon(env: dict[str, Any]) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: `make tools` installs Debian's prometheus package"
    port, prom_port = free_port(), free_port()
    for name in ("ws-a", "ws-b", "ws-c"):
        env["lab"].workset(name, prefix="w/")
    daemon = env["start"](write_config(env, "print('ok')", metrics_port=port))
    until(
        lambda: all((w := get(env, n)) and w.state is State.COMPLETE for n in ("ws-a", "ws-b", "ws-c")),
        what="the worksets to complete",
    )
    config = env["tmp"] / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: workset-monitor\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={env['tmp'] / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def query(expr: str) -> float | None:
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    result = json.load(response)["data"]["result"]
            except OSError:
                return None
            return float(result[0]["value"][1]) if result else None

        until(lambda: query('up{job="workset-monitor"}') == 1, timeout_s=60, what="Prometheus to scrape the daemon")
        until(
            lambda: query('sum(workset_monitor_worksets{state="complete"})') == 3,
            timeout_s=60,
            what="the queue gauge in Prometheus",
        )
        assert query('sum(workset_monitor_worksets{state="ready"})') == 0
        assert (query('sum(workset_monitor_transitions_total{to_state="complete"})') or 0) == 3
        assert query("workset_monitor_config_last_reload_successful") == 1
    finally:
        server.terminate()
        server.wait(timeout=20)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    starting = next(json.loads(line) for line in daemon.log().splitlines() if '"event": "starting"' in line)
    assert {"version", "config", "table", "prefixes", "owner"} <= set(starting)
    stopped = next(json.loads(line) for line in daemon.log().splitlines() if '"event": "stopped"' in line)
    assert stopped["endings"] == {"complete": 3} and stopped["exit_code"] == 0


def test_secrets_never_reach_the_log(env: dict[str, Any]) -> None:
    server = FakeServer().start()
    server.default = Reply(401, {"errors": [{"message": "Authentication required"}]})
    secrets = {
        "WORKSET_MONITOR_NOTIFY__LINEAR__API_KEY": "lin_api_TOPSECRETKEY",
        "WORKSET_MONITOR_NOTIFY__WEBHOOK__URL": "http://127.0.0.1:9/services/T000/B000/XOXBTOKENSECRET",
        "WORKSET_MONITOR_NOTIFY__WEBHOOK__SECRET": "HMACSECRETVALUE",
    }
    try:
        extra = f'[notify]\nevents = ["error"]\n[notify.linear]\nteam_id = "t"\napi_url = "{server.url}"\n'
        config = write_config(env, "import sys; sys.exit(2)", extra=extra)
        env["lab"].workset("ws-secret", prefix="w/")
        daemon = env["start"](config, env={**secrets, "WORKSET_MONITOR_LOG__LEVEL": "debug"})
        until(lambda: (ws := get(env, "ws-secret")) and ws.state is State.ERROR, what="the failure")
        until(lambda: '"notification refused"' in daemon.log(), what="the notification attempts")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        server.stop()
    log = daemon.log()
    assert "Linear refused the API key" in log  # the failure itself is reported...
    for value in ("TOPSECRETKEY", "XOXBTOKENSECRET", "HMACSECRETVALUE"):
        assert value not in log, f"a secret ({value}) reached the log"  # ...but never the secrets


def test_a_step_that_prints_its_environment_leaks_no_secret(env: dict[str, Any]) -> None:
    """Steps inherited the daemon's whole environment: a step printing it put the webhook secret and the AWS keys
    into the log and, through its output tail, the audit trail in the table."""
    secrets = {
        "WORKSET_MONITOR_NOTIFY__WEBHOOK__URL": "http://127.0.0.1:9/hooks/XOXBTOKENSECRET",
        "WORKSET_MONITOR_NOTIFY__WEBHOOK__SECRET": "HMACSECRETVALUE",
        "AWS_SECRET_ACCESS_KEY": "AWSSECRETVALUE",  # the daemon's own identity: the emulator takes any key
    }
    dump = (  # one variable a line (no braces: they would be placeholders); 75 first, so a retry's event has it too
        "import os, sys; print(*(k + '=' + v for k, v in sorted(os.environ.items())), sep=chr(10)); "
        "sys.exit(0 if os.environ['WORKSET_ATTEMPT'] == '2' else 75)"
    )
    config = write_config(env, dump)
    env["lab"].workset("ws-env", prefix="w/")
    daemon = env["start"](config, env=secrets | {"WORKSET_MONITOR_RUN__STEP_LOGS": "s3"})
    until(lambda: (ws := get(env, "ws-env")) and ws.state is State.COMPLETE, what="the second attempt")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    history = subprocess.run(
        [sys.executable, "-m", "monitor", "history", "ws-env", "--json", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **secrets},
        check=True,
    ).stdout
    table = boto3.client("dynamodb", region_name=REGION, endpoint_url=env["endpoint"])
    items = json.dumps(table.scan(TableName=TABLE)["Items"])
    step_log = logs_cli(config, "ws-env").stdout.decode()  # both attempts' full output, from S3
    assert step_log.count("WORKSET_EPOCH=") == 2
    places = (("the log", daemon.log()), ("history --json", history), ("the table", items), ("the step log", step_log))
    for where, text in places:
        assert "WORKSET_EPOCH" in text, where  # it printed its environment there
        for value in ("XOXBTOKENSECRET", "HMACSECRETVALUE", "AWSSECRETVALUE"):
            assert value not in text, f"a secret ({value}) reached {where}"


def test_fleet_shows_who_is_alive_what_each_runs_and_a_killed_daemon_s_work_taken_over(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Three daemons, two worksets: `fleet` lists three alive, two of them with their workset and step. SIGKILL one:
    within two presence intervals it shows as silent, and once its lease is past, its workset as taken over by the
    daemon that had none. A clean stop removes a daemon's presence item."""
    pids = env["tmp"] / "pids"
    pids.mkdir()
    code = (
        f"import os, time; e = os.environ; open(os.path.join({str(pids)!r}, e['WORKSET_ID'] + '-' + e['WORKSET_EPOCH'])"
        ", 'w').write(str(os.getpid())); time.sleep(60 if e['WORKSET_EPOCH'] == '1' else 8)"
    )
    config = write_config(env, code)
    config.write_text(config.read_text().replace("[run]\n", "[run]\nmax_concurrent = 1\npresence_interval_s = 1\n"))
    for name in ("ws-a", "ws-b"):
        env["lab"].workset(name, prefix="w/")
    daemons = {name: env["start"](config, name=name) for name in ("one", "two", "three")}

    def fleet() -> dict[str, Any]:
        assert cli.main(["--config", str(config), "fleet", "--json"]) == 0
        return {d["pid"]: d for d in json.loads(capsys.readouterr().out)["daemons"]}

    def busy(listed: dict[str, Any]) -> dict[int, str]:
        return {pid: d["holdings"][0]["workset_id"] for pid, d in listed.items() if d["holdings"]}

    listed = until(lambda: (f := fleet()) and len(busy(f)) == 2 and len(f) == 3 and f, what="three daemons, two busy")
    assert {d["status"] for d in listed.values()} == {"alive"}
    assert sorted(busy(listed).values()) == ["ws-a", "ws-b"]
    # one of them does the chores (the S3 scan, the sweep, the queue gauges), and `fleet` names it
    assert cli.main(["--config", str(config), "fleet", "--json"]) == 0
    chores = json.loads(capsys.readouterr().out)["chores"]
    assert chores["owner"] in {d["owner"] for d in listed.values()} and chores["renewals"] >= 0
    assert cli.main(["--config", str(config), "fleet"]) == 0
    assert f"chores (S3 scan, sweep, queue gauges): {chores['owner']}, renewed " in capsys.readouterr().out
    until(lambda: all(d["holdings"][0]["step"] == "main" for d in fleet().values() if d["holdings"]), what="steps")
    victim = next(child for child in daemons.values() if child.pid in busy(listed))
    taken = busy(listed)[victim.pid]
    victim.signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    os.killpg(int((pids / f"{taken}-1").read_text()), signal.SIGKILL)  # under systemd the control group goes with it
    until(lambda: fleet()[victim.pid]["status"] == "silent", timeout_s=10, what="the killed daemon to show silent")
    assert time.monotonic() - killed_at <= 2 * 1 + 5 + 1  # two intervals + the allowance + a fleet call
    shown = until(
        lambda: (h := fleet()[victim.pid]["holdings"][0])["now"].startswith("taken over by ") and h,
        timeout_s=20,
        what="the takeover to show",
    )
    idle = next(child for child in daemons.values() if child.pid not in busy(listed))
    assert shown["workset_id"] == taken and shown["now"].split(":")[1] == str(idle.pid)
    # the new holder shows it too, from its next presence write (every second here)
    until(lambda: busy(fleet()).get(idle.pid) == taken, timeout_s=5, what="the new holder to show the workset")
    idle.signal(signal.SIGTERM)
    assert idle.wait() == 0
    assert idle.pid not in fleet()  # a clean stop removes its presence item


def test_pause_stops_new_claims_while_running_work_finishes_and_resume_restarts_intake(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    gate = env["tmp"] / "gate"
    gate.touch()
    code = (
        f"import os, time\nwhile os.path.exists({str(gate)!r}) and os.environ['WORKSET_ID'] == 'ws-1': time.sleep(0.1)"
    )
    port = free_port()
    hook = FakeServer().start()  # the [notify] events default: paused and resumed among them
    config = write_config(env, code, metrics_port=port, extra=f'[notify.webhook]\nurl = "{hook.url}"\n')
    cfg = ["--config", str(config)]

    def notified(kind: str) -> list[dict[str, str]]:
        return [r.json()["event"] for r in hook.requests if r.json()["event"]["event"] == kind]

    def cli_json(*args: str) -> Any:
        assert cli.main([*cfg, *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    def scrape(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def paused_gauge() -> float | None:
        for family in text_string_to_metric_families(scrape("/metrics")[1]):
            if family.name == "workset_monitor_intake_paused":
                return family.samples[0].value
        return None

    env["lab"].workset("ws-1", prefix="w/")
    daemon = env["start"](config)
    until(lambda: (ws := get(env, "ws-1")) and ws.current_step == "main", what="ws-1's step to run")
    assert cli_json("pause", "--reason", "kernel upgrade")["changed"] is True
    env["lab"].workset("ws-2", prefix="w/")
    until(lambda: get(env, "ws-2") is not None, what="ws-2 to be registered")  # the scanner goes on
    until(lambda: paused_gauge() == 1, what="the intake_paused gauge")
    assert cli_json("fleet")["paused"]["reason"] == "kernel upgrade"
    assert scrape("/healthz")[0] == 200  # paused is healthy
    gate.unlink()  # the running step finishes...
    until(lambda: (ws := get(env, "ws-1")) and ws.state is State.COMPLETE, what="ws-1 to complete while paused")
    time.sleep(3)  # ...six claim intervals (0.5 s): ws-2 stays ready
    ws2 = get(env, "ws-2")
    assert ws2 is not None and ws2.state is State.READY and ws2.attempts == 0
    assert cli_json("resume")["ended"]["reason"] == "kernel upgrade"
    until(lambda: (ws := get(env, "ws-2")) and ws.state is State.COMPLETE, what="ws-2 to run after resume")
    until(lambda: paused_gauge() == 0, what="the gauge back at 0")
    until(lambda: notified("resumed"), what="the resumed notification")  # delivered by the daemon, from the outbox
    [paused] = notified("paused")
    assert (paused["workset"], paused["reason"], paused["by"][:9]) == ("#fleet", "kernel upgrade", "operator:")
    assert notified("resumed")[0]["reason"] == "maintenance over"
    trail = cli_json("history", "#fleet")  # who paused the fleet, and why
    assert [(e["type"], e["reason"], e["notified"]) for e in trail] == [
        ("paused", "kernel upgrade", {"webhook": "sent"}),
        ("resumed", "maintenance over", {"webhook": "sent"}),
    ]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    hook.stop()


def test_watch_in_tmux_shows_the_queue_the_fleet_and_a_step_s_time_moving(env: dict[str, Any]) -> None:
    """The live view, in a real terminal: three daemons, two running steps, the elapsed time of a step changing
    between two captures; `q` quits."""
    gate = env["tmp"] / "gate"
    gate.touch()
    config = write_config(env, f"import os, time\nwhile os.path.exists({str(gate)!r}): time.sleep(0.1)")
    config.write_text(config.read_text().replace("[run]\n", "[run]\nmax_concurrent = 1\npresence_interval_s = 1\n"))
    for name in ("ws-a", "ws-b", "ws-c"):
        env["lab"].workset(name, prefix="w/")
    for name in ("one", "two", "three"):
        env["start"](config, name=name)
    socket_name = f"wm-test-{os.getpid()}"
    exe = Path(sys.executable).with_name("workset-monitor")
    variables = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("AWS_"))
    command = f"env {variables} {exe} --config {config} watch --interval 1"

    def tmux(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", socket_name, *args], capture_output=True, text=True, timeout=10, check=False
        )

    assert tmux("new-session", "-d", "-s", "wm", "-x", "180", "-y", "60", command).returncode == 0
    try:
        screen = until(
            lambda: (
                (s := tmux("capture-pane", "-p", "-t", "wm").stdout) and "RUNNING (3)" in s and "(3 alive)" in s and s
            ),
            timeout_s=30,
            what="the view with three daemons and three running worksets",
        )
        assert "QUEUE" in screen and "in_progress" in screen

        def step_times(text: str) -> dict[str, str]:
            rows = text.split("RUNNING (3)")[1].split("RECENT CHANGES", maxsplit=1)[0].splitlines()[2:]
            return {r.split()[0]: r.split()[3] for r in rows if r.strip()}

        first = step_times(screen)
        time.sleep(2.5)
        second = step_times(tmux("capture-pane", "-p", "-t", "wm").stdout)
        assert set(first) == set(second) == {"ws-a", "ws-b", "ws-c"}
        assert first != second, (first, second)  # the elapsed times moved
        tmux("send-keys", "-t", "wm", "q")
        until(lambda: tmux("has-session", "-t", "wm").returncode != 0, timeout_s=10, what="q to end watch")
    finally:
        tmux("kill-server")
        gate.unlink(missing_ok=True)


def test_a_workset_scheduled_for_later_is_not_claimed_before_its_time(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`register --not-before +4s` by hand, and `not_before:` in a folder's daylily_info.yaml: a daemon scanning
    and claiming every half second runs each only from its time on."""
    config = write_config(env, "print('ok')")
    daemon = env["start"](config)
    at_ms = int(time.time() * 1000) + 4000
    info = f"workset_name: x\nnot_before: '{datetime.fromtimestamp(at_ms / 1000, tz=UTC).isoformat()}'  # tonight\n"
    env["lab"].workset("ws-info", prefix="w/", files={"daylily_info.yaml": info.encode()})
    assert cli.main(["--config", str(config), "register", "ws-hand", "--not-before", "+4s", "--no-validate"]) == 0
    assert ", not before " in capsys.readouterr().out
    for name in ("ws-hand", "ws-info"):
        ws = until(lambda n=name: (w := get(env, n)) and w.state is State.COMPLETE and w, timeout_s=30, what=name)
        started = next(e for e in run(env["store"].history(WorksetId(name))) if e.type is EventType.STARTED)
        assert started.at_ms >= at_ms, (name, started.at_ms - at_ms)  # ws-hand's time is later still: +4s from then
        assert ws.attempts == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


STEP_LOGS = {"WORKSET_MONITOR_RUN__STEP_LOGS": "s3"}


def logs_cli(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), "logs", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, **STEP_LOGS},
        timeout=120,
    )


def test_logs_prints_a_10_mb_step_output_exactly_from_another_process(env: dict[str, Any]) -> None:
    """A step writes 10 MiB of random bytes (NULs, no final newline) in one go; from another process, `logs` prints
    them exactly; the daemon held at most one 8 MiB segment of it."""
    config = write_config(env, BIG, metrics_port=(port := free_port()))
    env["lab"].workset("ws-big", prefix="w/")
    daemon = env["start"](config, env=STEP_LOGS)
    until(lambda: (ws := get(env, "ws-big")) and ws.state is State.COMPLETE, timeout_s=60, what="the big step")
    printed = logs_cli(config, "ws-big", "--step", "main")
    assert printed.returncode == 0, printed.stderr
    assert len(printed.stdout) == 10 << 20
    assert hashlib.sha256(printed.stdout).digest() == hashlib.sha256(expected_big()).digest()
    listed = json.loads(logs_cli(config, "ws-big", "--json").stdout)
    assert [(run["step"], run["bytes"], len(run["uris"])) for run in listed] == [("main", 10 << 20, 2)]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    writes = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "workset_monitor_step_log_writes_total"
    }
    assert writes["ok"] >= 2 and writes["failed"] == 0, writes
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_logs_follow_prints_a_running_step_as_it_goes_and_ends_with_it(env: dict[str, Any]) -> None:
    config = write_config(env, "import time\nfor i in range(40): print('line', i, flush=True); time.sleep(0.5)")
    env["lab"].workset("ws-slow", prefix="w/")
    daemon = env["start"](config, env=STEP_LOGS)
    until(lambda: (ws := get(env, "ws-slow")) and ws.state is State.IN_PROGRESS, what="the slow step to start")
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "logs", "ws-slow", "-f", "--interval", "0.5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, **STEP_LOGS},
    ) as follow:
        assert follow.stdout is not None
        first = follow.stdout.readline()
        first_at = time.monotonic()
        assert first.startswith(b"==> step main, attempt 1, epoch 1: s3://"), first
        assert follow.stdout.readline() == b"line 0\n"
        still = get(env, "ws-slow")
        assert still is not None and still.state is State.IN_PROGRESS  # printed while the step was running
        rest = follow.stdout.read()
        assert follow.wait(timeout=60) == 0
    ended_at = time.monotonic()
    assert rest == b"".join(f"line {i}\n".encode() for i in range(1, 40))
    assert ended_at - first_at > 2, "the first lines came only at the end"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_log_s3_cannot_take_is_counted_and_the_step_runs_on(env: dict[str, Any]) -> None:
    """A workset registered by hand in a bucket that does not exist: its step log cannot be written; the step
    completes anyway, the failure is counted, and `logs` says what is wrong in one line."""
    config = write_config(env, "print('ok')", metrics_port=(port := free_port()))
    daemon = env["start"](config, env=STEP_LOGS)
    hand = ["register", "ws-nob", "--bucket", "no-such-logs-bucket", "--prefix", "w/ws-nob/", "--no-validate"]
    assert cli.main(["--config", str(config), *hand]) == 0
    until(lambda: (ws := get(env, "ws-nob")) and ws.state is State.COMPLETE, what="the step to complete anyway")

    def failed() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "workset_monitor_step_log_writes_total" and sample.labels["outcome"] == "failed"
        )

    assert until(lambda: failed() >= 1, what="the failed write to be counted")
    printed = logs_cli(config, "ws-nob")
    assert printed.returncode == 1 and printed.stdout == b""
    assert printed.stderr.decode().strip() == "workset-monitor: bucket no-such-logs-bucket does not exist"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_the_chores_move_to_the_other_daemon_when_their_holder_is_paused_and_again_when_it_is_killed(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two daemons; one does the chores (scan, sweep, gauges). SIGSTOP it: the other takes the role over after a
    lease plus grace of silence and finds new worksets itself. SIGCONT: the woken one learns it lost the role and
    scans no more. SIGKILL the new holder: the woken one takes the role back."""
    config = write_config(env, "print('done')")
    daemons = {name: env["start"](config, name=name) for name in ("a", "b")}

    def holder() -> str | None:
        assert cli.main(["--config", str(config), "fleet", "--json"]) == 0
        chores = json.loads(capsys.readouterr().out)["chores"]
        pid = int(chores["owner"].split(":")[1]) if chores else None
        return next((name for name, child in daemons.items() if child.pid == pid), None)

    def complete(name: str) -> bool:
        return (ws := get(env, name)) is not None and ws.state is State.COMPLETE

    env["lab"].workset("ws-0", prefix="w/")
    until(lambda: complete("ws-0"), what="the first workset")
    first = until(holder, what="a holder of the chores role")
    other = "b" if first == "a" else "a"

    daemons[first].signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    env["lab"].workset("ws-1", prefix="w/")
    until(lambda: holder() == other, timeout_s=20, what="the other daemon to take the role over")
    assert time.monotonic() - paused_at < 3 + 1 + 0.5 + 3  # lease + grace + sweep interval + slack
    until(lambda: complete("ws-1"), timeout_s=20, what="the new holder to find and run ws-1")

    daemons[first].signal(signal.SIGCONT)
    until(lambda: "lost the chores role" in daemons[first].log_path.read_text(), timeout_s=10, what="the loss")
    scans_after_waking = daemons[first].log_path.read_text().count('"event": "scan"')
    env["lab"].workset("ws-2", prefix="w/")
    until(lambda: complete("ws-2"), timeout_s=20, what="ws-2")
    assert holder() == other
    assert daemons[first].log_path.read_text().count('"event": "scan"') == scans_after_waking  # it scans no more

    daemons[other].signal(signal.SIGKILL)
    daemons[other].wait()
    env["lab"].workset("ws-3", prefix="w/")
    until(lambda: holder() == first, timeout_s=20, what="the woken daemon to take the role back")
    until(lambda: complete("ws-3"), timeout_s=20, what="ws-3")
    daemons[first].signal(signal.SIGTERM)
    assert daemons[first].wait() == 0
    assert holder() is None  # released at its clean stop
    for name in ("ws-0", "ws-1", "ws-2", "ws-3"):  # each registered once, run once
        types = [e.type for e in run(env["store"].history(WorksetId(name)))]
        assert types.count(EventType.REGISTERED) == 1 and types.count(EventType.STARTED) == 1, (name, types)
