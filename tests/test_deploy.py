"""The deployment kit: systemd unit, Docker image, IAM policy, check, export/import, and the deployment guide itself,
run command by command against a local AWS emulator."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from dockerfile_parse import DockerfileParser

from monitor import cli, config, iam
from monitor.aws import codec
from monitor.config import DEFAULT_METRICS_PORT, Settings
from monitor.daylily.state import STATE_KEY
from monitor.sideport import SidePort
from monitor.step_logs import RunName
from tests.conftest import REGION, ROOT
from tests.lab import BUCKET, Lab

UNIT = ROOT / "deploy/systemd/workset-monitor.service"
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"


# --- systemd -------------------------------------------------------------------------------------------------------


def test_the_systemd_unit_verifies_cleanly_and_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing"
    copy = tmp_path / "workset-monitor.service"  # ExecStart must exist for verify: a stub stands in for the program
    copy.write_text(UNIT.read_text().replace("/opt/workset-monitor/bin/workset-monitor", "/bin/true"))
    verify = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(copy)], capture_output=True, text=True, check=False
    )
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))  # type: ignore[union-attr]
    assert score <= 2.0, security.stdout[-2000:]


def test_the_systemd_unit_keeps_its_promises() -> None:
    lines = [line.strip() for line in UNIT.read_text().splitlines() if line.strip() and not line.startswith("#")]
    settings = {k: v for k, _, v in (line.partition("=") for line in lines if "=" in line)}
    assert settings["Type"] == "notify" and settings["RestartPreventExitStatus"] == "78"
    assert settings["Restart"] == "on-failure" and settings["DynamicUser"] == "yes"
    assert settings["ConfigurationDirectory"] == "workset-monitor" and "WatchdogSec" in settings
    assert "ExecStartPre" not in settings and settings["ExecStart"].endswith(" run")  # run itself exits 78: no loop
    reloads = [line for line in lines if line.startswith("ExecReload=")]
    assert reloads == ["ExecReload=/bin/kill -HUP $MAINPID"]  # check-config there could not read the credentials
    grace = config.RunConfig().shutdown_grace_s + 5  # plus the step kill grace
    assert float(settings["TimeoutStopSec"].removesuffix("s")) > grace
    assert "LoadCredential=workset_monitor_notify__linear__api_key:" in UNIT.read_text()


# --- Docker --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ROOT / "deploy/daylily/Dockerfile"], ids=["shipped", "daylily"])
def test_hadolint_has_nothing_to_say(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_dockerfile_invariants() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    instructions = parser.structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    assert froms[0].startswith("python:3.11-slim-bookworm AS") and froms[-1] == "python:3.11-slim-bookworm"
    user = next(i["value"] for i in reversed(instructions) if i["instruction"] == "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit(), "a numeric non-root user"
    entrypoint = json.loads(next(i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT"))
    assert entrypoint[:2] == ["/usr/bin/tini", "--"] and entrypoint[2] == "workset-monitor"
    assert json.loads(next(i["value"] for i in instructions if i["instruction"] == "CMD")) == ["run"]
    health = next(i["value"] for i in instructions if i["instruction"] == "HEALTHCHECK")
    assert '["workset-monitor", "healthcheck"]' in health
    assert next(i["value"] for i in instructions if i["instruction"] == "EXPOSE") == str(DEFAULT_METRICS_PORT)
    env = parser.envs
    assert env["WORKSET_MONITOR_CONFIG"] == "/etc/workset-monitor/config.toml"
    assert env["WORKSET_MONITOR_METRICS__HOST"] == "0.0.0.0"
    compose = (ROOT / "deploy/docker/compose.example.yml").read_text()
    assert "/etc/workset-monitor/config.toml:ro" in compose and "stop_grace_period: 60s" in compose


def test_demo_without_the_emulator_says_in_one_line_what_it_needs(monkeypatch: Any, capsys: Any) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a))
    assert cli.main(["demo", "--until-idle"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'workset-monitor[demo]'" in err[0] and "EXTRAS=demo" in err[0], err


def test_healthcheck_reports_the_side_port(tmp_path: Path, capsys: Any) -> None:
    healthy = {"ok": True}
    port = SidePort(
        __import__("prometheus_client").CollectorRegistry(),
        health=lambda: (healthy["ok"], "" if healthy["ok"] else "loop scanner is stuck"),
        ready=lambda: (True, ""),
    )
    port.start("127.0.0.1", 0)
    try:
        path = tmp_path / "c.toml"
        path.write_text(f'[metrics]\nhost = "0.0.0.0"\nport = {port.address[1]}\n')
        assert cli.main(["--config", str(path), "healthcheck"]) == 0
        healthy["ok"] = False
        assert cli.main(["--config", str(path), "healthcheck"]) == 1
        assert "loop scanner is stuck" in capsys.readouterr().err
    finally:
        port.stop()
    assert cli.main(["--config", str(path), "healthcheck"]) == 1  # nobody listening
    assert "no answer from" in capsys.readouterr().err


def test_check_config_passes_a_good_file_and_refuses_a_bad_one(tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["--config", str(ROOT / "config.example.toml"), "check-config"]) == 0
    assert "config.example.toml: valid (table daylily-worksets" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[lease]\nduration_s = -1\n")
    assert cli.main(["--config", str(bad), "check-config"]) == 78


# --- IAM -----------------------------------------------------------------------------------------------------------


def full_settings(**overrides: Any) -> Settings:
    data = {
        "aws": {"region": "us-west-2"},
        "table": {"name": "daylily-worksets"},
        "scan": {
            "bucket": "my-genomics-bucket",
            "prefixes": ["active/", "urgent/"],
            "write_sentinels": True,
            "sqs_queue_url": "https://sqs.us-west-2.amazonaws.com/123456789012/workset-ready",
        },
        "notify": {"sns": {"topic_arn": "arn:aws:sns:us-west-2:123456789012:workset-alerts"}},
        "metrics": {"cloudwatch": {"namespace": "Genomics/WorksetMonitor"}},
    } | overrides
    return Settings.model_validate(data)


def test_the_policy_is_scoped_to_this_configuration() -> None:
    policy = iam.render(full_settings())
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    table = "arn:aws:dynamodb:us-west-2:123456789012:table/daylily-worksets"
    assert by_sid["WorksetTable"]["Resource"] == [
        table,
        f"{table}/index/state-priority-index",
        f"{table}/index/outbox-index",
        f"{table}/index/finished-index",
    ]
    assert by_sid["ListWorksetFolders"]["Condition"] == {"StringLike": {"s3:prefix": ["active/*", "urgent/*"]}}
    assert by_sid["ReadWorksets"]["Resource"] == [
        "arn:aws:s3:::my-genomics-bucket/active/*",
        "arn:aws:s3:::my-genomics-bucket/urgent/*",
    ]
    assert by_sid["WriteLegacySentinels"]["Resource"][0] == "arn:aws:s3:::my-genomics-bucket/active/*/daylily.*"
    assert "WriteStepLogs" not in by_sid  # [run] step_logs is off
    assert by_sid["ReadyNotificationsQueue"]["Resource"] == ["arn:aws:sqs:us-west-2:123456789012:workset-ready"]
    assert by_sid["PublishMetrics"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "Genomics/WorksetMonitor"}
    }
    assert not any(r == "*" for s in policy["Statement"] if s["Sid"] != "PublishMetrics" for r in s["Resource"])
    minimal = iam.render(Settings.model_validate({"scan": {"bucket": "b-1"}}), account="111122223333")
    assert {s["Sid"] for s in minimal["Statement"]} == {"WorksetTable", "ListWorksetFolders", "ReadWorksets"}
    assert "dynamodb:CreateTable" not in iam.actions(minimal)
    assert {"dynamodb:CreateTable", "dynamodb:UpdateTable", "dynamodb:Scan"} <= iam.actions(
        iam.render(full_settings(), role="admin")
    )


def test_step_logs_add_exactly_their_writes_and_every_log_key_is_inside_them() -> None:
    off = iam.render(full_settings())
    on = iam.render(full_settings(run={"step_logs": "s3"}))
    added = [s for s in on["Statement"] if s not in off["Statement"]]
    assert [(s["Sid"], s["Action"]) for s in added] == [("WriteStepLogs", ["s3:PutObject"])]
    keys = [RunName(3, 1, "analyse").key(f"{p}ws-001/", seq) for p in ("active/", "urgent/") for seq in (0, 1)]
    for key in keys:
        assert any(fnmatch.fnmatchcase(f"arn:aws:s3:::my-genomics-bucket/{key}", r) for r in added[0]["Resource"])
    assert not fnmatch.fnmatchcase(
        "arn:aws:s3:::my-genomics-bucket/active/ws-001/stage_samples.tsv", added[0]["Resource"][0]
    )


def test_the_daylily_steps_add_their_run_state_writes_and_the_zone_lookup() -> None:
    """The steps run as the daemon's identity: ``iam-policy`` for a config with ``[daylily]`` covers them."""
    off = iam.render(full_settings())
    on = iam.render(full_settings(daylily={"run_command": "dy-r"}))
    added = [s for s in on["Statement"] if s not in off["Statement"]]
    assert [(s["Sid"], s["Action"]) for s in added] == [("DaylilyRunState", ["s3:PutObject"])]
    assert fnmatch.fnmatchcase(f"arn:aws:s3:::my-genomics-bucket/urgent/ws-1/{STATE_KEY}", added[0]["Resource"][1])
    assert not any(
        fnmatch.fnmatchcase("arn:aws:s3:::my-genomics-bucket/active/ws-1/x", r) for r in added[0]["Resource"]
    )
    zoned = iam.render(full_settings(daylily={"run_command": "dy-r", "availability_zone": "us-west-2b"}))
    extra = [s for s in zoned["Statement"] if s not in on["Statement"]]
    # DescribeInstances has no resource-level permissions: "*" is the only resource it accepts
    assert extra == [
        {"Sid": "DaylilyHeadNodeZone", "Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": ["*"]}
    ]


