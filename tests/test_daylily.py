"""The Daylily steps against a real head node: sshd on loopback, a real tmux, a stand-in for the pipeline's run
(tests/headnode.py), and the run state in S3 (moto). Each test is an operator's story: a run launched and watched to
the end; a second launch (a takeover, or a crash before the launch was recorded) finds the same session; a stale
holder is refused; a failed run reports its log; a run past its timeout gets Ctrl-C."""

from __future__ import annotations

import io
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.child import Child
from monitor.config import TableConfig
from monitor.daylily import cli, scripts, work
from monitor.daylily.state import STATE_KEY, Stale
from monitor.model import EventType, State, WorksetId
from tests import fake_pcluster
from tests.conftest import REGION, ROOT, run
from tests.headnode import HeadNodeSite, free_port, head_node
from tests.lab import BUCKET as LAB_BUCKET
from tests.lab import Lab
from tests.test_daemon_process import until

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


def daylily_config(path: Path, daylily: dict[str, Any]) -> Path:
    """A config file with ``[aws]`` (the in-process emulator's region) and ``[daylily]`` set to ``daylily``."""
    lines = ["[aws]", 'region = "us-east-1"', "[daylily]"] + [f"{k} = {json.dumps(v)}" for k, v in daylily.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


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
    return daylily_config(tmp_path / "config.toml", values)


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
    pdir = node.pipeline_dir("ws-1", "succeed 4")
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
    assert state(s3)["epoch"] == 4
    assert watch_until(config, epoch=4)[0] == 0
    assert len(node.runs("ws-1")) == 1  # the one run, to its end


def test_a_stale_holder_neither_launches_nor_watches(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    node.pipeline_dir("ws-1", "hang")
    config = write_config(tmp_path, node)
    assert step(config, "launch", epoch=5)[0] == 0

    code, out = step(config, "launch", epoch=4)  # a paused ex-holder wakes up
    assert code == 75 and "written by epoch 5" in out, out
    code, out = step(config, "watch", epoch=4)
    assert code == 75 and "not watching" in out, out
    until(lambda: node.runs("ws-1"), what="the run to start")  # the session's shell starts it a moment after launch
    assert len(node.runs("ws-1")) == 1 and state(s3)["epoch"] == 5


def test_a_holder_found_stale_mid_step_gets_75_and_a_sentence_not_a_traceback(
    tmp_path: Path, node: HeadNodeSite, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A takeover can write the run state between a step's fenced read and its own write (teardown and export write
    after their work): the late writer is refused, and says so."""

    def overtaken(step: Any) -> int:
        raise Stale("the run state was written by epoch 9")

    monkeypatch.setitem(cli.STEPS, "teardown", overtaken)
    code, out = step(write_config(tmp_path, node), "teardown", epoch=8)
    assert code == 75 and "written by epoch 9" in out, out


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

    node.mode("ws-1", "succeed 0")  # the operator fixed the cause; `retry --from-start`
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
    config = write_config(tmp_path, node, pipeline_timeout_minutes=0.1)  # 6 s
    assert step(config, "launch", epoch=1)[0] == 0
    assert step(config, "watch", epoch=1)[0] == 75
    time.sleep(6.5)

    code, out = step(config, "watch", epoch=1)
    assert code == 1 and "timed out after 0.1 min" in out and "sent Ctrl-C" in out, out
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


def test_the_worksets_own_daylily_work_yaml_gives_the_run_its_arguments(
    tmp_path: Path, node: HeadNodeSite, s3: Any
) -> None:
    node.pipeline_dir("ws-1", "succeed 0")
    s3.put_object(
        Bucket=BUCKET,
        Key=PREFIX + "daylily_work.yaml",
        Body=b"day-clone: -d {workdir_name} -t main\ndy-r: -p produce_snv_concordances -j 8  # the targets\n",
    )
    config = write_config(tmp_path, node)
    assert step(config, "launch", epoch=1)[0] == 0
    assert watch_until(config, epoch=1)[0] == 0
    [run] = node.runs("ws-1")
    assert run.endswith("args=-p produce_snv_concordances -j 8"), run


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dy-r: -p snv\n", work.Work(run="-p snv")),
        ("dy_r: '-p snv'\nrun: other\n", work.Work(run="-p snv")),  # the first alias that is set wins
        ("dy-r:\n  - -p\n  - snv\n", work.Work(run="-p snv")),  # a list, joined
        ("dy-r:\n  args: -p snv\n  notes: x\n", work.Work(run="-p snv")),  # a mapping's args
        (
            "day-clone: -d {workdir_name} -t {workset}\nworkdir_name: wd7\nbudget: lab-a\n",
            work.Work(clone_args="-d wd7 -t ws-1 --budget lab-a", workdir_name="wd7", budget="lab-a"),
        ),
        ("clone: -d {workdir_name}\n", work.Work(clone_args="-d ws-1")),
        ("export-uri: s3://r/x/\ncluster_name: c-9\n", work.Work(export_uri="s3://r/x/", cluster_name="c-9")),
        ("notes: |\n  dy-r: not this one\n", work.Work()),  # only top-level keys
        ("", work.Work()),
    ],
)
def test_daylily_work_yaml_is_read_as_the_old_monitor_read_it(text: str, expected: work.Work) -> None:
    assert work.read(text, workset_id="ws-1") == expected


# --- stage and clone: the samples to FSx, the pipeline cloned, the staged files copied in --------------------

FAKE_STAGE = r"""#!/bin/bash
# a stand-in for Daylily's staging tool: $1 the local stage_samples.tsv, $2 the FSx root, $3 (optional) a workset id
ts=20261205T120000; dir="$2/staged${3:+/$3}/remote_stage_$ts"
mkdir -p "$dir/S1"; echo x >> "$(dirname "$0")/stage.calls"
cp "$1" "$dir/${ts}_samples.tsv"; printf 'sample\tunit\nS1\tL1\n' > "$dir/${ts}_units.tsv"
echo reads1 > "$dir/S1/S1_R1.fastq.gz"; echo reads2 > "$dir/S1/S1_R2.fastq.gz"
echo "Staging 1 sample"
echo "Remote FSx stage directory: $dir"
echo "Staged files:"
for f in S1/S1_R1.fastq.gz S1/S1_R2.fastq.gz ${ts}_samples.tsv ${ts}_units.tsv; do echo "  $dir/$f"; done
echo "Done."
"""

FAKE_CLONE = r"""#!/bin/bash
# a stand-in for day-clone: -d DEST [-t TAG]; clones into $ROOT/DEST/daylily-omics-analysis like git: refuses an
# existing destination
root=$(dirname "$0")/clones; dest=
while [ $# -gt 0 ]; do case $1 in -d) dest=$2; shift 2 ;; *) shift ;; esac; done
echo x >> "$(dirname "$0")/clone.calls"
target="$root/$dest/daylily-omics-analysis"
if [ -e "$target" ]; then echo "fatal: destination path '$target' already exists"; exit 128; fi
mkdir -p "$target/config" && echo "Cloning daylily-omics-analysis (main)" && echo "Location: $target"
"""


def test_stage_and_clone_put_the_samples_in_the_pipeline_directory_once(
    tmp_path: Path, node: HeadNodeSite, s3: Any
) -> None:
    tools = node.root
    for name, text in (("fake-stage", FAKE_STAGE), ("fake-day-clone", FAKE_CLONE)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    node.mode("ws-1", "succeed 0")
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "stage_samples.tsv", Body=b"sample\tr1_uri\nS1\ts3://lab/S1_R1.fq.gz\n")
    work_yaml = b"day-clone: -d {workdir_name} -t main\nworkdir_name: wd-1\n"
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "daylily_work.yaml", Body=work_yaml)
    config = write_config(
        tmp_path,
        node,
        stage_command=[str(tools / "fake-stage"), "{analysis_samples}", str(node.workdir)],
        clone_command=f"{tools}/fake-day-clone {{clone_args}}",
        clone_dest_root=str(tools / "clones"),
    )

    code, out = step(config, "stage", epoch=1)
    assert code == 0 and "staged 4 files in" in out, out
    assert step(config, "stage", epoch=1)[1].startswith("already staged")
    code, out = step(config, "clone", epoch=1)
    pdir = tools / "clones" / "wd-1" / "daylily-omics-analysis"
    assert code == 0 and f"pipeline directory {pdir}" in out and "copied 4 staged files" in out, out
    assert (pdir / "sample_data/S1/S1_R1.fastq.gz").read_text() == "reads1\n"
    assert (pdir / "config/samples.tsv").read_bytes().startswith(b"sample\tr1_uri\nS1")
    assert (pdir / "config/units.tsv").exists()

    s3.put_object(  # as if the clone's record was lost (a crash): the re-run finds the clone, does not make another
        Bucket=BUCKET,
        Key=PREFIX + STATE_KEY,
        Body=json.dumps(state(s3) | {"pipeline_dir": None}).encode(),
    )
    code, out = step(config, "clone", epoch=2)
    assert code == 0 and "found the clone made before" in out, out
    assert (tools / "clone.calls").read_text().count("x") == 1 and (tools / "stage.calls").read_text().count("x") == 1

    assert step(config, "launch", epoch=2)[0] == 0  # the run goes where the clone is
    assert watch_until(config, epoch=2)[0] == 0
    assert f"pwd={pdir} " in node.runs("ws-1")[0]


def test_without_clone_arguments_the_pipeline_directory_is_made_under_workdir(
    tmp_path: Path, node: HeadNodeSite, s3: Any
) -> None:
    code, out = step(write_config(tmp_path, node), "clone", epoch=1)
    assert code == 0 and (node.workdir / "ws-1").is_dir(), out
    assert state(s3)["pipeline_dir"] == str(node.workdir / "ws-1")


def test_a_staging_tool_that_names_no_directory_fails_the_step(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "stage_samples.tsv", Body=b"sample\nS1\n")
    config = write_config(tmp_path, node, stage_command=["echo", "{analysis_samples}", "nothing to see"])
    code, out = step(config, "stage", epoch=1)
    assert code == 1 and "names no stage directory" in out, out


# --- cluster: pick a ready one, or create one once; record its head node ----------------------------------------


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The stand-in pcluster and create tool (tests/fake_pcluster.py), with their clusters in a JSON file."""
    pcluster, create = fake_pcluster.install(tmp_path / "bin")
    db = tmp_path / "clusters.json"
    db.write_text(json.dumps({"clusters": {}}))
    monkeypatch.setenv("FAKE_PCLUSTER_DB", str(db))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # pcluster logs under ~/.parallelcluster/
    return {"pcluster": str(pcluster), "create": str(create), "db": db}


def cluster_config(tmp_path: Path, fleet: dict[str, Any], **daylily: Any) -> Path:
    values = {
        "region": "us-west-2",
        "pcluster": fleet["pcluster"],
        "create_command": [fleet["create"], "--cluster-name", "{cluster}"],
        "cluster_poll_s": 0.05,
        "contact_email": "ops@lab.example",
        "run_command": "true",
    } | daylily
    return daylily_config(tmp_path / "cluster.toml", values)


def clusters(fleet: dict[str, Any], **found: dict[str, Any]) -> dict[str, Any]:
    db = json.loads(fleet["db"].read_text())
    if found:
        db["clusters"] = found
        fleet["db"].write_text(json.dumps(db))
    return db


def head_instance(zone: str) -> str:
    """A head node's EC2 instance in ``zone`` (the in-process emulator): where a cluster is, as EC2 says."""
    ec2 = boto3.client("ec2", region_name="us-west-2")
    subnet = next(s for s in ec2.describe_subnets()["Subnets"] if s["AvailabilityZone"] == zone)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    [made] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet["SubnetId"])["Instances"]
    return str(made["InstanceId"])


def test_the_cluster_step_uses_a_ready_cluster_in_the_zone_and_records_its_head_node(
    tmp_path: Path, fleet: dict[str, Any], s3: Any
) -> None:
    clusters(
        fleet,
        other=fake_pcluster.cluster("other", instance=head_instance("us-west-2a")),
        busy=fake_pcluster.cluster("busy", status="UPDATE_IN_PROGRESS", instance=head_instance("us-west-2b")),
        mine=fake_pcluster.cluster("mine", ip="198.51.100.7", instance=head_instance("us-west-2b")),
    )
    config = cluster_config(tmp_path, fleet, availability_zone="us-west-2b")
    code, out = step(config, "cluster", epoch=1)
    assert code == 0 and "using ready cluster mine in us-west-2b" in out and "head node 198.51.100.7" in out, out
    assert (state(s3)["cluster"], state(s3)["head_node"]) == ("mine", "198.51.100.7")
    assert "created" not in clusters(fleet)
    assert all("--region us-west-2" in call for call in clusters(fleet)["calls"])

    private = cluster_config(tmp_path, fleet, use_private_ip=True)
    assert step(private, "cluster", epoch=2)[0] == 0 and state(s3)["head_node"] == "10.0.0.9"


def test_with_none_ready_it_creates_one_waits_for_it_and_a_rerun_never_creates_another(
    tmp_path: Path, fleet: dict[str, Any], s3: Any
) -> None:
    clusters(fleet, far=fake_pcluster.cluster("far", instance=head_instance("us-west-2a")))
    config = cluster_config(tmp_path, fleet, availability_zone="us-west-2b", cluster_template="/etc/daylily/t.yaml")
    code, out = step(config, "cluster", epoch=1)
    assert code == 0, out
    [created] = clusters(fleet)["created"]
    assert created["template"] == "/etc/daylily/t.yaml" and "contact ops@lab.example" in out
    assert "no ready cluster: creating daylily-" in out and f"cluster {created['name']} is ready" in out
    assert state(s3)["cluster"] == created["name"]

    code, out = step(config, "cluster", epoch=2)  # a takeover runs the step again
    assert code == 0 and len(clusters(fleet)["created"]) == 1, out


def test_a_creation_that_fails_or_a_named_cluster_that_is_missing_fails_the_step(
    tmp_path: Path, fleet: dict[str, Any], s3: Any
) -> None:
    db = clusters(fleet)
    db["create_fails"] = True
    fleet["db"].write_text(json.dumps(db))
    code, out = step(cluster_config(tmp_path, fleet), "cluster", epoch=1)
    assert code == 1 and "VPC quota is exhausted" in out and "failed (exit 1)" in out, out
    assert state(s3)["cluster"] is None  # the next attempt chooses again

    code, out = step(cluster_config(tmp_path, fleet, cluster_name="prod-1"), "cluster", epoch=2)
    assert code == 1 and "cluster prod-1 ([daylily] cluster_name) does not exist" in out, out

    config = tmp_path / "no-region.toml"
    config.write_text('[daylily]\nrun_command = "true"\n')
    code, out = step(config, "cluster", epoch=3)
    assert code == 1 and "no region for pcluster" in out, out


# --- teardown: only an idle cluster, only after idle_teardown_minutes, on the head node's clock ----------------


def test_a_pcluster_that_crashes_is_reported_by_its_exception_not_a_cut_traceback(
    tmp_path: Path, fleet: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pcluster 3 dies with a traceback when it cannot write ~/.parallelcluster (the shipped unit without the
    Daylily drop-in): the operator reads the exception, once."""
    monkeypatch.setenv("HOME", "/proc/no-home")
    code, out = step(cluster_config(tmp_path, fleet), "cluster", epoch=1)
    assert code == 75, out
    assert "exited 1: FileNotFoundError: [Errno 2] No such file or directory: '/proc/no-home'" in out, out
    assert "Traceback" not in out and "line " not in out, out


def test_teardown_deletes_the_cluster_only_once_it_has_been_idle_long_enough(
    tmp_path: Path, node: HeadNodeSite, fleet: dict[str, Any], s3: Any
) -> None:
    clusters(fleet, lab=fake_pcluster.cluster("lab", ip="127.0.0.1"))
    jobs = tmp_path / "squeue-lines"
    jobs.write_text("  1042  compute  align  ubuntu R  0:42  1 c5-1\n")
    text = write_config(
        tmp_path,
        node,
        region="us-west-2",
        pcluster=fleet["pcluster"],
        auto_teardown=True,
        idle_teardown_minutes=0.03,  # 1.8 s
        queue_command=f"cat {jobs}",
    ).read_text()
    config = tmp_path / "teardown.toml"
    config.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("head_node")))
    assert step(config, "cluster", epoch=1)[0] == 0

    code, out = step(config, "teardown", epoch=1)
    assert code == 0 and "busy (0 session(s), 1 job(s))" in out, out  # a Slurm job: left running, done
    jobs.write_text("")
    node.pipeline_dir("ws-2", "hang")
    node.tmux("new-session", "-d", "-s", "another-run", "sleep 30")  # another workset's run
    code, out = step(config, "teardown", epoch=1)
    assert code == 0 and "busy (1 session(s), 0 job(s))" in out, out
    node.tmux("kill-session", "-t", "another-run")

    code, out = step(config, "teardown", epoch=1)
    assert code == 75 and "idle for 0 s" in out, out
    assert "deleted" not in clusters(fleet)
    time.sleep(2.0)
    code, out = step(config, "teardown", epoch=2)  # from another host: the idle time is the head node's
    assert code == 0 and "deleting it" in out, out
    assert clusters(fleet)["deleted"] == ["lab"] and state(s3)["cluster"] is None


def test_teardown_leaves_a_named_cluster_and_does_nothing_when_off(
    tmp_path: Path, node: HeadNodeSite, fleet: dict[str, Any], s3: Any
) -> None:
    clusters(fleet, prod=fake_pcluster.cluster("prod", ip="127.0.0.1"))
    off = write_config(tmp_path, node, region="us-west-2", pcluster=fleet["pcluster"])
    code, out = step(off, "teardown", epoch=1)
    assert code == 0 and "auto_teardown is off" in out
    named = write_config(
        tmp_path, node, region="us-west-2", pcluster=fleet["pcluster"], cluster_name="prod", auto_teardown=True
    )
    assert step(named, "cluster", epoch=1)[0] == 0
    code, out = step(named, "teardown", epoch=1)
    assert code == 0 and "prod is kept (cluster_name)" in out, out
    assert "deleted" not in clusters(fleet)


@pytest.mark.parametrize(
    ("status", "said"),
    [("DELETE_IN_PROGRESS", "is already being deleted (DELETE_IN_PROGRESS)"), (None, "no longer exists")],
)
def test_teardown_of_a_cluster_another_workset_already_deleted_is_done(
    tmp_path: Path, node: HeadNodeSite, fleet: dict[str, Any], s3: Any, status: str | None, said: str
) -> None:
    """Two worksets ran on one cluster; the other one's teardown deleted it, so its head node is gone. This
    workset's teardown must not wait for a head node that will never answer (its poll would time out in error)."""
    clusters(fleet, lab=fake_pcluster.cluster("lab", ip="127.0.0.1"))
    live = write_config(tmp_path, node, region="us-west-2", pcluster=fleet["pcluster"], auto_teardown=True)
    live.write_text("".join(line + "\n" for line in live.read_text().splitlines() if "head_node" not in line))
    assert step(live, "cluster", epoch=1)[0] == 0
    gone = json.loads(fleet["db"].read_text())
    if status is None:
        del gone["clusters"]["lab"]
    else:
        gone["clusters"]["lab"]["status"] = status
    fleet["db"].write_text(json.dumps(gone))
    unreachable = live.read_text().replace(f"ssh_port = {node.port}", f"ssh_port = {free_port()}")
    live.write_text(unreachable)  # the head node went with the cluster

    code, out = step(live, "teardown", epoch=1)
    assert code == 0 and f"cluster lab {said}" in out, out
    assert state(s3)["cluster"] is None and "deleted" not in clusters(fleet)


def test_teardown_says_why_it_cannot_act(tmp_path: Path, node: HeadNodeSite, s3: Any) -> None:
    nothing = write_config(tmp_path, node, auto_teardown=True)  # no cluster was ever recorded for this workset
    code, out = step(nothing, "teardown", epoch=1)
    assert code == 0 and "no cluster of ours to tear down" in out, out
    s3.put_object(Bucket=BUCKET, Key=PREFIX + STATE_KEY, Body=json.dumps(state(s3) | {"cluster": "lab"}).encode())
    regionless = tmp_path / "regionless.toml"
    regionless.write_text(nothing.read_text().replace('region = "us-east-1"\n', ""))
    code, out = step(regionless, "teardown", epoch=1)  # a cluster to delete, but no region to ask pcluster in
    assert code == 1 and "no region for pcluster" in out, out


# --- export: believed only from its own fsx_export.yaml ----------------------------------------------------------

FAKE_EXPORT = r"""#!/bin/bash
# a stand-in for daylily-export-fsx-to-s3: $1 the output dir, $2 the target URI; behaviour from the mode file
mode=$(cat "$(dirname "$0")/export.mode"); echo x >> "$(dirname "$0")/export.calls"
echo "exporting /fsx/analysis_results to $2"
case $mode in
  success) printf 'fsx_export:\n  status: success\n  s3_uri: "%s"\n' "$2" > "$1/fsx_export.yaml" ;;
  error) printf 'fsx_export:\n  status: error\n  message: FSx data repository task failed\n' > "$1/fsx_export.yaml" ;;
  elsewhere) mkdir -p etc && printf 'fsx_export:\n  status: success\n  s3_uri: x\n' > etc/fsx_export.yaml ;;
  crash) echo "Traceback: boom" >&2; exit 2 ;;
esac
"""


def export_config(tmp_path: Path, mode: str, **daylily: Any) -> Path:
    tool = tmp_path / "export-tool"
    tool.write_text(FAKE_EXPORT)
    tool.chmod(0o755)
    (tmp_path / "export.mode").write_text(mode)
    values = {
        "head_node": "192.0.2.1",
        "run_command": "true",
        "export_command": [str(tool), "{output_dir}", "{target_uri}"],
        "export_uri": "s3://lab-results/{workset_id}/",
    } | daylily
    return daylily_config(tmp_path / "export.toml", values)


def test_export_succeeds_once_on_its_own_report_and_a_rerun_does_not_export_again(tmp_path: Path, s3: Any) -> None:
    config = export_config(tmp_path, "success")
    code, out = step(config, "export", epoch=1)
    assert code == 0 and "exported to s3://lab-results/ws-1/" in out, out
    assert state(s3)["exported"] == "s3://lab-results/ws-1/"
    code, out = step(config, "export", epoch=2)  # a takeover after the export, before the step was recorded
    assert code == 0 and "already exported" in out
    assert (tmp_path / "export.calls").read_text().count("x") == 1


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("error", "does not say the export succeeded: {'status': 'error', 'message': 'FSx data repository task"),
        ("elsewhere", "the export wrote no fsx_export.yaml in"),  # the old example config's ./etc
        ("crash", "the export failed (exit 2)"),
    ],
)
def test_an_export_that_did_not_prove_itself_fails(tmp_path: Path, s3: Any, mode: str, said: str) -> None:
    code, out = step(export_config(tmp_path, mode), "export", epoch=1)
    assert code == 1 and said in out, out
    assert state(s3).get("exported") is None


def test_an_export_command_without_output_dir_is_a_config_error(tmp_path: Path, s3: Any) -> None:
    config = export_config(tmp_path, "success", export_command=["daylily-export-fsx-to-s3", "--output-dir", "./etc"])
    code, out = step(config, "export", epoch=1)
    assert code == 78 and "daylily.export_command" in out and "{output_dir}" in out, out


def test_the_shipped_daylily_config_is_valid_and_names_only_real_steps(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor import cli as monitor_cli
    from monitor import config as monitor_config

    path = ROOT / "deploy/daylily/config.toml"
    assert monitor_cli.main(["--config", str(path), "check-config"]) == 0
    assert "7 step(s)" in capsys.readouterr().out
    settings = monitor_config.load(path, {}).settings
    assert settings.daylily is not None
    for configured in settings.pipeline.steps:
        assert configured.command[0] == "workset-daylily" and configured.command[-1] in cli.STEPS
        assert configured.command[-2] == "/etc/workset-monitor/config.toml"
    assert [s.name for s in settings.pipeline.steps] == list(cli.STEPS)


# --- end to end: two real daemons run the steps; one is killed while it watches -----------------------------------


def test_a_daemon_killed_while_it_watches_is_taken_over_and_the_run_is_not_started_twice(
    aws_endpoint: str, tmp_path: Path, node: HeadNodeSite, fleet: dict[str, Any]
) -> None:
    """The operator's story, all seven steps with two daemons: worksets dropped in S3 go cluster → stage → clone →
    launch → watch → export → teardown. The first daemon is SIGKILLed while it watches ws-ok's run; the second takes
    the worksets over after a lease, re-attaches to the same tmux session and completes ws-ok: exactly one pipeline
    run, exported once. ws-ok's teardown leaves the cluster running while ws-slow's run goes on; ws-slow's teardown
    deletes it once idle. ws-bad's failed run ends in ``error`` with the end of its log in the audit trail."""
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=LAB_BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    schema.ensure_table(dynamodb, TableConfig(name="daylily-e2e"))
    store = DynamoStore(dynamodb, "daylily-e2e")
    tools = node.root
    for name, text in (("fake-stage", FAKE_STAGE), ("fake-day-clone", FAKE_CLONE), ("fake-export", FAKE_EXPORT)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    (tools / "export.mode").write_text("success")
    release = tmp_path / "ws-slow.release"
    node.mode("ws-ok", "succeed 10")
    node.mode("ws-bad", "fail 1")
    node.mode("ws-slow", f"until {release}")
    clusters(fleet, lab=fake_pcluster.cluster("lab", ip="127.0.0.1"))  # the loopback head node, found by `cluster`
    daylily = write_config(
        tmp_path,
        node,
        region="us-west-2",
        pcluster=fleet["pcluster"],
        create_command=[fleet["create"]],
        stage_command=[str(tools / "fake-stage"), "{analysis_samples}", str(node.workdir), "{workset_id}"],
        clone_command=f"{tools}/fake-day-clone {{clone_args}}",
        clone_dest_root=str(tools / "clones"),
        export_command=[str(tools / "fake-export"), "{output_dir}", "{target_uri}"],
        export_uri="s3://lab-results/{workset_id}/",
        auto_teardown=True,
        idle_teardown_minutes=0.03,  # 1.8 s
        queue_command="true",
    ).read_text()
    daylily = "".join(
        line + "\n" for line in daylily.split("[daylily]\n", 1)[1].splitlines() if "head_node" not in line
    )
    config = tmp_path / "daemon.toml"

    def step(name: str, **kw: Any) -> str:
        command = json.dumps([sys.executable, "-m", "monitor.daylily.cli", "--config", str(config), name])
        return f'[[pipeline.steps]]\nname = "{name}"\ncommand = {command}\n' + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in ({"timeout_s": 60} | kw).items()
        )

    config.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{aws_endpoint}"\nmax_attempts = 2\n'
        f'[table]\nname = "daylily-e2e"\n[scan]\nbucket = "{LAB_BUCKET}"\nprefixes = ["w/"]\ninterval_s = 0.5\n'
        "[lease]\nduration_s = 3\nheartbeat_s = 0.75\nsweep_interval_s = 0.5\ngrace_s = 1\n"
        "[run]\nshutdown_grace_s = 1\nretry_backoff_base_s = 1\nretry_backoff_max_s = 1\n"
        'step_env_passthrough = ["PATH", "HOME", "AWS_*", "FAKE_PCLUSTER_DB"]\n'
        f'[log]\nformat = "json"\n[metrics]\nport = 0\n[daylily]\n{daylily}\n'
        + "".join(step(name) for name in ("cluster", "stage", "clone", "launch"))
        + step("watch", kind="poll", interval_s=0.5, timeout_s=120)
        + step("export")
        + step("teardown", kind="poll", interval_s=0.5, timeout_s=120)
    )
    lab = Lab(s3)
    for name in ("ws-ok", "ws-bad", "ws-slow"):
        lab.workset(name, prefix="w/")

    def get(name: str) -> Any:
        return run(store.get(WorksetId(name)))

    def trail(name: str) -> list[Any]:
        return run(store.history(WorksetId(name)))

    first = Child(config, tmp_path / "first.log", cwd=ROOT)
    second = None
    try:
        until(lambda: node.runs("ws-ok") and (w := get("ws-ok")) and "launch" in w.steps_done, what="ws-ok launched")
        until(lambda: get("ws-ok").current_step == "watch", what="the first daemon watching ws-ok")
        first.signal(signal.SIGKILL)
        first.wait()
        second = Child(config, tmp_path / "second.log", cwd=ROOT)
        ok = until(lambda: (w := get("ws-ok")) and w.state is State.COMPLETE and w, what="ws-ok complete", timeout_s=60)
        bad = until(lambda: (w := get("ws-bad")) and w.state is State.ERROR and w, what="ws-bad in error", timeout_s=60)
        assert "deleted" not in clusters(fleet) and get("ws-slow").current_step == "watch"
        release.touch()  # ws-slow's run ends: the cluster goes idle, and ws-slow's teardown deletes it
        until(lambda: get("ws-slow").state is State.COMPLETE, what="ws-slow complete", timeout_s=60)
    finally:
        for daemon in (first, second):
            if daemon is not None and daemon.running():
                daemon.kill()

    assert len(node.runs("ws-ok")) == 1, node.runs("ws-ok")  # exactly one pipeline run, across the takeover
    assert ok.epoch >= 2
    recorded = json.loads(s3.get_object(Bucket=LAB_BUCKET, Key="w/ws-ok/" + STATE_KEY)["Body"].read())
    assert recorded["launched_epoch"] < ok.epoch  # launched by the first daemon; the second one only watched
    pdir = tools / "clones" / "ws-ok" / "daylily-omics-analysis"
    assert recorded["pipeline_dir"] == str(pdir) and f"pwd={pdir} " in node.runs("ws-ok")[0]
    assert (pdir / "sample_data/S1/S1_R1.fastq.gz").read_text() == "reads1\n"  # staged, cloned, pushed
    assert recorded["exported"] == "s3://lab-results/ws-ok/"
    assert "created" not in clusters(fleet)
    history = trail("ws-ok")
    types = [e.type for e in history]
    assert EventType.LEASE_EXPIRED in types and types[-1] is EventType.COMPLETE
    second_start = max(i for i, t in enumerate(types) if t is EventType.STARTED)
    assert history[second_start].actor != history[1].actor  # the other daemon
    said = "\n".join(e.detail for e in history)
    assert "the run succeeded" in said and "exported to s3://lab-results/ws-ok/" in said
    assert "cluster lab is busy (1 session(s)" in said  # ws-slow was still running: ws-ok left the cluster up
    assert clusters(fleet)["deleted"] == ["lab"]  # by ws-slow's teardown, once, after its run
    assert "deleting it (pcluster delete-cluster)" in "\n".join(e.detail for e in trail("ws-slow"))
    assert len(node.runs("ws-slow")) == 1
    assert (tools / "export.calls").read_text().count("x") == 2  # ws-ok and ws-slow, each once
    assert len(node.runs("ws-bad")) == 1
    assert "Error in rule call_variants: exit status 137" in bad.last_error or any(
        "Error in rule call_variants" in e.detail for e in trail("ws-bad")
    )
