"""The operator's story, told through the real command line against a moto server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from monitor import actions, cli, states
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.model import Lease, Priority, State, WorksetId
from monitor.scanner import Scanner
from monitor.states import Action, Context, nobody
from tests.conftest import REGION, register, run
from tests.lab import BUCKET, Lab


@pytest.fixture
def config_file(tmp_path: Path, aws_endpoint: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{aws_endpoint}"\n\n'
        '[table]\nname = "daylily-worksets"\n\n[scan]\nbucket = "lab-bucket"\nprefixes = ["worksets/"]\n'
    )
    return path


def sh(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script exactly as an operator would."""
    env = dict(os.environ, WORKSET_MONITOR_CONFIG=str(config))
    exe = Path(sys.executable).with_name("workset-monitor")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or code == 2, result.stderr
    return result.stderr


def test_an_operator_sets_up_and_works_the_queue(config_file: Path, aws_endpoint: str) -> None:
    assert "created table daylily-worksets" in ok(sh(config_file, "init"))
    assert "already exists with the expected keys" in ok(sh(config_file, "init"))

    for name, priority in (("ws-low", "low"), ("ws-urgent", "urgent"), ("ws-normal", "normal")):
        out = ok(
            sh(
                config_file,
                "register",
                name,
                "--bucket",
                "lab-bucket",
                "--prefix",
                f"worksets/{name}/",
                "--priority",
                priority,
                "--no-validate",  # the queue's story: the folders are not in S3
            )
        )
        assert f"registered {name} ({priority})" in out
    assert "already registered" in ok(sh(config_file, "register", "ws-low", "--priority", "urgent"))

    table = ok(sh(config_file, "list", "--state", "ready")).splitlines()
    assert [row.split()[0] for row in table[1:]] == ["ws-urgent", "ws-normal", "ws-low"]
    listed = json.loads(ok(sh(config_file, "list", "--state", "ready", "--json")))
    assert [w["workset_id"] for w in listed] == ["ws-urgent", "ws-normal", "ws-low"]
    assert listed[0]["s3_uri"] == "s3://lab-bucket/worksets/ws-urgent/"

    stats = json.loads(ok(sh(config_file, "stats", "--json")))
    assert stats["totals"]["ready"] == 3 == stats["total"]
    assert stats["counts"]["ready"] == {"urgent": 1, "normal": 1, "low": 1}

    assert "ws-low: ready -> ignored" in ok(sh(config_file, "ignore", "ws-low", "--reason", "sample swap"))
    _complete(aws_endpoint, "ws-normal")  # as a daemon would, through the store

    for name, state in (("ws-normal", "complete"), ("ws-low", "ignored")):
        err = refused(sh(config_file, "retry", name))
        assert f"cannot retry a workset that is {state}" in err and "--force" in err
    history = json.loads(ok(sh(config_file, "history", "ws-low", "--json")))
    assert [e["type"] for e in history] == ["registered", "ignored"]  # the refusal wrote nothing

    assert "ws-low: ignored -> ready" in ok(sh(config_file, "retry", "ws-low", "--force", "--reason", "swap fixed"))
    history = json.loads(ok(sh(config_file, "history", "ws-low", "--json")))
    assert [(e["seq"], e["type"], e["from_state"], e["to_state"]) for e in history] == [
        (1, "registered", None, "ready"),
        (2, "ignored", "ready", "ignored"),
        (3, "reopened", "ignored", "ready"),
    ]
    assert all(e["actor"].startswith("operator:") for e in history)
    assert [e["reason"] for e in history[1:]] == ["sample swap", "swap fixed"]
    text = ok(sh(config_file, "history", "ws-normal"))
    for expected in (
        "registered",
        "started",
        "complete",
        "ready -> in_progress",
        "host-a:42:abc",
        "operator:",
    ):
        assert expected in text

    stats = json.loads(ok(sh(config_file, "stats", "--json")))
    assert stats["totals"] == {**dict.fromkeys(stats["totals"], 0), "ready": 2, "complete": 1}


def _complete(endpoint: str, name: str) -> None:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    store = DynamoStore(client, "daylily-worksets")

    async def scenario() -> None:
        ws = await store.get(WorksetId(name))
        assert ws is not None
        lease = Lease(token="t", owner="host-a:42:abc", heartbeat_at_ms=ws.created_at_ms, expires_at_ms=0)
        holder = Context(now_ms=ws.created_at_ms + 1, actor="host-a:42:abc", reason="claimed")
        claimed = await store.commit(states.decide(ws, Action.CLAIM, holder, lease=lease))
        await store.commit(states.decide(claimed, Action.COMPLETE, holder), fence_token="t")

    run(scenario())