def test_every_action_granted_is_needed_by_some_operation() -> None:
    needed = {a for actions, _ in iam.OPERATIONS.values() for a in actions}
    everything = full_settings(daylily={"run_command": "dy-r", "availability_zone": "us-west-2b"})
    assert iam.actions(iam.render(everything, role="admin")) == needed


def test_the_committed_policy_template_is_what_iam_policy_renders() -> None:
    template = json.loads((ROOT / "deploy/iam-policy.json").read_text())
    settings = Settings.model_validate(
        {
            "aws": {"region": "REGION"},
            "scan": {"bucket": "my-genomics-bucket", "prefixes": ["daylily_monitoring/active_worksets/"]},
            "notify": {"sns": {"topic_arn": "arn:aws:sns:us-west-2:123456789012:workset-alerts"}},
        }
    )
    rendered = json.dumps(iam.render(settings, account="ACCOUNT_ID", region="REGION"), indent=2)
    rendered = rendered.replace(
        "arn:aws:sns:us-west-2:123456789012:workset-alerts", "arn:aws:sns:REGION:ACCOUNT_ID:workset-alerts"
    )
    assert template == json.loads(rendered)


# --- check, export, import and the deployment guide, against the emulator -------------------------------------------


@pytest.fixture
def site(aws_endpoint: str, tmp_path: Path) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    topic = boto3.client("sns", region_name=REGION, endpoint_url=aws_endpoint).create_topic(Name="alerts")["TopicArn"]
    queue = boto3.client("sqs", region_name=REGION, endpoint_url=aws_endpoint).create_queue(QueueName="ready")[
        "QueueUrl"
    ]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "config.toml"
    path.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{aws_endpoint}"\n[table]\nname = "site"\n'
        f'[scan]\nbucket = "{BUCKET}"\nprefixes = ["worksets/"]\nsqs_queue_url = "{queue}"\n'
        f'[notify.sns]\ntopic_arn = "{topic}"\n'
        f"[metrics]\nport = {port}\n"
        '[[pipeline.steps]]\nname = "work"\ncommand = ["true"]\n'
    )
    return {"config": path, "endpoint": aws_endpoint, "lab": Lab(s3), "tmp": tmp_path}


