"""The Daylily steps under the shipped systemd unit, unmodified but for one drop-in: systemd 252 as PID 1 in a podman
container on the host's network, the daemon as the unit runs it (DynamicUser, the sandbox), the head node a real
sshd and tmux on this machine's loopback (tests/headnode.py), S3 and DynamoDB the emulator.

The operator's story: the SSH key is given to the service as a credential by the shipped drop-in
(deploy/daylily/daylily.conf: the dynamic user cannot read a root-owned key; it also gives the steps a writable
``HOME``, where pcluster keeps its log, and lets Node.js's JIT run); a workset dropped in S3 goes through all seven
steps: ``cluster`` finds no ready cluster in its zone with the real ``pcluster`` (3.16, ``make pcluster``, mounted
into the host) and EC2, so it creates one (a stand-in for Daylily's create tool that runs JavaScript on Node.js, as
``pcluster create-cluster`` runs the AWS CDK, then makes the cluster) and waits for it; ``stage`` and ``export`` run
their local tools inside the sandbox, ``clone`` and ``launch`` work on the head node; the
service is SIGKILLed mid-watch (``systemctl kill -s KILL``); systemd restarts it, the new process takes the workset
over after a lease, re-attaches to the same run and completes it — exactly one pipeline run — with the run lasting
well over five leases; ``teardown`` deletes the cluster (``pcluster delete-cluster``) once it is idle.

AWS here is the emulator that speaks CloudFormation and EC2 for pcluster (tests/pcluster_lab.py), for the daemon too.
The head node's address is the one pcluster reports (an emulated public IP); ``ssh -o HostName=127.0.0.1`` (in
``ssh_extra_args``) takes every SSH connection to the loopback head node instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.config import TableConfig
from monitor.model import EventType, State, WorksetId
from tests import pcluster_lab
from tests.conftest import ROOT, run
from tests.deploy.conftest import (
    aws,
    boot_systemd_host,
    daylily_daemon_config,
    daylily_section,
    free_port,
    wait_for,
)
from tests.deploy.images import podman
from tests.deploy.systemd_host import SystemdHost
from tests.headnode import HeadNodeSite, head_node
from tests.lab import BUCKET, Lab
from tests.test_daylily import FAKE_CLONE

TABLE = "deploy-daylily"
CREDENTIAL = "/run/credentials/workset-monitor.service/daylily.pem"
LEASE_S = 6.0
STAGE_TS = "20261205T120000"
CREATE = "/usr/local/bin/daylily-create-ephemeral-cluster"  # the stand-in for Daylily's create tool
# make pcluster's venv, installed on the host as an admin would: under /opt. Not at its path here, which may be under
# /tmp (a CI checkout), where the unit's PrivateTmp= would hide it; so its scripts' #! lines do not apply, and
# pcluster runs by the venv's python.
PCLUSTER_VENV = "/opt/parallelcluster"
PCLUSTER = f"""#!/bin/sh
exec {PCLUSTER_VENV}/bin/python -c '
import sys
from pcluster.cli.entrypoint import main
sys.argv[0] = "pcluster"
sys.exit(main())' "$@"
"""

# The local tools, inside the container (the sandbox: a read-only /usr, a private /tmp). The staging tool names the
# stage directory the test put on the head node (the real one copies there over SSH); the export tool writes its
# report where it is told.
CONTAINER_STAGE = """#!/bin/sh
dir="$1/staged/$2/remote_stage_{ts}"
echo "Remote FSx stage directory: $dir"
echo "Staged files:"
for f in S1/S1_R1.fastq.gz {ts}_samples.tsv; do echo "  $dir/$f"; done
"""
CONTAINER_EXPORT = """#!/bin/sh
echo "exporting to $2"
printf 'fsx_export:\\n  status: success\\n  s3_uri: "%s"\\n' "$2" > "$1/fsx_export.yaml"
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HeadNodeSite]:
    with head_node(tmp_path / "head") as site:
        yield site


