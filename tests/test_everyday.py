"""The operator's everyday tools, through the real command line against a moto server on 127.0.0.1: checking a folder
before writing ``daylily.ready``, running one workset by hand, acting on many worksets at once."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor import logs, states
from monitor.aws.dynamo import DynamoStore
from monitor.model import Lease, WorksetId
from monitor.states import Action, Context
from tests import test_cli
from tests.conftest import REGION, register, run
from tests.faults import aws_calls
from tests.lab import Lab
from tests.test_cli import _registered, main, ok, sh

config_file, ready_table, lab = test_cli.config_file, test_cli.ready_table, test_cli.lab  # the CLI tests' fixtures


@pytest.fixture(autouse=True)
def _logs_to_this_test_s_stderr() -> None:
    """The last command of an earlier test on this worker left the log handler on that test's (closed) captured
    stderr; these tests log (boto3, asyncio) before their first command, so point it at this test's."""
    logs.configure(level="debug", fmt="json")


GOOD_INFO = b"workset_name: test\npriority: urgent\n"


def test_validate_lists_every_problem_of_a_bad_folder_and_writes_nothing(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    """The check an operator runs before writing daylily.ready: every problem at once, each with file, line and
    column (the scanner's validation stopped at the first)."""
    cfg = ("--config", str(ready_table))
    bad_manifest = (
        b"RUN_ID\tSAMPLE_ID\tR1_FQ\tR2_FQ\n"
        b"R1\tS0\tS0_R1.fastq.gz\tS0_R2.fastq.gz\n"  # both exist
        b"R1\tS1\tmissing_R1.fastq.gz\tS0_R2.fastq.gz\n"  # R1 does not exist
        b"R1\tS2\n"  # short row
        b"R1\tS3\t../../etc/passwd\ts3://lab-bucket/nowhere.fq\n"  # leaves sample_data/; does not exist
    )
    lab.workset(
        "ws-bad",
        sentinels=(),
        files={"daylily_work.yaml": None, "daylily_info.yaml": b"priority: high\n", "stage_samples.tsv": bad_manifest},
    )
    before = lab.keys()
    code, out, err = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/ws-bad/")
    assert code == 1 and err == ""
    assert out.splitlines() == [
        "s3://lab-bucket/worksets/ws-bad/: 6 problems",
        "  daylily_work.yaml: required file is missing",
        "  daylily_info.yaml line 1 column 11: priority 'high' is not one of urgent, normal, low",
        "  stage_samples.tsv line 3 column 3: R1_FQ: s3://lab-bucket/worksets/ws-bad/sample_data/missing_R1.fastq.gz "
        "does not exist",
        "  stage_samples.tsv line 4 column 1: 2 columns, but the header has 4",
        "  stage_samples.tsv line 5 column 3: R1_FQ: '../../etc/passwd' may not leave sample_data/ ('..')",
        "  stage_samples.tsv line 5 column 4: R2_FQ: s3://lab-bucket/nowhere.fq does not exist",
        "note: no daylily.ready yet: fix the problems before writing it",
    ]
    code, out, _ = main(capsys, *cfg, "validate", "--prefix", "worksets/ws-bad", "--json")
    data = json.loads(out)
    assert code == 1 and data["valid"] is False and len(data["problems"]) == 6
    assert data["problems"][2] == {
        "file": "stage_samples.tsv",
        "line": 3,
        "column": 3,
        "message": "R1_FQ: s3://lab-bucket/worksets/ws-bad/sample_data/missing_R1.fastq.gz does not exist",
    }
    assert lab.keys() == before and _registered(aws_endpoint) == []  # nothing written, anywhere


def test_validate_passes_a_good_folder_and_says_what_happens_next(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    cfg = ("--config", str(ready_table))
    lab.workset("ws-good", samples=3, sentinels=(), files={"daylily_info.yaml": GOOD_INFO})
    code, out, _ = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/ws-good")
    assert code == 0, out
    assert out.splitlines() == [
        "s3://lab-bucket/worksets/ws-good/: valid (3 sample row(s), 6 data object(s), priority urgent)",
        "note: no daylily.ready yet: write it to start the run",
    ]
    lab.workset("ws-ready", prefix="elsewhere/")
    code, out, _ = main(capsys, *cfg, "validate", "--prefix", "elsewhere/ws-ready/", "--json")
    data = json.loads(out)
    assert code == 0 and data["valid"] and data["problems"] == [] and data["samples"] == 2
    assert data["notes"][0].startswith("no [scan] prefix of this configuration holds this folder")
    assert data["notes"][1] == "daylily.ready is present: the scanner registers it"
    lab.workset("ws-old", sentinels=("daylily.ready", "daylily.complete"))
    _, out, _ = main(capsys, *cfg, "validate", "--prefix", "worksets/ws-old/")
    assert "note: daylily.complete from the legacy monitor: `workset-monitor migrate` brings it over" in out
    assert _registered(aws_endpoint) == []


def test_validate_of_nothing_or_a_bad_name_says_so(ready_table: Path, lab: Lab, capsys: Any) -> None:
    cfg = ("--config", str(ready_table))
    code, out, _ = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/typo/")
    assert code == 1 and "  s3://lab-bucket/worksets/typo/: is empty or does not exist" in out.splitlines()
    lab.workset("bad name!")
    code, out, _ = main(capsys, *cfg, "validate", "s3://lab-bucket/worksets/bad name!/")
    assert code == 1 and "  folder name: invalid workset id 'bad name!'" in out
    code, _, err = main(capsys, *cfg, "validate", "s3://no-such-bucket-here/worksets/x/")
    assert code == 1 and err.strip() == "workset-monitor: bucket no-such-bucket-here does not exist"


def _two_steps(config: Path, tmp_path: Path) -> tuple[Path, Path]:
    """stage and analyse, each noting its run; analyse fails (exit 2) while the file ``broken`` exists, and sleeps
    while ``slow`` exists."""
    runs, broken, slow = tmp_path / "runs", tmp_path / "broken", tmp_path / "slow"
    step = (
        "import os, sys, time; name = sys.argv[1]; open(sys.argv[2], 'a').write(name + chr(10)); "
        "[time.sleep(0.1) for _ in range(300) if os.path.exists(sys.argv[4])]; "
        "sys.exit(2 if name == 'analyse' and os.path.exists(sys.argv[3]) else 0)"
    )
    with config.open("a") as f:
        for name in ("stage", "analyse"):
            f.write(f'\n[[pipeline.steps]]\nname = "{name}"\n')
            f.write(f"command = {json.dumps([sys.executable, '-c', step, name, str(runs), str(broken), str(slow)])}\n")
    return runs, broken


def test_one_step_of_a_failed_workset_is_run_again_by_hand_after_a_fix(
    ready_table: Path, lab: Lab, tmp_path: Path
) -> None:
    """The operator's fix: analyse failed; fix it, `retry`, `run --workset ID --step analyse` runs exactly that step
    (stage is not run again), records it as the daemon would, and the workset completes."""
    runs, broken = _two_steps(ready_table, tmp_path)
    broken.touch()
    lab.workset("ws-1")
    ok(sh(ready_table, "run", "--once"))
    assert json.loads(ok(sh(ready_table, "show", "ws-1", "--json")))["state"] == "error"
    assert runs.read_text().split() == ["stage", "analyse"]
    broken.unlink()  # the fix
    refused_ = sh(ready_table, "run", "--workset", "ws-1", "--step", "analyse")
    assert refused_.returncode == 1 and "ws-1 is error: only a ready or retrying workset can be run" in refused_.stderr
    ok(sh(ready_table, "retry", "ws-1", "--reason", "reference genome fixed"))
    typo = sh(ready_table, "run", "--workset", "ws-1", "--step", "analyze")
    assert typo.returncode == 1
    assert "--step 'analyze' is not a step of [[pipeline.steps]]: stage, analyse" in typo.stderr
    result = sh(ready_table, "run", "--workset", "ws-1", "--step", "analyse")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "ws-1: every step finished (complete)"
    assert result.stdout.splitlines()[1].startswith("  analyse: ")
    assert runs.read_text().split() == ["stage", "analyse", "analyse"]  # exactly that step
    trail = json.loads(ok(sh(ready_table, "history", "ws-1", "--json")))
    tail = [(e["type"], e.get("step_run", {}) and e["step_run"]["step"]) for e in trail[-4:]]
    assert tail == [("reopened", None), ("started", None), ("step_finished", "analyse"), ("complete", None)]
    started = trail[-3]
    assert started["actor"].startswith("operator:") and started["reason"] == "run by hand"
    assert trail[-2]["actor"] == started["actor"] and trail[-2]["step_run"]["exit_code"] == 0


def test_a_finished_step_run_again_by_hand_leaves_the_rest_to_the_daemons(
    ready_table: Path, lab: Lab, tmp_path: Path
) -> None:
    runs, broken = _two_steps(ready_table, tmp_path)
    broken.touch()
    lab.workset("ws-1")
    ok(sh(ready_table, "run", "--once"))
    ok(sh(ready_table, "retry", "ws-1"))
    result = sh(ready_table, "run", "--workset", "ws-1", "--step", "stage", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["ending"], data["state"], data["steps_run"]) == ("step_done", "ready", ["stage"])
    assert data["workset"]["steps_done"] == ["stage"]  # once, though it ran twice
    assert runs.read_text().split() == ["stage", "analyse", "stage"]
    broken.unlink()
    assert sh(ready_table, "run", "--workset", "ws-1").returncode == 0  # the remaining steps: analyse only
    assert runs.read_text().split() == ["stage", "analyse", "stage", "analyse"]
    assert json.loads(ok(sh(ready_table, "show", "ws-1", "--json")))["state"] == "complete"


def test_a_hand_run_holds_the_lease_against_others_and_gives_it_back_on_ctrl_c(
    ready_table: Path, lab: Lab, tmp_path: Path
) -> None:
    runs, _ = _two_steps(ready_table, tmp_path)
    (tmp_path / "slow").touch()  # the step runs until the file is gone (30 s at most)
    lab.workset("ws-1")
    ok(sh(ready_table, "register", "ws-1"))
    exe = Path(sys.executable).with_name("workset-monitor")
    env = dict(os.environ, WORKSET_MONITOR_CONFIG=str(ready_table))
    with subprocess.Popen(
        [str(exe), "run", "--workset", "ws-1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as first:
        for _ in range(200):  # until its step is running (20 s at most)
            if runs.exists():
                break
            time.sleep(0.1)
        second = sh(ready_table, "run", "--workset", "ws-1")
        assert second.returncode == 1 and "ws-1 is being run by operator:" in second.stderr, second.stderr
        shown = json.loads(ok(sh(ready_table, "show", "ws-1", "--json")))
        assert shown["state"] == "in_progress" and shown["attempts"] == 1
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=30)
    assert first.returncode == 1, err
    assert out.splitlines()[0] == "ws-1: stopped; given back (no attempt counted) (ready)"
    shown = json.loads(ok(sh(ready_table, "show", "ws-1", "--json")))
    assert (shown["state"], shown["attempts"], shown["lease_owner"]) == ("ready", 0, None)
    assert runs.read_text().split() == ["stage"]  # stopped, never finished
    assert json.loads(ok(sh(ready_table, "history", "ws-1", "--json")))[-1]["type"] == "released"


# --- many worksets at once -----------------------------------------------------------------------------------------


def _failed(endpoint: str, name: str, *, minutes_ago: float, category: str = "step", prefix: str = "worksets/") -> None:
    """Register ``name`` and record a failed run of it, ``minutes_ago`` (the daemon's writes, made directly)."""
    store = DynamoStore(boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint), "daylily-worksets")
    at_ms = int(time.time() * 1000 - minutes_ago * 60_000)
    ctx = Context(now_ms=at_ms - 600_000, actor="scanner:test")  # registered ten minutes before
    register(store, name, prefix=prefix, ctx=ctx, invalid_reason="bad manifest" if category == "validation" else None)
    if category == "validation":
        return
    ws = run(store.get(WorksetId(name)))
    lease = Lease(token="t" * 32, owner="host-a:1:aaaa", heartbeat_at_ms=at_ms - 500, expires_at_ms=at_ms + 60_000)
    claimed = run(store.commit(states.decide(ws, Action.CLAIM, Context(now_ms=at_ms - 500, actor="a"), lease=lease)))
    failure = states.decide(
        claimed, Action.FAIL_PERMANENT, Context(now_ms=at_ms, actor="a"), error="exit 2", error_category=category
    )
    run(store.commit(failure, fence_token="t" * 32))


def test_bulk_retry_after_an_outage_reopens_exactly_what_the_filters_select(
    ready_table: Path, lab: Lab, aws_endpoint: str, capsys: Any
) -> None:
    """An outage failed a batch of worksets in the last hour: list them, then re-open them, each its own write; one
    that cannot be re-opened (its folder is still invalid) is reported and the exit code says so."""
    cfg = ("--config", str(ready_table))
    _failed(aws_endpoint, "ws-a", minutes_ago=20)
    _failed(aws_endpoint, "ws-b", minutes_ago=5)
    _failed(aws_endpoint, "ws-old", minutes_ago=120)  # before the outage
    _failed(aws_endpoint, "ws-bad", minutes_ago=1, category="validation")  # its folder does not exist
    assert main(capsys, *cfg, "register", "ws-ready", "--no-validate")[0] == 0
    before = _items(aws_endpoint)

    code, out, _ = main(capsys, *cfg, "retry", "--state", "error", "--since", "1h", "--dry-run", "--json")
    planned = json.loads(out)
    assert code == 0 and _items(aws_endpoint) == before  # only printed
    assert [(o["workset_id"], o["from_state"], o["to_state"], o["result"]) for o in planned] == [
        ("ws-a", "error", "ready", "would"),
        ("ws-b", "error", "ready", "would"),
        ("ws-bad", "error", "ready", "would"),
    ]
    code, out, err = main(capsys, *cfg, "retry", "--state", "error", "--since", "1h")
    assert code == 1 and out == "" and _items(aws_endpoint) == before
    assert err == (
        "workset-monitor: nothing done: the filters select 3 workset(s) (ws-a, ws-b, ws-bad); add --yes to retry "
        "them, or --dry-run to list them\n"
    )

    with aws_calls() as calls:
        code, out, err = main(capsys, *cfg, "retry", "--state", "error", "--since", "1h", "--yes", "--reason", "outage")
    assert code == 1, err
    # What it costs: one index page and one BatchGetItem to select, then one conditional write per workset (no
    # read: the selection's consistent read is what each write decides on); ws-bad's folder is listed, not written.
    assert {op: n for op, n in calls.items() if op != "ListObjectsV2"} == {
        "Query": 1,
        "BatchGetItem": 1,
        "TransactWriteItems": 2,
    }
    rows = {line.split()[0]: line.split()[3] for line in out.splitlines()[1:-1]}
    assert rows == {"ws-a": "done", "ws-b": "done", "ws-bad": "failed"}
    assert "ws-bad is still invalid" in out and out.splitlines()[-1] == "2 done, 1 failed"
    states_now = {w["workset_id"]: w["state"] for w in json.loads(main(capsys, *cfg, "list", "--json")[1])}
    assert states_now == {"ws-a": "ready", "ws-b": "ready", "ws-ready": "ready", "ws-old": "error", "ws-bad": "error"}
    trail = json.loads(main(capsys, *cfg, "history", "ws-a", "--json")[1])
    assert (trail[-1]["type"], trail[-1]["reason"]) == ("reopened", "outage")


def test_bulk_actions_take_ids_and_ids_on_stdin_and_report_each(
    ready_table: Path, aws_endpoint: str, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ("--config", str(ready_table))
    _failed(aws_endpoint, "ws-err", minutes_ago=1)
    for name in ("ws-1", "ws-2", "ws-3"):
        assert main(capsys, *cfg, "register", name, "--no-validate")[0] == 0
    code, out, _ = main(capsys, *cfg, "cancel", "ws-1", "ws-err", "ghost", "--json")
    results = {o["workset_id"]: (o["result"], o.get("error", "")) for o in json.loads(out)}
    assert code == 1
    assert results["ws-1"] == ("done", "")
    assert results["ws-err"][0] == "failed" and "cannot cancel a workset that is error" in results["ws-err"][1]
    assert results["ghost"] == ("failed", "workset ghost is not registered")

    monkeypatch.setattr("sys.stdin", io.StringIO("ws-2\n# from the outage list\n\nws-3  # and this one\nws-2\n"))
    code, out, _ = main(capsys, *cfg, "set-priority", "-", "urgent")
    assert code == 0 and out.splitlines()[-1] == "2 done", out
    code, out, _ = main(capsys, *cfg, "set-priority", "ws-2", "ws-3", "urgent")
    assert code == 0 and out.splitlines()[-1] == "2 unchanged"  # no audit event for no change
    code, out, _ = main(capsys, *cfg, "set-priority", "ws-2", "ws-3", "urgent", "--json")
    assert [(o["result"], o["detail"]) for o in json.loads(out)] == [("unchanged", "already urgent")] * 2
    assert [e["type"] for e in json.loads(main(capsys, *cfg, "history", "ws-2", "--json")[1])] == [
        "registered",
        "priority_changed",
    ]
    code, out, _ = main(capsys, *cfg, "ignore", "--prefix", "worksets/ws-", "--state", "ready", "--yes")
    assert code == 0 and out.splitlines()[-1] == "2 done"  # ws-2, ws-3: the cancelled ws-1 is not ready
    monkeypatch.setattr("sys.stdin", io.StringIO("ws-1\nbad/id\n"))
    code, _, err = main(capsys, *cfg, "retry", "-")
    assert code == 1 and err.startswith("workset-monitor: standard input line 2: invalid workset id 'bad/id': use")


def test_list_pages_with_limit_and_after_and_shows_step_and_age(
    ready_table: Path, aws_endpoint: str, capsys: Any
) -> None:
    cfg = ("--config", str(ready_table))
    _failed(aws_endpoint, "ws-err", minutes_ago=90)
    _failed(aws_endpoint, "ws-invalid", minutes_ago=30, category="validation")
    for i in range(5):
        assert (
            main(capsys, *cfg, "register", f"ws-{i}", "--no-validate", "--priority", "low" if i % 2 else "normal")[0]
            == 0
        )
    everything = [w["workset_id"] for w in json.loads(main(capsys, *cfg, "list", "--json")[1])]
    assert everything == ["ws-0", "ws-2", "ws-4", "ws-1", "ws-3", "ws-err", "ws-invalid"]  # the documented order
    seen: list[str] = []
    after: list[str] = []
    for _ in range(5):
        _, out, err = main(capsys, *cfg, "list", "--limit", "3", *after)
        seen += [line.split()[0] for line in out.splitlines()[1:]]
        if not err:
            break
        assert err.startswith("workset-monitor: more worksets match: add --after ") and err.endswith(
            " for the next 3\n"
        )
        after = ["--after", err.split("--after ")[1].split()[0]]
    assert seen == everything
    header, *rows = main(capsys, *cfg, "list", "--state", "error")[1].splitlines()
    assert header.split() == ["WORKSET", "STATE", "PRIORITY", "STEP", "AGE", "IN_STATE", "ATTEMPTS", "OWNER/ERROR"]
    err_row = next(r.split() for r in rows if r.startswith("ws-err "))
    assert err_row[3:6] == ["-", "1h40m", "1h30m"], err_row
    _, out, _ = main(capsys, *cfg, "list", "--error-category", "validation", "--json")
    assert [w["workset_id"] for w in json.loads(out)] == ["ws-invalid"]
    _, out, _ = main(capsys, *cfg, "list", "--since", "1h", "--state", "error", "--json")
    assert [w["workset_id"] for w in json.loads(out)] == ["ws-invalid"]
    _, out, _ = main(capsys, *cfg, "list", "--prefix", "worksets/ws-e", "--json")
    assert [w["workset_id"] for w in json.loads(out)] == ["ws-err"]
    _, _, err = main(capsys, *cfg, "list", "--limit", "1", "--json")
    assert json.loads(err) == {"more": True, "after": json.loads(err)["after"]} and json.loads(err)["after"].startswith(
        "ready:"
    )


def _items(endpoint: str) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    return sorted(client.scan(TableName="daylily-worksets")["Items"], key=json.dumps)


def test_a_long_hand_run_keeps_its_lease_beside_a_daemon_whatever_its_clock_says(
    ready_table: Path, lab: Lab, tmp_path: Path
) -> None:
    """A hand run whose step lasts six leases, on a host whose clock is an hour slow, beside a daemon that sweeps
    every half second: its heartbeats keep the lease (no takeover, no second run), and it completes."""
    runs, _ = _two_steps(ready_table, tmp_path)
    with ready_table.open("a") as f:  # appended after the steps: sections of their own
        f.write(
            "\n[lease]\nduration_s = 2.0\nheartbeat_s = 0.5\nsweep_interval_s = 0.5\n"
            "[run]\nmax_fleet_concurrent = 1\n[metrics]\nport = 0\n"
        )
    text = ready_table.read_text().replace('prefixes = ["worksets/"]\n', 'prefixes = ["worksets/"]\ninterval_s = 0.5\n')
    ready_table.write_text(text)
    (tmp_path / "slow").touch()
    lab.workset("ws-1")
    ok(sh(ready_table, "register", "ws-1"))
    exe = str(Path(sys.executable).with_name("workset-monitor"))
    env = dict(os.environ, WORKSET_MONITOR_CONFIG=str(ready_table))
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    with subprocess.Popen(["faketime", "-f", "-3600s", exe, "run", "--workset", "ws-1"], **pipe) as hand:  # type: ignore[call-overload]
        for _ in range(200):
            if runs.exists():
                break
            time.sleep(0.1)
        with subprocess.Popen([exe, "run"], **pipe) as daemon:  # type: ignore[call-overload]
            time.sleep(12)  # six leases of the hand run's step, the daemon sweeping all along
            (tmp_path / "slow").unlink()
            out, err = hand.communicate(timeout=30)
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=30)
    assert hand.returncode == 0, err + sh(ready_table, "history", "ws-1").stdout
    assert out.splitlines()[0] == "ws-1: every step finished (complete)"
    assert daemon.returncode == 0
    assert runs.read_text().split() == ["stage", "analyse"]  # one run of each, all here
    trail = json.loads(ok(sh(ready_table, "history", "ws-1", "--json")))
    assert [e["type"] for e in trail] == ["registered", "started", "step_finished", "step_finished", "complete"]
    assert trail[2]["step_run"]["seconds"] >= 12


def test_defer_schedules_a_ready_workset_and_brings_it_forward(ready_table: Path, capsys: Any) -> None:
    cfg = ("--config", str(ready_table))
    with ready_table.open("a") as f:
        f.write('\n[[pipeline.steps]]\nname = "x"\ncommand = ["true"]\n')
    assert main(capsys, *cfg, "register", "ws-1", "--no-validate")[0] == 0
    code, out, _ = main(capsys, *cfg, "defer", "ws-1", "--until", "+1h", "--reason", "sequencer maintenance")
    assert code == 0 and out.startswith("ws-1: ready -> ready (not before ")
    shown = json.loads(main(capsys, *cfg, "show", "ws-1", "--json")[1])
    assert shown["not_before"] == shown["available_at"] and shown["not_before"] > shown["updated_at"]
    code, _, err = main(capsys, *cfg, "run", "--workset", "ws-1", "--step", "x")
    assert code == 1 and "ws-1 is scheduled: not before " in err and "--until now` brings it forward" in err
    code, out, _ = main(capsys, *cfg, "defer", "ws-1", "--until", "2020-01-01")
    assert code == 0 and out.strip() == "ws-1: ready -> ready (due now)"
    assert json.loads(main(capsys, *cfg, "show", "ws-1", "--json")[1])["not_before"] is None
    events = json.loads(main(capsys, *cfg, "history", "ws-1", "--json")[1])
    assert [(e["type"], e["reason"]) for e in events[1:]] == [
        ("deferred", "sequencer maintenance"),
        ("deferred", "scheduled"),
    ]
    assert main(capsys, *cfg, "cancel", "ws-1")[0] == 0
    code, _, err = main(capsys, *cfg, "defer", "ws-1", "--until", "+1h")
    assert code == 1 and "only a ready workset can be scheduled" in err