def wm(site: dict[str, Any], capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--config", str(site["config"]), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_on_a_ready_site_and_says_how_to_fix_a_missing_table(site: dict[str, Any], capsys: Any) -> None:
    code, out, _ = wm(site, capsys, "check")
    assert code == 1 and "FAIL    table" in out and "run `workset-monitor init`" in out
    assert wm(site, capsys, "init")[0] == 0
    code, out, _ = wm(site, capsys, "check", "--json")
    results = {r["check"]: r["status"] for r in json.loads(out)}
    assert code == 0 and set(results.values()) == {"PASS"}, results
    assert {"config", "credentials", "table", "bucket s3://lab-bucket/worksets/", "sns alerts", "sqs queue"} <= set(
        results
    )


def test_check_fails_a_step_whose_program_is_not_there(site: dict[str, Any], capsys: Any) -> None:
    """check passed with a step binary that did not exist; then every workset went to error."""
    assert wm(site, capsys, "init")[0] == 0
    config = site["config"]
    config.write_text(
        config.read_text()
        + '[[pipeline.steps]]\nname = "stage"\ncommand = ["/opt/daylily/bin/stage-samples", "{s3_uri}"]\n'
        + '[[pipeline.steps]]\nname = "report"\ncommand = ["no-such-program-here", "{workset_id}"]\n'
    )
    code, out, _ = wm(site, capsys, "check", "--json")
    results = {r["check"]: (r["status"], r["detail"]) for r in json.loads(out)}
    assert code == 1
    assert results["step work"][0] == "PASS" and "/true" in results["step work"][1]
    assert results["step stage"] == (
        "FAIL",
        "/opt/daylily/bin/stage-samples does not exist -> install it, or fix the step's command in [[pipeline.steps]]",
    )
    assert results["step report"][0] == "FAIL" and "no-such-program-here is not on PATH" in results["step report"][1]


def test_check_tries_the_state_dir(site: dict[str, Any], capsys: Any) -> None:
    """[run] state_dir (the known folders): writable or creatable passes; a file in its place fails with the fix."""
    assert wm(site, capsys, "init")[0] == 0
    config, tmp = site["config"], site["tmp"]
    base = config.read_text()
    for state_dir, expected in (
        (tmp / "state", "will be created in"),
        (tmp, "writable"),
        (tmp / "blocker" / "state", "is not a directory"),
    ):
        (tmp / "blocker").write_text("a file, not a directory")
        config.write_text(base + f'\n[run]\nstate_dir = "{state_dir}"\n')
        code, out, _ = wm(site, capsys, "check", "--json")
        status, detail = {r["check"]: (r["status"], r["detail"]) for r in json.loads(out)}[f"state dir {state_dir}"]
        assert expected in detail and (status == "FAIL") == (code == 1) == ("not a directory" in expected), detail


def test_check_with_aws_unreachable_says_so_and_exits_69(site: dict[str, Any], capsys: Any) -> None:
    """With the endpoint unreachable, check advised "configure AWS credentials" and "run init", and exited 1."""
    config = site["config"]
    config.write_text(config.read_text().replace(site["endpoint"], "http://127.0.0.1:9"))
    code, out, _ = wm(site, capsys, "check", "--json")
    results = {r["check"]: (r["status"], r["detail"]) for r in json.loads(out)}
    assert code == 69, results
    for name in ("credentials", "table", "bucket s3://lab-bucket/worksets/", "sns alerts", "sqs queue"):
        status, detail = results[name]
        assert status == "FAIL" and "AWS is unreachable" in detail, (name, detail)
        assert "init" not in detail and "configure AWS credentials" not in detail, (name, detail)


def test_export_import_round_trip_preserves_everything(site: dict[str, Any], capsys: Any) -> None:
    assert wm(site, capsys, "init")[0] == 0
    for name, priority in (("ws-a", "urgent"), ("ws-b", "low")):
        assert wm(site, capsys, "register", name, "--priority", priority, "--no-validate")[0] == 0
    assert wm(site, capsys, "cancel", "ws-b", "--reason", "wrong run")[0] == 0
    claim(site["endpoint"], "site")  # ws-a in progress: counted on its fleet shard, which must survive the trip
    backup = site["tmp"] / "backup.jsonl"
    assert wm(site, capsys, "export", "--out", str(backup))[0] == 0
    lines = backup.read_text().splitlines()
    assert (
        json.loads(lines[0])["format"] == "workset-monitor-export" and len(lines) == 1 + 2 + 4 + 2
    )  # header, worksets, events, ws-a's fleet shard and the cancelled one's finished counter

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=site["endpoint"])
    original = sorted(json.dumps(i, sort_keys=True) for i in client.scan(TableName="site")["Items"])
    other = site["tmp"] / "other.toml"
    other.write_text(site["config"].read_text().replace('name = "site"', 'name = "restored"'))
    site2 = {**site, "config": other}
    assert wm(site2, capsys, "init")[0] == 0
    code, out, _ = wm(site2, capsys, "import", str(backup))
    assert code == 0 and "worksets: 2 written" in out and "fleet counter set to 1 in progress" in out
    items = client.scan(TableName="restored")["Items"]
    [counter] = [i for i in items if i["pk"]["S"] == "#fleet" and i["sk"]["S"] == "counter"]
    assert counter == {**codec.FLEET_KEY, "retry_seq": {"N": "1"}}  # on purpose: daemons re-read what is retrying
    restored = sorted(json.dumps(i, sort_keys=True) for i in items if i is not counter)
    assert restored == original
    code, out, _ = wm(site2, capsys, "import", str(backup))  # again: nothing changes
    assert code == 0 and "worksets: 0 written, 2 kept" in out and "events: 0 written, 4 already there" in out

    assert wm(site2, capsys, "retry", "ws-b")[0] == 0  # the restored table moves on...
    code, out, _ = wm(site2, capsys, "import", str(backup))
    assert "worksets: 0 written, 2 kept" in out  # ...and an older backup never overwrites it
    assert json.loads(wm(site2, capsys, "show", "ws-b", "--json")[1])["state"] == "ready"
    code, out, _ = wm(site2, capsys, "import", str(backup), "--force")
    assert (
        "worksets: 2 written" in out
        and json.loads(wm(site2, capsys, "show", "ws-b", "--json")[1])["state"] == "cancelled"
    )
    counters = [i for i in client.scan(TableName="restored")["Items"] if i["sk"]["S"].startswith("done#")]
    assert sum(int(i["n"]["N"]) for i in counters) == 1  # ws-b, cancelled again: counted once, not once per import