# --- refusals and failures, in-process for speed ------------------------------------------------------------------


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def ready_table(config_file: Path, aws_endpoint: str) -> Path:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    schema.ensure_table(client, TableConfig(name="daylily-worksets"))
    return config_file


def test_register_defaults_to_the_configured_bucket_and_prefix(ready_table: Path, capsys: Any) -> None:
    code, out, _ = main(capsys, "--config", str(ready_table), "register", "ws-7", "--json", "--no-validate")
    assert code == 0
    data = json.loads(out)
    assert data["registered"] and data["workset"]["s3_uri"] == "s3://lab-bucket/worksets/ws-7/"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("register", "bad/id"), "invalid workset id 'bad/id'"),
        (
            ("register", "ws-1", "--priority", "high"),
            "invalid priority 'high': use one of urgent, normal, low",
        ),
        (("register", "ws-1", "--bucket", "Bad_Bucket"), "invalid S3 bucket name"),
        (("list", "--state", "running"), "invalid state 'running'"),
        (("list", "--limit", "0"), "must be at least 1"),
        (("list", "--limit", "abc"), "argument --limit: must be a whole number, got 'abc'"),
        (("retry",), "retry: give one or more workset ids, - to read them from stdin, or filters"),
        (("report", "--since", "yesterday"), "'yesterday' is neither a duration (90s, 30m, 12h, 7d, 2w) nor a time"),
        (("report", "--since", "7x"), "is neither a duration"),
        (("report", "--since", "2026-13-01"), "is neither a duration"),
        (("report", "--format", "xlsx"), "argument --format: invalid choice: 'xlsx'"),
        (("report", "--state", "done"), "invalid state 'done'"),
        (("report", "--priority", "p1"), "invalid priority 'p1'"),
    ],
)
def test_malformed_arguments_are_usage_errors(
    ready_table: Path, capsys: Any, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--config", str(ready_table), *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_a_prefix_that_is_not_the_workset_folder_is_refused(ready_table: Path, capsys: Any) -> None:
    code, _, err = main(capsys, "--config", str(ready_table), "register", "ws-1", "--prefix", "worksets/other/")
    assert code == 1 and "use worksets/ws-1/ (a [scan] prefix, then the workset id)" in err


def test_unknown_worksets_are_reported_plainly(ready_table: Path, capsys: Any) -> None:
    for command in ("show", "history", "retry", "cancel", "ignore"):
        code, _, err = main(capsys, "--config", str(ready_table), command, "ghost")
        assert code == 1 and "workset ghost is not registered" in err


def test_cancel_set_priority_and_show(ready_table: Path, capsys: Any) -> None:
    cfg = ("--config", str(ready_table))
    assert main(capsys, *cfg, "register", "a", "--no-validate")[0] == 0
    assert main(capsys, *cfg, "register", "b", "--priority", "low", "--no-validate")[0] == 0
    code, out, _ = main(capsys, *cfg, "set-priority", "b", "urgent")
    assert code == 0 and "b: ready -> ready (priority low -> urgent)" in out
    assert [w["workset_id"] for w in json.loads(main(capsys, *cfg, "list", "--json")[1])] == ["b", "a"]
    assert main(capsys, *cfg, "cancel", "a")[0] == 0
    code, _, err = main(capsys, *cfg, "cancel", "a")
    assert code == 1 and "cannot cancel a workset that is cancelled" in err
    code, out, _ = main(capsys, *cfg, "show", "a")
    assert code == 0 and "cancelled" in out
    shown = json.loads(main(capsys, *cfg, "show", "a", "--json")[1])
    assert shown["state"] == "cancelled" and shown["version"] == 2
    code, out, _ = main(capsys, *cfg, "stats")
    assert code == 0 and "cancelled" in out and "oldest ready:" in out


def test_a_missing_table_points_at_init(config_file: Path, capsys: Any) -> None:
    code, _, err = main(capsys, "--config", str(config_file), "list")
    assert code == 1 and "table daylily-worksets does not exist (run `workset-monitor init`)" in err


def test_init_refuses_a_table_with_the_wrong_schema(config_file: Path, aws_endpoint: str, capsys: Any) -> None:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    client.create_table(
        TableName="daylily-worksets",
        AttributeDefinitions=[{"AttributeName": "workset_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "workset_id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    code, _, err = main(capsys, "--config", str(config_file), "init")
    assert code == 1 and "exists but cannot be used" in err and "expected pk HASH, sk RANGE" in err


def test_unreachable_aws_exits_69(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[aws]\nregion = "us-east-1"\nendpoint_url = "http://127.0.0.1:9"\nmax_attempts = 1\nconnect_timeout_s = 1\n'
    )
    code, _, err = main(capsys, "--config", str(path), "stats")
    assert code == 69 and "AWS unreachable" in err


def test_json_output_of_a_transition(ready_table: Path, capsys: Any) -> None:
    cfg = ("--config", str(ready_table))
    main(capsys, *cfg, "register", "a", "--no-validate")
    code, out, _ = main(capsys, *cfg, "ignore", "a", "--json", "--reason", "duplicate run")
    data = json.loads(out)
    assert code == 0 and (data["from_state"], data["to_state"]) == ("ready", "ignored")
    assert data["event"]["reason"] == "duplicate run" and data["event"]["seq"] == 2


def test_help_and_version_work_without_config(capsys: Any) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0 and "workset-monitor" in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "register" in result.stdout


def test_release_takes_a_running_workset_back_and_requires_a_reason(
    ready_table: Path, aws_endpoint: str, capsys: Any
) -> None:
    cfg = ("--config", str(ready_table))
    main(capsys, *cfg, "register", "stuck", "--no-validate")
    code, _, err = main(capsys, *cfg, "release", "stuck", "--reason", "x")
    assert code == 1 and "cannot release a workset that is ready: only a running workset can be released" in err
    _claim(aws_endpoint, "stuck")
    with pytest.raises(SystemExit) as caught:
        cli.main([*cfg, "release", "stuck"])
    assert caught.value.code == 2 and "--reason" in capsys.readouterr().err
    code, out, _ = main(capsys, *cfg, "release", "stuck", "--reason", "host-a is wedged", "--json")
    data = json.loads(out)
    assert code == 0 and (data["from_state"], data["to_state"]) == ("in_progress", "ready")
    shown = json.loads(main(capsys, *cfg, "show", "stuck", "--json")[1])
    assert shown["lease_owner"] is None and shown["attempts"] == 0
    assert shown["held_off_for"] == "host-a:42:abc"  # no claim until the old holder has surely stopped
    history = json.loads(main(capsys, *cfg, "history", "stuck", "--json")[1])
    assert (history[-1]["type"], history[-1]["reason"]) == ("released", "host-a is wedged")


def _claim(endpoint: str, name: str) -> None:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    store = DynamoStore(client, "daylily-worksets")

    async def scenario() -> None:
        ws = await store.get(WorksetId(name))
        assert ws is not None
        lease = Lease(token="t", owner="host-a:42:abc", heartbeat_at_ms=ws.created_at_ms, expires_at_ms=0)
        await store.commit(
            states.decide(ws, Action.CLAIM, Context(now_ms=ws.created_at_ms + 1, actor="a"), lease=lease)
        )

    run(scenario())


def test_retry_of_an_invalid_workset_validates_its_folder_again(
    ready_table: Path, aws_endpoint: str, capsys: Any
) -> None:
    """The lab forgot daylily_work.yaml: `retry` refuses until the folder is fixed (the pipeline would run on the
    input that was refused); `retry --force` runs it as it is."""
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    lab = Lab(s3)
    store = DynamoStore(boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint), "daylily-worksets")
    for name in ("forgot", "as-is"):
        lab.workset(name, files={"daylily_work.yaml": None})
        run(
            actions.register(
                store,
                workset_id=WorksetId(name),
                bucket=BUCKET,
                prefix=f"worksets/{name}/",
                priority=Priority.NORMAL,
                ctx=Context(now_ms=1, actor="scanner"),
                invalid_reason="daylily_work.yaml: required file is missing",
            )
        )
    cfg = ("--config", str(ready_table))

    code, _, err = main(capsys, *cfg, "retry", "forgot")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "forgot is still invalid: daylily_work.yaml: required file is missing" in err
    assert "s3://lab-bucket/worksets/forgot/" in err and "retry --force" in err
    assert run(store.get(WorksetId("forgot"))).state is State.ERROR  # type: ignore[union-attr]

    lab.put("worksets/forgot/daylily_work.yaml", b"dy-r: -p produce_snv_concordances\n")
    code, out, _ = main(capsys, *cfg, "retry", "forgot")
    assert code == 0 and "forgot: error -> ready" in out

    code, out, _ = main(capsys, *cfg, "retry", "as-is", "--force", "--reason", "the step does not need it")
    assert code == 0 and "as-is: error -> ready" in out


def test_show_of_a_corrupt_item_is_one_clear_line(ready_table: Path, aws_endpoint: str, capsys: Any) -> None:
    """Issue 14.7: reading an item with a fraction in an integer attribute ended in a traceback."""
    config = str(ready_table)
    for name in ("ws-bad", "ws-good"):
        registered = main(
            capsys, "--config", config, "register", name, "--prefix", f"worksets/{name}/", "--no-validate"
        )
        assert registered[0] == 0
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    client.update_item(
        TableName="daylily-worksets",
        Key={"pk": {"S": "ws-bad"}, "sk": {"S": "ws"}},
        UpdateExpression="SET attempts = :v",
        ExpressionAttributeValues={":v": {"N": "1.5"}},
    )
    code, _, err = main(capsys, "--config", config, "show", "ws-bad")
    assert (code, err.strip().splitlines()) == (
        1,
        [
            "workset-monitor: corrupt item in table daylily-worksets (pk='ws-bad', sk='ws'): "
            "attribute attempts holds '1.5'; only integers are expected"
        ],
    )
    code, out, _ = main(capsys, "--config", config, "list")
    assert code == 0 and "ws-good" in out and "ws-bad" not in out


# --- hand registration follows the scanner's rules ---------------------------------------------------------------


@pytest.fixture
def lab(ready_table: Path, aws_endpoint: str) -> Lab:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    return Lab(s3)


def _registered(aws_endpoint: str) -> list[str]:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    return sorted({item["pk"]["S"] for item in client.scan(TableName="daylily-worksets")["Items"]})


@pytest.mark.parametrize(
    ("workset", "prefix"),
    [
        ("ok-id", "../../ok-id/"),
        ("ok-id", "worksets/../ok-id/"),
        ("ok-id", "worksets/x/../ok-id/"),
        ("ok-id", "/worksets/ok-id/"),
        ("ok-id", "elsewhere/ok-id/"),  # outside every configured prefix
        ("ok-id", "worksets/nested/ok-id/"),
        ("ok-id", "worksets/\nfake log line/ok-id/"),
        ("ok-id", "worksets/$(id)/ok-id/"),
        ("ok-id", "worksets/" + "a" * 1200 + "/ok-id/"),
    ],
)
def test_hand_registration_takes_only_the_folders_the_scanner_would(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any, workset: str, prefix: str
) -> None:
    """register --prefix accepted ../../ok-id/, absolute paths, a newline, 1 200 characters and folders outside
    every configured prefix, and the daemon ran the pipeline on them."""
    with contextlib.suppress(botocore.exceptions.ClientError):  # a valid folder is there, where S3 allows one
        lab.workset(workset, prefix=prefix.removesuffix(f"{workset}/").lstrip("/"))
    code, out, err = main(capsys, "--config", str(ready_table), "register", workset, "--prefix", prefix)
    assert code == 1 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "worksets/ok-id/" in lines[0], err  # says which folder it would take
    assert "\n" not in lines[0] and "\x1b" not in err
    assert _registered(aws_endpoint) == []


def test_hand_registration_validates_the_folder_as_the_scanner_does(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    cfg = ("--config", str(ready_table))
    lab.workset("ws-good", priority="urgent")
    code, out, _ = main(capsys, *cfg, "register", "ws-good")
    assert code == 0 and "registered ws-good (urgent)" in out  # the priority the folder asks for
    lab.workset("ws-bad", files={"stage_samples.tsv": None})
    code, _, err = main(capsys, *cfg, "register", "ws-bad")
    assert code == 1 and "stage_samples.tsv: required file is missing" in err and "--no-validate" in err
    lab.workset("ws-early", sentinels=())
    code, _, err = main(capsys, *cfg, "register", "ws-early")
    assert code == 1 and "no daylily.ready yet" in err
    lab.workset("ws-old", sentinels=("daylily.ready", "daylily.complete"))
    code, _, err = main(capsys, *cfg, "register", "ws-old")
    assert code == 1 and "workset-monitor migrate" in err
    lab.workset("ws-hands-off", sentinels=("daylily.ignore",))
    code, _, err = main(capsys, *cfg, "register", "ws-hands-off")
    assert code == 1 and "daylily.ignore is present" in err
    code, _, err = main(capsys, *cfg, "register", "ws-nowhere")
    assert code == 1 and "no daylily.ready yet" in err
    assert _registered(aws_endpoint) == ["ws-good"]
    # An operator who knows better says so.
    code, out, _ = main(capsys, *cfg, "register", "ws-early", "--no-validate", "--priority", "low")
    assert code == 0 and "registered ws-early (low)" in out
    assert sorted(_registered(aws_endpoint)) == ["ws-early", "ws-good"]


def test_a_folder_registered_under_a_stand_in_id_is_never_run(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    """retry of a folder registered under a stand-in id (its name unusable) re-validated the content, not the name,
    and ran it: {s3_uri} then carried the unsafe name into the step's arguments."""
    name = "x;$(id)"
    lab.workset(name)
    store = DynamoStore(boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint), "daylily-worksets")
    s3 = S3Source(boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint), BUCKET)
    scanner = Scanner(store, s3, SystemClock(), prefixes=["worksets/"], actor="scanner:test", notify=nobody)
    stand_in = scanner.folder("worksets/", name).workset_id  # what a scan registers it under, as invalid
    run(
        actions.register(
            store,
            workset_id=stand_in,
            bucket=BUCKET,
            prefix=f"worksets/{name}/",
            priority=Priority.NORMAL,
            ctx=Context(now_ms=1, actor="scanner:test", reason="found in S3"),
            invalid_reason="folder name is not a valid workset id",
        )
    )
    (ws,) = run(store.list())
    assert ws.workset_id.startswith("invalid-name-") and ws.state is State.ERROR
    for force in ((), ("--force",)):
        code, _, err = main(capsys, "--config", str(ready_table), "retry", ws.workset_id, *force)
        assert code == 1 and "not a valid workset id" in err and "rename the folder" in err, err
        again = run(store.get(ws.workset_id))
        assert again is not None and again.state is State.ERROR


HOSTILE = "bad manifest \x1b[2J\x1b[H\r\n$ sudo rm -rf / \x07\x9b31m\u202egnp.exe\x00"


def test_terminal_output_neutralises_control_characters(ready_table: Path, aws_endpoint: str, capsys: Any) -> None:
    """Terminal escapes from manifests and S3 keys were stored in last_error and printed raw by show and list
    (clear screen, a fake prompt)."""
    store = DynamoStore(boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint), "daylily-worksets")
    ctx = Context(now_ms=1_000, actor="scanner:test\x1b[31m", reason="found \x1b]0;title\x07 in S3")
    register(store, "ws-esc", ctx=ctx, invalid_reason=HOSTILE)
    cfg = ("--config", str(ready_table))
    for command in (("show", "ws-esc"), ("list",), ("history", "ws-esc"), ("retry", "ws-esc")):
        _, out, err = main(capsys, *cfg, *command)
        for text in (out, err):
            assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in text), (command, text)
            assert "\u202e" not in text, command
        if command[0] in ("show", "list"):
            assert "\\x1b[2J" in out, out  # shown, escaped: an operator still sees what was there
        assert "$ sudo" not in "\n".join(line[:2] for line in (out + err).splitlines()), command
    _, out, _ = main(capsys, *cfg, "show", "ws-esc", "--json")
    assert json.loads(out)["last_error"].startswith("bad manifest \x1b[2J")  # JSON keeps the value, escaped by JSON


# --- --json everywhere, and a pipe closed early ----------------------------------------------------------------


def test_errors_under_json_are_json(ready_table: Path, capsys: Any) -> None:
    """--json was not uniform: errors stayed plain text."""
    code, out, err = main(capsys, "--config", str(ready_table), "show", "ghost", "--json")
    assert code == 1 and out == ""
    assert json.loads(err) == {"error": "workset ghost is not registered", "exit_code": 1}
    code, out, err = main(capsys, "--config", str(ready_table.parent / "missing.toml"), "list", "--json")
    assert code == 78 and json.loads(err)["exit_code"] == 78 and "config file not found" in json.loads(err)["error"]


def test_healthcheck_and_export_speak_json(ready_table: Path, capsys: Any, tmp_path: Path) -> None:
    """healthcheck and export ignored --json."""
    code, out, _ = main(
        capsys, "--config", str(ready_table), "healthcheck", "--url", "http://127.0.0.1:9/healthz", "--json"
    )
    data = json.loads(out)
    assert code == 1 and data["healthy"] is False and data["url"] == "http://127.0.0.1:9/healthz" and data["error"]
    target = tmp_path / "backup.jsonl"
    code, out, err = main(capsys, "--config", str(ready_table), "export", "--out", str(target), "--json")
    assert code == 0 and json.loads(out) == {"exported": 0, "table": "daylily-worksets", "file": str(target)}
    assert err == ""


def test_export_into_a_pipe_closed_early_ends_quietly(ready_table: Path, aws_endpoint: str) -> None:
    """`export | head` ended in "internal error: BrokenPipeError"."""
    store = DynamoStore(boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint), "daylily-worksets")

    async def fill() -> None:
        for i in range(150):  # ~100 KB of export: more than a pipe holds
            ctx = Context(now_ms=1_000 + i, actor="test", reason="x" * 400)
            await actions.register(
                store,
                workset_id=WorksetId(f"ws-{i:03d}"),
                bucket=BUCKET,
                prefix=f"worksets/ws-{i:03d}/",
                priority=Priority.NORMAL,
                ctx=ctx,
            )

    run(fill())
    exe = Path(sys.executable).with_name("workset-monitor")
    result = subprocess.run(
        ["sh", "-c", f"'{exe}' --config '{ready_table}' export | head -c 100 >/dev/null; echo $? >&2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipe" not in result.stderr, result.stderr


def test_the_demo_takes_json() -> None:
    """demo rejected --json."""
    from monitor import demo

    assert cli.build_parser().parse_args(["demo", "--until-idle", "--json"]).json is True
    out = io.StringIO()
    assert demo._summary({}, 0, out, as_json=True) == 1
    data = json.loads(out.getvalue())
    assert data["ok"] is False and data["daemon_exit_code"] == 0
    assert {w["state"] for w in data["worksets"]} == {"not registered"} and len(data["worksets"]) == len(demo.EXPECTED)


def test_history_shows_what_each_channel_made_of_an_event(ready_table: Path, aws_endpoint: str, capsys: Any) -> None:
    """The event items held notify_sns = 'failed: ...' but history --json never printed it, nor the delivery rounds:
    an operator could not see from the CLI that an alert was never delivered."""
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    cfg = ("--config", str(ready_table))
    assert main(capsys, *cfg, "register", "ws-n", "--no-validate")[0] == 0
    client.update_item(
        TableName="daylily-worksets",
        Key={"pk": {"S": "ws-n"}, "sk": {"S": "evt#0000000001"}},
        UpdateExpression="SET notify_sns = :f, notify_webhook = :s, notify_attempts = :n",
        ExpressionAttributeValues={
            ":f": {"S": "failed: NotFound: Endpoint does not exist"},
            ":s": {"S": "sent"},
            ":n": {"N": "3"},
        },
    )
    _, out, _ = main(capsys, *cfg, "history", "ws-n", "--json")
    (event,) = json.loads(out)
    assert event["notified"] == {"sns": "failed: NotFound: Endpoint does not exist", "webhook": "sent"}
    assert event["delivery_rounds"] == 3 and event["notification_pending"] is False
    _, out, _ = main(capsys, *cfg, "history", "ws-n")
    assert "sns: failed: NotFound: Endpoint does not exist" in out and "webhook: sent" in out


def test_an_operator_s_changes_enter_the_outbox_when_a_channel_wants_them(ready_table: Path, capsys: Any) -> None:
    """The CLI writes the events its actions cause as the daemon does: pending in the outbox exactly when some
    configured channel wants them (a daemon delivers them), by the same [notify] filters."""
    with ready_table.open("a") as config:
        config.write(
            '\n[notify]\nevents = ["registered", "cancelled"]\nmin_priority = "low"\n'
            '[notify.webhook]\nurl = "http://127.0.0.1:9/hook"\n'
        )
    cfg = ("--config", str(ready_table))
    for action in (("register", "ws-n", "--no-validate"), ("set-priority", "ws-n", "urgent"), ("cancel", "ws-n")):
        assert main(capsys, *cfg, *action)[0] == 0, action
    assert main(capsys, *cfg, "retry", "ws-n")[0] == 0
    _, out, _ = main(capsys, *cfg, "history", "ws-n", "--json")
    pending = {event["type"]: event["notification_pending"] for event in json.loads(out)}
    assert pending == {"registered": True, "priority_changed": False, "cancelled": True, "reopened": False}


def test_setting_the_priority_a_workset_has_writes_nothing(ready_table: Path, capsys: Any) -> None:
    """Same-value set-priority wrote an audit event."""
    cfg = ("--config", str(ready_table))
    assert main(capsys, *cfg, "register", "ws-p", "--priority", "urgent", "--no-validate")[0] == 0
    code, out, _ = main(capsys, *cfg, "set-priority", "ws-p", "urgent")
    assert code == 0 and "ws-p already has priority urgent; nothing changed" in out
    _, out, _ = main(capsys, *cfg, "history", "ws-p", "--json")
    assert [e["type"] for e in json.loads(out)] == ["registered"]


def test_report_after_a_two_step_run_gives_each_step_s_duration_as_its_process_measured_it(
    ready_table: Path, lab: Lab, tmp_path: Path
) -> None:
    """The operator's morning report: a daemon ran two steps; ``report --format csv`` parses as CSV, has a numeric
    column per step, and each agrees with what the step process measured of itself to within 1 s."""
    own = tmp_path / "own-times"
    step = (
        "import sys, time; t = time.monotonic(); time.sleep(float(sys.argv[1])); "
        f"open({str(own)!r}, 'a').write(sys.argv[2] + ' ' + str(time.monotonic() - t) + chr(10))"
    )
    with ready_table.open("a") as config:
        for name, seconds in (("stage", "0.4"), ("analyse", "1.2")):
            config.write(f'\n[[pipeline.steps]]\nname = "{name}"\n')
            config.write(f"command = {json.dumps([sys.executable, '-c', step, seconds, name])}\n")
    lab.workset("ws-1")
    lab.workset("ws-2")
    ok(sh(ready_table, "run", "--once"))
    table = list(csv.DictReader(io.StringIO(ok(sh(ready_table, "report", "--format", "csv")))))
    assert [(r["workset"], r["state"]) for r in table] == [("ws-1", "complete"), ("ws-2", "complete")]
    measured: dict[str, list[float]] = {}
    for line in own.read_text().splitlines():
        name, seconds = line.split()
        measured.setdefault(name, []).append(float(seconds))
    for r in table:
        for name in ("stage", "analyse"):
            recorded = float(r[f"{name}_s"])  # numeric, one column per step
            assert any(abs(recorded - m) <= 1.0 for m in measured[name]), (name, recorded, measured)
        assert float(r["wall_s"]) >= float(r["stage_s"]) + float(r["analyse_s"]) - 0.2  # rounding of each to 0.1 s
        assert float(r["claim_wait_s"]) >= 0 and r["attempts"] == "1"
        # what validation counted at registration: 2 manifest rows, 4 FASTQ objects of 16 bytes (tests/lab.py)
        assert (r["samples"], r["data_bytes"]) == ("2", "64"), r
    tsv = ok(sh(ready_table, "report", "--state", "complete", "--since", "1h"))  # not a terminal: TSV
    assert tsv.splitlines()[0].split("\t")[-2:] == ["stage_s", "analyse_s"] and len(tsv.splitlines()) == 3
    data = json.loads(ok(sh(ready_table, "report", "--json", "--prefix", "worksets/ws-2")))
    assert (data["worksets"][0]["samples"], data["worksets"][0]["data_bytes"]) == (2, 64)
    assert [w["workset"] for w in data["worksets"]] == ["ws-2"] and set(data["worksets"][0]["steps"]) == {
        "stage",
        "analyse",
    }
    assert {s["what"] for s in data["summary"]} == {"wall time", "stage", "analyse"}
    assert ok(sh(ready_table, "report", "--since", "2999-01-01")).splitlines()[1:] == []  # header only
    text = ok(sh(ready_table, "report", "--format", "table"))  # what a terminal gets by default
    assert text.splitlines()[0].split()[-2:] == ["STAGE_S", "ANALYSE_S"] and "2 workset(s)" in text
    assert "analyse: median" in text and "wall time: median" in text
    assert "4 samples, 128 B of data" in text  # the summary's totals
