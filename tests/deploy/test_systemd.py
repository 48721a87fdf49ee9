"""The shipped systemd unit, unmodified, under a real systemd (252, PID 1 of a podman container on the host's network),
installed by following docs/deployment.md command by command, against the AWS emulator on 127.0.0.1.

One operator's day: install as the guide says; start (Type=notify: ``start`` returns once READY=1 came); reload a live
key; a reload with a broken file is refused and the service keeps running; five watchdog periods (the unit's own
WatchdogSec, 60 s) with a 1 s scan interval, /healthz 200 throughout, worksets dropped into S3 meanwhile all complete,
no restart; ``systemctl stop`` with a step still running releases its workset within TimeoutStopSec; a config that
fails validation fails the unit at once and is not restarted in a loop.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.aws.dynamo import DynamoStore
from monitor.model import State, Workset, WorksetId
from tests.conftest import REGION, run
from tests.deploy import guide
from tests.deploy.conftest import aws, boot_systemd_host, copy_source, free_port, wait_for
from tests.deploy.images import podman
from tests.deploy.systemd_host import CHECKOUT, SystemdHost
from tests.fake_http import FakeServer, Reply
from tests.lab import BUCKET, Lab

TABLE = "deploy-systemd"
LINEAR_KEY = "lin_api_..."  # what the guide's step 5 installs as the credential, literally
EDITOR = "/usr/local/bin/guide-editor"
DROPIN = "/root/guide-dropin.conf"
# A real command of the host: quick, except for worksets named slow-*, which run until stopped. What it prints is
# in its full step log in S3 ([run] step_logs), for `workset-monitor logs`.
SLEEP = (
    "import sys, time; print('working on', sys.argv[1], flush=True); "
    "time.sleep(3600 if sys.argv[1].startswith('slow-') else 1)"
)
STEP = f'["/usr/bin/python3", "-c", "{SLEEP}", "{{workset_id}}"]'

# What the test does with each kind of command of the guide; everything not listed here runs as written.
NOT_HERE = {
    "docker": "a container, not this host: tests/deploy/test_container.py runs the docker block with podman",
    "promtool": "runs where Prometheus runs; tests/test_deploy.py runs these lines in `make test`",
}


def editor_script() -> str:
    """SYSTEMD_EDITOR for ``systemctl edit``: puts the drop-in the guide shows where systemctl's template says."""
    return f"""#!/usr/bin/python3
import pathlib, sys
path = pathlib.Path(sys.argv[-1])
text, add = path.read_text(), pathlib.Path("{DROPIN}").read_text()
marker = "### Anything between here and the comment below will become the new contents of the file\\n"
path.write_text(text.replace(marker, marker + add, 1) if marker in text else add + text)
"""


@pytest.fixture
def host(containers: Callable[..., str], host_image: str, wheelhouse: Path, tmp_path: Path) -> Iterator[SystemdHost]:
    machine = boot_systemd_host(containers, host_image, wheelhouse)
    name = machine.name
    source = copy_source(tmp_path / "workset-monitor")
    machine.sh(f"mkdir -p {Path(CHECKOUT).parent}")
    podman("cp", str(source), f"{name}:{CHECKOUT}")
    machine.write(EDITOR, editor_script())
    machine.sh(f"chmod 0755 {EDITOR}")
    yield machine


@pytest.fixture
def linear() -> Iterator[FakeServer]:
    server = FakeServer()  # Linear's GraphQL API: answers `check`'s viewer query and every issue/comment mutation
    server.default = Reply(body={"data": {"viewer": {"id": "u-1", "name": "genomics-ops"}}})
    server.start()
    yield server
    server.stop()


def site_config(*, endpoint: str, port: int) -> str:
    """What the operator writes in step 2 ("Edit the config file")."""
    return (
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{endpoint}"\n'
        f'[table]\nname = "{TABLE}"\n'
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["worksets/"]\ninterval_s = 1\n'
        '[run]\nmax_concurrent = 2\nstep_logs = "s3"\n'
        f'[[pipeline.steps]]\nname = "work"\ncommand = {STEP}\n'
        f"[metrics]\nport = {port}\n"
    )