def claim(endpoint: str, table: str) -> None:
    from monitor.aws.dynamo import DynamoStore
    from monitor.clock import SystemClock
    from monitor.leases import Claimer, Policy
    from tests.conftest import run

    store = DynamoStore(boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint), table)
    assert len(run(Claimer(store, SystemClock(), owner="h:1:0", policy=Policy()).claim(slots=1))) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "line 1: not JSON"),
        ('{"format": "something-else"}\n', "line 1: not a workset-monitor export"),
        ('{"format": "workset-monitor-export", "version": 1}\n{"item": {"pk": {"S": "x"}}}\n', "line 2: expected"),
        (
            '{"format": "workset-monitor-export", "version": 1}\n{"item": {"pk": {"S": "x"}, "sk": {"S": "ws"}}}\n',
            "line 2: not a valid workset or event",
        ),
    ],
)
def test_a_bad_import_file_is_refused_with_its_line(
    site: dict[str, Any], capsys: Any, content: str, message: str
) -> None:
    wm(site, capsys, "init")
    bad = site["tmp"] / "bad.jsonl"
    bad.write_text(content)
    code, _, err = wm(site, capsys, "import", str(bad))
    assert code == 1 and f"{bad} {message}" in err
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=site["endpoint"])
    assert client.scan(TableName="site")["Items"] == []  # nothing was written


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, re.S)