@pytest.fixture
def host(containers: Callable[..., str], host_image: str, wheelhouse: Path) -> Iterator[SystemdHost]:
    yield boot_systemd_host(containers, host_image, wheelhouse, mounts={pcluster_lab.TOOLS: PCLUSTER_VENV})


@pytest.fixture
def emulator() -> Iterator[str]:
    """This test's AWS: moto's server from pcluster's venv (CloudFormation and EC2 besides S3 and DynamoDB)."""
    with pcluster_lab.emulator() as url:
        yield url


def config(*, emulator: str, port: int, node: HeadNodeSite) -> str:
    daylily = daylily_section(node, create=CREATE, identity=CREDENTIAL, tag="sd") | {
        "pcluster": "/usr/local/bin/pcluster",
        "stage_command": ["/usr/local/bin/fake-stage", str(node.workdir), "{workset_id}"],
        "clone_command": f"{node.root}/fake-day-clone {{clone_args}}",
        "clone_dest_root": str(node.root / "clones"),
        "export_command": ["/usr/local/bin/fake-export", "{output_dir}", "{target_uri}"],
        "export_uri": "s3://lab-results/{workset_id}/",
    }
    return daylily_daemon_config(
        emulator=emulator,
        table=TABLE,
        command="/opt/workset-monitor/bin/workset-daylily",
        daylily=daylily,
        steps=("cluster", "stage", "clone", "launch", "watch", "export", "teardown"),
        sections=f"[lease]\nduration_s = {LEASE_S}\nheartbeat_s = 1.5\nsweep_interval_s = 2\ngrace_s = 1\n"
        f"[metrics]\nport = {port}\n",
    )


def install_tools(host: SystemdHost, node: HeadNodeSite) -> None:
    """The local tools in the container; day-clone and the staged files on the head node."""
    podman("cp", str(ROOT / "tests/pcluster_lab.py"), f"{host.name}:/usr/local/lib/pcluster_lab.py")
    python = f"{PCLUSTER_VENV}/bin/python"  # it has boto3
    host.write(CREATE, pcluster_lab.create_tool(python=python, lab="/usr/local/lib/pcluster_lab.py"))
    host.write("/usr/local/bin/pcluster", PCLUSTER)
    host.write("/usr/local/bin/fake-stage", CONTAINER_STAGE.format(ts=STAGE_TS))
    host.write("/usr/local/bin/fake-export", CONTAINER_EXPORT)
    host.sh(f"chmod 0755 {CREATE} /usr/local/bin/pcluster /usr/local/bin/fake-stage /usr/local/bin/fake-export")
    (node.root / "fake-day-clone").write_text(FAKE_CLONE)
    (node.root / "fake-day-clone").chmod(0o755)
    staged = node.workdir / "staged" / "ws-sd" / f"remote_stage_{STAGE_TS}"
    (staged / "S1").mkdir(parents=True)
    (staged / "S1" / "S1_R1.fastq.gz").write_text("reads1\n")
    (staged / f"{STAGE_TS}_samples.tsv").write_text("sample\nS1\n")