def notify_config(*, topic: str, linear_url: str) -> str:
    """What the operator adds in step 5 ("put its ARN in [notify.sns] topic_arn", "the team in [notify.linear]")."""
    return f'[notify.sns]\ntopic_arn = "{topic}"\n[notify.linear]\nteam_id = "GEN"\napi_url = "{linear_url}"\n'


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except OSError as exc:
        return int(getattr(exc, "code", 0))


@pytest.mark.timeout(1800)
def test_the_guide_installs_a_service_that_systemd_runs_reloads_watches_and_stops(
    host: SystemdHost, emulator: str, linear: FakeServer
) -> None:
    # --- the site: what exists before the operator starts (the bucket, the SNS topic, the daemon's IAM role) -------
    lab = Lab(aws("s3", emulator))
    lab.s3.create_bucket(Bucket=BUCKET)
    topic = aws("sns", emulator).create_topic(Name="workset-alerts")["TopicArn"]
    aws("iam", emulator).create_role(RoleName="workset-monitor", AssumeRolePolicyDocument="{}")
    port = free_port()
    store = DynamoStore(aws("dynamodb", emulator), TABLE)
    # The operator's root shell: the sh blocks assume workset-monitor on the PATH and $WORKSET_MONITOR_CONFIG; the
    # AWS CLI talks to the emulator; pip resolves from the wheelhouse (the pinned versions make test used).
    shell = {
        "PATH": "/opt/workset-monitor/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "WORKSET_MONITOR_CONFIG": "/etc/workset-monitor/config.toml",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": emulator,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "/wheels",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "SYSTEMD_EDITOR": EDITOR,
    }
    # The operator's AWS CLI (step 4 uses it), from PyPI through the wheelhouse.
    host.sh("python3 -m venv /opt/awscli && /opt/awscli/bin/pip install --quiet awscli", env=shell)
    host.sh("ln -s /opt/awscli/bin/aws /usr/local/bin/aws")
    # Outside AWS the service's credentials come from the unit's EnvironmentFile (on EC2: the instance role).
    host.write("/etc/default/workset-monitor", "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n")

    # --- the guide, in order ---------------------------------------------------------------------------------------
    done: list[str] = []
    skipped: list[str] = []
    section = ""
    for command in guide.commands():
        if command.section != section:
            section = command.section
            if section.startswith("2."):  # "Edit the config file"
                host.write("/etc/workset-monitor/config.toml", site_config(endpoint=emulator, port=port))
            if section.startswith("5."):  # "put its ARN in [notify.sns] topic_arn", "the team in [notify.linear]"
                current = host.sh("cat /etc/workset-monitor/config.toml").stdout
                added = notify_config(topic=topic, linear_url=linear.url)
                host.write("/etc/workset-monitor/config.toml", current + added)
        text = command.text
        first = command.words[0]
        if first in NOT_HERE:
            skipped.append(f"{command.text.splitlines()[0]}  [{NOT_HERE[first]}]")
            continue
        if command.words[:2] == ["systemctl", "edit"]:
            host.write(
                DROPIN, guide.ini_block(section)
            )  # SYSTEMD_EDITOR adds exactly this (on a tty: systemctl needs one)
        if first == "journalctl" and "-f" in command.words:
            text = f"timeout 5 {text}; [ $? = 124 ]"  # -f follows forever: 5 s of it, then stop (124 = timed out)
        text = text.replace(":10090/", f":{port}/")  # the side port of this test (others share the host's network)
        result = host.operator(text, env=shell, tty=command.words[:2] == ["systemctl", "edit"])
        journal = (
            host.journal()[-3000:] + host.sh("systemctl cat workset-monitor").stdout if first == "systemctl" else ""
        )
        assert result.returncode == 0, (
            f"[{section}] {command.text}\n{result.stdout[-3000:]}{result.stderr[-3000:]}{journal}"
        )
        done.append(command.text)
    print("guide commands not run on this host:", *skipped, sep="\n  ")
    assert [s.split()[0] for s in skipped] == ["docker", "promtool", "promtool"], skipped
    assert len(done) >= 25

    # --- started: Type=notify, so `systemctl enable --now` returned after READY=1 -----------------------------------
    state = host.show("ActiveState", "SubState", "StatusText", "NRestarts", "MainPID", "Result")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["StatusText"].startswith("serving: "), state
    pid = state["MainPID"]
    user = host.sh(f"ps -o uid= -p {pid}").stdout.strip()
    assert 61184 <= int(user) <= 65519, f"DynamicUser: a dynamic uid, not {user}"
    assert any(r.headers.get("authorization") == LINEAR_KEY for r in linear.requests), "notify-test reached Linear"

    # --- reload: a live key, applied without a restart --------------------------------------------------------------
    config = host.sh("cat /etc/workset-monitor/config.toml").stdout
    host.write("/etc/workset-monitor/config.toml", config.replace("max_concurrent = 2", "max_concurrent = 3"))
    host.sh("systemctl reload workset-monitor")  # returns once SIGHUP is sent; the daemon reloads right after
    wait_for(
        "the reload", lambda: host.show("StatusText")["StatusText"] == "serving (configuration reloaded)", timeout_s=10
    )
    assert "config reloaded" in host.journal()
    assert host.show("ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}
    # ...and a broken file is refused by the daemon: it keeps running on the old configuration and says so
    host.write("/etc/workset-monitor/config.toml", config.replace("max_concurrent = 2", "max_concurrent = 0"))
    host.sh("systemctl reload workset-monitor")
    wait_for("the refusal", lambda: host.show("StatusText")["StatusText"].startswith("reload failed: "), timeout_s=10)
    state = host.show("ActiveState", "StatusText", "MainPID")
    assert state["ActiveState"] == "active" and state["MainPID"] == pid, state
    assert state["StatusText"].startswith("reload failed: ") and "run.max_concurrent" in state["StatusText"], state
    assert "config reload failed; keeping the running configuration" in host.journal()
    host.write("/etc/workset-monitor/config.toml", config.replace("max_concurrent = 2", "max_concurrent = 3"))
    host.sh("systemctl reload workset-monitor")
    wait_for(
        "the reload", lambda: host.show("StatusText")["StatusText"] == "serving (configuration reloaded)", timeout_s=10
    )

    # --- five watchdog periods: pings arrive, /healthz says 200, worksets complete, no restart -----------------------
    # Between 100 s and 170 s an operator pauses intake (maintenance): what is dropped meanwhile waits, /healthz
    # stays 200; after `resume` it runs. The presence item is rewritten every 30 s all along (`fleet`).
    watchdog_s = int(host.show("WatchdogUSec")["WatchdogUSec"].removesuffix("min")) * 60
    assert watchdog_s == 60, "the unit's WatchdogSec"
    pings: set[str] = set()
    dropped: list[str] = []
    during_pause: list[str] = []
    paused = resumed = False

    def get(name: str) -> Workset | None:
        return run(store.get(WorksetId(name)))

    started = time.monotonic()
    while time.monotonic() - started < 5 * watchdog_s + 10:
        elapsed = time.monotonic() - started
        if not paused and elapsed >= 100:
            said = host.operator("workset-monitor pause --reason 'kernel upgrade'", env=shell)
            assert said.returncode == 0 and "intake paused fleet-wide" in said.stdout, said
            paused = True
        if len(dropped) * 20 <= elapsed:
            dropped.append(f"ws-{len(dropped):03d}")
            lab.workset(dropped[-1], priority=("urgent", "normal", "low")[len(dropped) % 3])
            if paused and not resumed:
                during_pause.append(dropped[-1])
        if paused and not resumed and elapsed >= 170:
            waiting = {n: (w.state.value if (w := get(n)) else None) for n in during_pause}
            assert all(s in ("ready", None) for s in waiting.values()), waiting  # none claimed while paused
            assert host.operator("workset-monitor resume", env=shell).returncode == 0
            resumed = True
        assert healthz(port) == 200
        state = host.show("ActiveState", "NRestarts", "MainPID", "WatchdogTimestampMonotonic")
        assert (state["ActiveState"], state["NRestarts"], state["MainPID"]) == ("active", "0", pid), state
        pings.add(state["WatchdogTimestampMonotonic"])
        time.sleep(5)
    assert len(pings) >= 5 * 4 - 2, f"a WATCHDOG=1 every quarter of WatchdogSec: saw {len(pings)} distinct pings"
    assert len(during_pause) >= 3 and resumed, during_pause
    fleet = json.loads(host.operator("workset-monitor fleet --json", env=shell).stdout)
    [daemon] = fleet["daemons"]
    assert daemon["status"] == "alive" and daemon["pid"] == int(pid) and fleet["paused"] is None, fleet
    assert daemon["writes"] >= (5 * watchdog_s) // 30, daemon  # a presence write every 30 s, all along
    trail = json.loads(host.operator("workset-monitor history '#fleet' --json", env=shell).stdout)
    assert [(e["type"], e["reason"], e["notified"]) for e in trail] == [  # Linear hears about worksets' problems only
        ("paused", "kernel upgrade", {"sns": "sent", "linear": "skipped"}),
        ("resumed", "maintenance over", {"sns": "sent", "linear": "skipped"}),
    ], trail

    def all_complete() -> bool:
        return all((ws := get(n)) is not None and ws.state is State.COMPLETE for n in dropped)

    wait_for(f"{len(dropped)} worksets to complete", all_complete, timeout_s=60)

    # --- stop with a step still running: released within TimeoutStopSec, exit 0 -----------------------------------
    lab.workset("slow-1")
    wait_for(
        "slow-1 in progress", lambda: (w := get("slow-1")) is not None and w.state is State.IN_PROGRESS, timeout_s=60
    )
    began = time.monotonic()
    host.sh("systemctl stop workset-monitor", timeout_s=120)
    took = time.monotonic() - began
    state = host.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}, state
    assert took < 60, f"stop took {took:.0f} s, TimeoutStopSec is 60 s"
    slow = get("slow-1")
    assert slow is not None and slow.state is State.READY and slow.lease is None and slow.attempts == 0, slow

    # --- full step logs, from S3: a finished step's, and the one stopped by `systemctl stop` up to its end -----------
    for name in (dropped[0], dropped[-1], "slow-1"):
        printed = host.operator(f"workset-monitor logs {name} --step work", env=shell)
        assert printed.returncode == 0 and printed.stdout == f"working on {name}\n", printed

    # --- a restart reads no registered id: the known folders come from the unit's StateDirectory ------------------
    assert "known worksets loaded from the known-folders file" not in host.journal()  # the first start read them
    assert host.operator("workset-monitor cancel slow-1 --reason 'runs for an hour'", env=shell).returncode == 0
    host.sh("systemctl start workset-monitor", timeout_s=120)
    lab.workset("after-restart")
    wait_for(
        "a new workset run after the restart",
        lambda: (w := get("after-restart")) is not None and w.state is State.COMPLETE,
        timeout_s=120,
    )
    journal = host.journal().splitlines()
    loaded = [json.loads(line) for line in journal if "known worksets loaded from the known-folders file" in line]
    assert len(loaded) == 1 and loaded[0]["count"] >= len(dropped) + 1, loaded
    assert f"known-folders-{TABLE}.sqlite3" in host.sh("ls /var/lib/workset-monitor/").stdout
    host.sh("systemctl stop workset-monitor", timeout_s=120)

    # --- a config that fails validation: the unit fails at once and is not restarted in a loop -------------------
    host.write("/etc/workset-monitor/config.toml", config.replace("interval_s = 1", "interval_s = -1"))
    assert host.sh("systemctl start workset-monitor", check=False).returncode != 0
    time.sleep(15)  # three RestartSec= periods: a restart loop would have started again by now
    state = host.show("ActiveState", "Result", "NRestarts", "ExecMainStatus")
    assert state["ActiveState"] == "failed" and state["NRestarts"] == "0", state
    assert "scan.interval_s" in host.journal()