def test_the_deployment_guide_works_as_written(site: dict[str, Any]) -> None:
    blocks = shell_blocks((ROOT / "docs/deployment.md").read_text())
    assert len(blocks) >= 8
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "WORKSET_MONITOR_CONFIG": str(site["config"]),
        "TMPDIR": str(site["tmp"]),
    }
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cancelled" in result.stdout and "SUCCESS" in result.stdout


def test_no_guide_command_cuts_its_writer_off() -> None:
    """The guide's commands run under ``set -o pipefail`` (as in our test hosts and many operators' shells): a reader
    that stops early (``| head``) fails the writer (curl: exit 23, "Failed writing body") whenever the body outlives
    the pipe buffer or the race. The guide shows whole reads (``grep``) instead."""
    from tests.deploy import guide

    early = [c.text for c in guide.commands() if re.search(r"\|\s*(head|sed\s+-n\s+\S+q)\b", c.text)]
    assert early == []


def test_the_configuration_reference_lists_every_key() -> None:
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)` \|", (ROOT / "docs/configuration.md").read_text(), re.M))
    from tests.test_config import _field_paths

    known = {p.replace("pipeline.steps.", "pipeline.steps[].") for p in _field_paths(Settings)}
    assert documented == known, f"missing: {sorted(known - documented)}; unknown: {sorted(documented - known)}"


def test_codec_constants_match_the_docs() -> None:
    text = (ROOT / "docs/data-model.md").read_text()
    assert codec.GSI_NAME in text and codec.OUTBOX_GSI in text
