"""The Daylily image (deploy/daylily/Dockerfile, built on the shipped image as its header says) running the Daylily
steps: the daemon in the container as uid 10001, ``pcluster`` and Node.js from the image, ssh from the image to the
head node (a real sshd and tmux on this machine's loopback, tests/headnode.py), AWS the emulator that speaks
CloudFormation and EC2 for pcluster (tests/pcluster_lab.py).

The operator's story: a workset dropped in S3; ``cluster`` finds no ready cluster in its zone, creates one (a
stand-in for Daylily's create tool, mounted as a lab mounts its Daylily checkout: JavaScript hot enough for the JIT on
the image's Node.js, as ``pcluster create-cluster`` runs the CDK, then the cluster made in the emulator) and takes its
head node from the image's pcluster; ``launch`` and ``watch`` run it over ssh; ``teardown`` deletes the cluster.
The stand-in python base image has no ssh and no Node.js (tests/deploy/images.py): the Dockerfile's own lines
install them.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import State, WorksetId
from tests import pcluster_lab
from tests.conftest import ROOT, run
from tests.deploy import images
from tests.deploy.conftest import aws, daylily_daemon_config, daylily_section, free_port, wait_for
from tests.deploy.images import podman
from tests.deploy.test_container import build
from tests.headnode import HeadNodeSite, head_node
from tests.lab import BUCKET, Lab

TABLE = "deploy-container-daylily"
KEY = "/run/secrets/daylily.pem"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    images.ensure_python()
    suffix = uuid.uuid4().hex[:8]
    base, tag = f"localhost/workset-monitor:daylily-base-{suffix}", f"localhost/workset-monitor-daylily:{suffix}"
    build(base)
    try:
        podman(
            "build",
            "--format=docker",
            "--layers=false",
            "--pull=never",
            "--network=host",
            *images.pip_mounts(),
            f"--build-arg=BASE={base}",
            "--file=deploy/daylily/Dockerfile",
            f"--tag={tag}",
            str(ROOT),
            timeout_s=900,
        )
        yield tag
    finally:
        podman("rmi", "--force", tag, base, check=False)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HeadNodeSite]:
    with head_node(tmp_path / "head") as site:
        yield site


@pytest.fixture
def emulator() -> Iterator[str]:
    with pcluster_lab.emulator() as url:
        yield url


def config(*, emulator: str, node: HeadNodeSite) -> str:
    daylily = daylily_section(node, create="/opt/daylily/bin/daylily-create-ephemeral-cluster", identity=KEY, tag="ct")
    return daylily_daemon_config(
        emulator=emulator,
        table=TABLE,
        command="workset-daylily",
        daylily=daylily,
        steps=("cluster", "launch", "watch", "teardown"),
    )


@pytest.mark.timeout(1500)
def test_the_daylily_image_runs_the_steps_with_its_own_pcluster_node_and_ssh(
    image: str, emulator: str, node: HeadNodeSite, tmp_path: Path
) -> None:
    lab = Lab(aws("s3", emulator))
    lab.s3.create_bucket(Bucket=BUCKET)
    schema.ensure_table(aws("dynamodb", emulator), TableConfig(name=TABLE))
    store = DynamoStore(aws("dynamodb", emulator), TABLE)
    cloud = pcluster_lab.clients(emulator, "us-west-2")
    pcluster_lab.make_cluster(cloud, "elsewhere", zone="us-west-2b")  # ready, but not in the zone
    node.pipeline_dir("ws-ct", "succeed 5")  # no clone step here: the directory is there

    settings = tmp_path / "config.toml"
    settings.write_text(config(emulator=emulator, node=node))
    settings.chmod(0o644)
    key = tmp_path / "daylily.pem"  # the head node's key, readable by the image's user only
    key.write_text(node.identity.read_text())
    subprocess.run(["chown", "10001:10001", str(key)], check=True)
    key.chmod(0o400)
    daylily = tmp_path / "daylily"  # a lab's Daylily tools, mounted
    (daylily / "bin").mkdir(parents=True)
    (daylily / "lib").mkdir()
    create = pcluster_lab.create_tool(python="/opt/workset-monitor/bin/python", lab="/opt/daylily/lib/pcluster_lab.py")
    (daylily / "bin/daylily-create-ephemeral-cluster").write_text(create)
    (daylily / "bin/daylily-create-ephemeral-cluster").chmod(0o755)
    (daylily / "lib/pcluster_lab.py").write_text((ROOT / "tests/pcluster_lab.py").read_text())

    name = f"wm-deploy-{uuid.uuid4().hex[:8]}"
    try:
        podman(
            "run",
            "--detach",
            f"--name={name}",
            "--network=host",
            f"--volume={settings}:/etc/workset-monitor/config.toml:ro",
            f"--volume={key}:{KEY}:ro",
            f"--volume={daylily}:/opt/daylily:ro",
            "--env=AWS_ACCESS_KEY_ID=testing",
            "--env=AWS_SECRET_ACCESS_KEY=testing",
            f"--env=AWS_ENDPOINT_URL={emulator}",  # pcluster's AWS: the emulator
            "--env=WORKSET_MONITOR_METRICS__HOST=127.0.0.1",
            f"--env=WORKSET_MONITOR_METRICS__PORT={free_port()}",
            image,
        )
        lab.workset("ws-ct", prefix="w/")
        try:
            done = wait_for(
                "the workset to complete",
                lambda: (ws := run(store.get(WorksetId("ws-ct")))) is not None and ws.state is State.COMPLETE and ws,
                timeout_s=240,
                every_s=2,
            )
        except BaseException:
            logs = podman("logs", name, check=False)
            print((logs.stdout + logs.stderr)[-12000:])
            raise
        where = "id -u; for tool in ssh pcluster node; do command -v $tool; done; pcluster version"
        tools = podman("exec", name, "sh", "-c", where).stdout
    finally:
        podman("rm", "--force", "--time=0", name, check=False)

    assert done is not None and len(node.runs("ws-ct")) == 1, node.runs("ws-ct")
    said = "\n".join(e.detail for e in run(store.history(WorksetId("ws-ct"))))
    created = re.search(r"no ready cluster: creating (daylily-\d+)", said)
    assert created is not None and "synthesized" in said, said  # the image's Node.js ran the JavaScript
    assert f"cluster {created.group(1)} was idle" in said, said
    stacks = {s["StackName"]: s["StackStatus"] for s in cloud["cloudformation"].list_stacks()["StackSummaries"]}
    assert stacks == {created.group(1): "DELETE_COMPLETE", "elsewhere": "CREATE_COMPLETE"}, stacks
    assert tools.split()[:4] == ["10001", "/usr/bin/ssh", "/usr/local/bin/pcluster", "/usr/bin/node"], tools
    assert '"version": "3.16.1"' in tools, tools