@pytest.mark.timeout(1200)
def test_the_daylily_steps_run_under_systemd_and_survive_a_sigkill_with_exactly_one_run(
    host: SystemdHost, emulator: str, node: HeadNodeSite
) -> None:
    lab = Lab(aws("s3", emulator))
    lab.s3.create_bucket(Bucket=BUCKET)
    cloud = pcluster_lab.clients(emulator, "us-west-2")
    pcluster_lab.make_cluster(cloud, "elsewhere", zone="us-west-2b")  # ready, but not in the zone
    schema.ensure_table(aws("dynamodb", emulator), TableConfig(name=TABLE))
    store = DynamoStore(aws("dynamodb", emulator), TABLE)
    run_s = 8 * LEASE_S  # the run outlasts five leases, and the takeover happens in its middle
    node.mode("ws-sd", f"succeed {run_s:.0f}")

    # --- install: the package from the wheels, the unit as shipped, the config, the key and the drop-in -------------
    host.sh(
        "python3 -m venv /opt/workset-monitor && /opt/workset-monitor/bin/pip install --quiet --no-index "
        "--find-links /wheels workset-monitor",
        timeout_s=600,
    )
    install_tools(host, node)
    podman("cp", str(ROOT / "deploy/systemd/workset-monitor.service"), f"{host.name}:/etc/systemd/system/")
    host.sh("mkdir -p /etc/workset-monitor /etc/systemd/system/workset-monitor.service.d")
    host.write("/etc/workset-monitor/config.toml", config(emulator=emulator, port=free_port(), node=node))
    host.write("/etc/workset-monitor/daylily.pem", node.identity.read_text())
    host.sh("chmod 0600 /etc/workset-monitor/daylily.pem")
    dropins = "/etc/systemd/system/workset-monitor.service.d/"
    podman("cp", str(ROOT / "deploy/daylily/daylily.conf"), f"{host.name}:{dropins}")
    host.write(
        "/etc/default/workset-monitor",
        f"AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\nAWS_ENDPOINT_URL={emulator}\n",  # for pcluster
    )
    host.sh("systemctl daemon-reload && systemctl start workset-monitor")

    # --- a workset: launched in its session on the head node, then watched ----------------------------------------
    lab.workset("ws-sd", prefix="w/")

    def current() -> object:
        return run(store.get(WorksetId("ws-sd")))

    try:
        wait_for("the run to start on the head node", lambda: node.runs("ws-sd"), timeout_s=90)
    except BaseException:
        print(host.journal()[-6000:])
        raise
    wait_for("the daemon to watch it", lambda: getattr(current(), "current_step", None) == "watch", timeout_s=30)

    # --- SIGKILL the service mid-watch: systemd restarts it, the new process takes the workset over ----------------
    pid = host.show("MainPID")["MainPID"]
    host.sh("systemctl kill -s KILL workset-monitor")
    wait_for("a restart", lambda: host.show("MainPID")["MainPID"] not in ("0", pid), timeout_s=30)
    done = wait_for(
        "the takeover to complete the workset",
        lambda: (ws := current()) is not None and ws.state is State.COMPLETE and ws,  # type: ignore[attr-defined]
        timeout_s=run_s + 60,
    )

    assert len(node.runs("ws-sd")) == 1, node.runs("ws-sd")  # exactly one pipeline run across the restart
    pdir = node.root / "clones" / "ws-sd" / "daylily-omics-analysis"
    assert f"pwd={pdir} " in node.runs("ws-sd")[0] and (pdir / "sample_data/S1/S1_R1.fastq.gz").exists()
    assert done.epoch >= 2
    trail = run(store.history(WorksetId("ws-sd")))
    said = "\n".join(e.detail for e in trail)
    assert EventType.LEASE_EXPIRED in [e.type for e in trail]
    assert "the run succeeded" in said and "exported to s3://lab-results/ws-sd/" in said
    created = re.search(r"no ready cluster: creating (daylily-\d+)", said)
    assert created is not None and "synthesized" in said, said  # the create tool's JavaScript ran
    name = created.group(1)
    [head] = [
        i
        for r in cloud["ec2"].describe_instances()["Reservations"]
        for i in r["Instances"]
        if {"Key": "parallelcluster:cluster-name", "Value": name} in i["Tags"]
    ]
    assert f"cluster {name} is ready; head node {head['PublicIpAddress']}" in said
    assert f"cluster {name} was idle" in said
    stacks = {s["StackName"]: s["StackStatus"] for s in cloud["cloudformation"].list_stacks()["StackSummaries"]}
    assert stacks == {name: "DELETE_COMPLETE", "elsewhere": "CREATE_COMPLETE"}, stacks  # by pcluster delete-cluster
    state = host.show("NRestarts", "ActiveState")
    assert state == {"NRestarts": "1", "ActiveState": "active"}, state
    host.sh("systemctl stop workset-monitor")
