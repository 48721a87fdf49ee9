"""The Daylily steps against a real head node: sshd on loopback, a real tmux, a stand-in for the pipeline's run
(tests/headnode.py), and the run state in S3 (moto). Each test is an operator's story: a run launched and watched to
the end; a second launch (a takeover, or a crash before the launch was recorded) finds the same session; a stale
holder is refused; a failed run reports its log; a run past its timeout gets Ctrl-C."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor.daylily import cli, scripts
from monitor.daylily.state import STATE_KEY
from tests.headnode import HeadNodeSite, head_node

BUCKET, PREFIX = "lab-bucket", "worksets/ws-1/"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HeadNodeSite]:
    with head_node(tmp_path / "head") as site:
        yield site


@pytest.fixture
def s3(mocked_aws: None) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def write_config(tmp_path: Path, node: HeadNodeSite, **daylily: Any) -> Path:
    values = {
        "head_node": "127.0.0.1",
        "ssh_user": "root",
        "ssh_port": node.port,
        "ssh_identity_file": str(node.identity),
        "workdir": str(node.workdir),
        "run_command": node.run_command(),
        "login_shell_init": "true",
        "tmux_session_prefix": f"t{node.port}",
        "interrupt_grace_s": 2.0,
        "log_tail_lines": 5,
    } | daylily
    lines = ["[aws]", 'region = "us-east-1"', "[daylily]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def step(config: Path, name: str, *, epoch: int, workset: str = "ws-1") -> tuple[int, str]:
    out = io.StringIO()
    env = {"WORKSET_ID": workset, "WORKSET_EPOCH": str(epoch), "WORKSET_BUCKET": BUCKET, "WORKSET_PREFIX": PREFIX}
    code = cli.main(["--config", str(config), name], env=env, out=out)
    return code, out.getvalue()


def state(s3: Any) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=PREFIX + STATE_KEY)["Body"].read())


def watch_until(config: Path, *, epoch: int, timeout_s: float = 30) -> tuple[int, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, out = step(config, "watch", epoch=epoch)
        if code != 75 or time.monotonic() > deadline:
            return code, out
        time.sleep(0.3)


def test_a_run_is_launched_in_its_session_watched_and_done(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    pdir = node.pipeline_dir("ws-1", "succeed 2")
    config = write_config(tmp_path, node)

    code, out = step(config, "launch", epoch=3)
    assert code == 0 and "launched the run in tmux session" in out, out
    session = scripts.session_name(f"t{node.port}", "ws-1")
    assert node.sessions() == [session]
    code, out = step(config, "watch", epoch=3)
    assert code == 75 and "running" in out, out

    code, out = watch_until(config, epoch=3)
    assert code == 0 and "succeeded" in out, out
    assert (pdir / "daylily.successful_run").exists() and node.sessions() == []
    [run] = node.runs("ws-1")
    assert "epoch=3 id=ws-1" in run and f"pwd={pdir}" in run
    recorded = state(s3)
    assert recorded["session"] == session and recorded["launched_epoch"] == 3 and recorded["head_node"] == "127.0.0.1"


def test_a_second_launch_finds_the_running_session_and_starts_nothing(
    tmp_path: Path, node: HeadNodeSite, s3: Any
) -> None:
    """A takeover (a new epoch) or a crash between the launch and its record: the step runs again and must not start
    a second pipeline."""
    node.pipeline_dir("ws-1", "succeed 3")
    config = write_config(tmp_path, node)
    assert step(config, "launch", epoch=3)[0] == 0
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + STATE_KEY)  # as if the first launch crashed before recording it

    code, out = step(config, "launch", epoch=4)
    assert code == 0 and "already going" in out and "launched by epoch 3" in out, out
    assert len(node.runs("ws-1")) == 1 and state(s3)["epoch"] == 4
    assert watch_until(config, epoch=4)[0] == 0
    assert len(node.runs("ws-1")) == 1


def test_a_stale_holder_neither_launches_nor_watches(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    node.pipeline_dir("ws-1", "hang")
    config = write_config(tmp_path, node)
    assert step(config, "launch", epoch=5)[0] == 0

    code, out = step(config, "launch", epoch=4)  # a paused ex-holder wakes up
    assert code == 75 and "written by epoch 5" in out, out
    code, out = step(config, "watch", epoch=4)
    assert code == 75 and "not watching" in out, out
    assert len(node.runs("ws-1")) == 1 and state(s3)["epoch"] == 5


def test_a_failed_run_reports_the_end_of_its_log_and_a_new_launch_runs_it_again(
    tmp_path: Path, node: HeadNodeSite, s3: Any
) -> None:
    pdir = node.pipeline_dir("ws-1", "fail 0")
    config = write_config(tmp_path, node)
    assert step(config, "launch", epoch=1)[0] == 0

    code, out = watch_until(config, epoch=1)
    assert code == 1 and "the run failed (daylily.failed_run" in out, out
    assert "Error in rule call_variants: exit status 137" in out and "align_sample_1:" not in out  # the tail only
    assert state(s3)["reported"] == "failed" and node.sessions() == []

    code, out = step(config, "watch", epoch=1)  # watched again (a retry of the watch step): the same answer
    assert code == 1 and "the run failed" in out

    (node.root / "ws-1.mode").write_text("succeed 0")  # the operator fixed the cause; `retry --from-start`
    code, out = step(config, "launch", epoch=2)
    assert code == 0 and "launched" in out, out
    assert watch_until(config, epoch=2)[0] == 0
    assert len(node.runs("ws-1")) == 2 and not (pdir / "daylily.failed_run").exists()
    assert list((pdir / ".workset-monitor").glob("daylily.failed_run.*"))  # the old sentinel is kept aside


def test_a_session_that_ends_without_a_sentinel_is_a_failure(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    node.pipeline_dir("ws-1", "vanish 0")
    config = write_config(tmp_path, node)
    assert step(config, "launch", epoch=1)[0] == 0
    code, out = watch_until(config, epoch=1)
    assert code == 1 and "ended without daylily.successful_run or daylily.failed_run" in out, out
    assert "dy-r: killed" in out


def test_a_run_past_its_timeout_gets_ctrl_c_and_its_session_is_ended(
    tmp_path: Path, node: HeadNodeSite, s3: Any
) -> None:
    node.pipeline_dir("ws-1", "hang")
    config = write_config(tmp_path, node, pipeline_timeout_minutes=0.05)  # 3 s
    assert step(config, "launch", epoch=1)[0] == 0
    assert step(config, "watch", epoch=1)[0] == 75
    time.sleep(3.5)

    code, out = step(config, "watch", epoch=1)
    assert code == 1 and "timed out after 0.05 min" in out and "sent Ctrl-C" in out, out
    assert "interrupted (SIGINT)" in out  # the run saw the Ctrl-C (C-c, not the old monitor's C-x)
    assert node.sessions() == [] and state(s3)["reported"] == "timed out"


def test_an_unreachable_head_node_is_temporary(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    node.pipeline_dir("ws-1", "succeed 0")
    config = write_config(tmp_path, node, ssh_port=1, ssh_connect_timeout_s=2.0)
    code, out = step(config, "launch", epoch=1)
    assert code == 75 and "head node unreachable" in out, out
    assert node.runs("ws-1") == []


def test_it_says_what_is_missing(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    config = write_config(tmp_path, node)
    out = io.StringIO()
    assert cli.main(["--config", str(config), "launch"], env={}, out=out) == 2
    assert "WORKSET_ID, WORKSET_EPOCH, WORKSET_BUCKET, WORKSET_PREFIX not set" in out.getvalue()

    bare = tmp_path / "bare.toml"
    bare.write_text('[aws]\nregion = "us-east-1"\n')
    code, text = step(bare, "launch", epoch=1)
    assert code == 78 and "no [daylily] section" in text

    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text() + "ssh_prot = 22\n")
    code, text = step(bad, "launch", epoch=1)
    assert code == 78 and "daylily.ssh_prot" in text and "line" in text, text

    code, text = step(config, "launch", epoch=1)  # no pipeline directory on the head node
    assert code == 1 and "no pipeline directory" in text, text
