"""The ``cluster`` and ``teardown`` steps with the real ``pcluster`` (AWS ParallelCluster 3.16, ``make pcluster``)
against an emulator that speaks what it calls (tests/pcluster_lab.py).

The stand-in in tests/fake_pcluster.py answers as this real one does; these tests are where that is checked.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.daylily import cli
from monitor.daylily.pcluster import NoSuchCluster, Pcluster
from tests import pcluster_lab
from tests.headnode import free_port
from tests.pcluster_lab import PCLUSTER, make_cluster

REGION = "us-west-2"
BUCKET, PREFIX = "lab-bucket", "worksets/ws-1/"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with pcluster_lab.emulator() as url:
        yield url


@pytest.fixture
def aws(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh emulator, and the environment pcluster runs in (the steps pass theirs on to it)."""
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "HOME": str(tmp_path / "home"),  # pcluster logs under ~/.parallelcluster/
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    pcluster_lab.reset(endpoint)
    clients = pcluster_lab.clients(endpoint, REGION)
    clients["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return clients


def step(config: Path, name: str, *, epoch: int = 1) -> tuple[int, str]:
    out = io.StringIO()
    env = {"WORKSET_ID": "ws-1", "WORKSET_EPOCH": str(epoch), "WORKSET_BUCKET": BUCKET, "WORKSET_PREFIX": PREFIX}
    code = cli.main(["--config", str(config), name], env=env | dict(os.environ), out=out)
    return code, out.getvalue()


def config(tmp_path: Path, endpoint: str, **daylily: Any) -> Path:
    values = {"region": REGION, "pcluster": str(PCLUSTER), "run_command": "true", "cluster_poll_s": 0.1} | daylily
    path = tmp_path / "config.toml"
    path.write_text(
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{endpoint}"\n[daylily]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    )
    return path


def run_state(aws: dict[str, Any]) -> dict[str, Any]:
    body = aws["s3"].get_object(Bucket=BUCKET, Key=PREFIX + ".workset-monitor/daylily/state.json")["Body"].read()
    return json.loads(body)  # type: ignore[no-any-return]


def test_pcluster_answers_as_the_steps_read_it(aws: dict[str, Any]) -> None:
    head = make_cluster(aws, "lab", zone="us-west-2a")
    make_cluster(aws, "stopped", zone="us-west-2a", fleet="STOPPED")
    pc = Pcluster(str(PCLUSTER), region=REGION, profile=None)

    assert sorted(pc.names()) == ["lab", "stopped"]
    lab = pc.describe("lab")
    assert (lab.status, lab.fleet, lab.ready) == ("CREATE_COMPLETE", "RUNNING", True)
    assert lab.head_instance == head["InstanceId"]
    assert not pc.describe("stopped").ready  # a stopped compute fleet: not used
    assert pc.head_node("lab", private=False) == head["PublicIpAddress"]
    assert pc.head_node("lab", private=True) == head["PrivateIpAddress"]
    with pytest.raises(NoSuchCluster):
        pc.describe("nope")
    pc.delete("nope")  # "does not exist": nothing to do
    pc.delete("lab")
    with pytest.raises(NoSuchCluster):  # its stack is DELETE_COMPLETE: pcluster says it does not exist
        pc.describe("lab")


def test_the_cluster_step_picks_the_ready_cluster_in_its_zone_by_the_head_node_instance(
    aws: dict[str, Any], endpoint: str, tmp_path: Path
) -> None:
    """pcluster 3 does not say where a cluster is (no ``availabilityZone`` in ``describe-cluster``, which the old
    monitor read): its head node's instance does."""
    make_cluster(aws, "elsewhere", zone="us-west-2b")
    head = make_cluster(aws, "lab", zone="us-west-2a")
    cfg = config(tmp_path, endpoint, availability_zone="us-west-2a")

    code, out = step(cfg, "cluster")
    assert code == 0 and "using ready cluster lab in us-west-2a" in out, out
    recorded = run_state(aws)
    assert (recorded["cluster"], recorded["head_node"]) == ("lab", head["PublicIpAddress"])


def test_teardown_of_a_cluster_deleted_meanwhile_is_done(aws: dict[str, Any], endpoint: str, tmp_path: Path) -> None:
    make_cluster(aws, "lab", zone="us-west-2a")
    cfg = config(tmp_path, endpoint, auto_teardown=True, ssh_port=free_port(), ssh_connect_timeout_s=2)
    assert step(cfg, "cluster")[0] == 0
    recorded = run_state(aws) | {"head_node": "127.0.0.1"}  # loopback, where nobody listens: never a real address
    aws["s3"].put_object(Bucket=BUCKET, Key=PREFIX + ".workset-monitor/daylily/state.json", Body=json.dumps(recorded))
    aws["cloudformation"].delete_stack(StackName="lab")  # another workset's teardown: its head node went with it

    code, out = step(cfg, "teardown")
    assert code == 0 and "cluster lab no longer exists" in out, out
