"""The real ``pcluster`` (AWS ParallelCluster 3, installed by ``make pcluster`` in ``.tools/pcluster``) and an
emulator that speaks what it calls — CloudFormation, EC2, DynamoDB: moto's server from the same venv, on 127.0.0.1 —
with clusters made as pcluster reads them back: a CloudFormation stack tagged with its version, the compute fleet's
status item in the ``parallelcluster-<name>`` table, and a head node instance tagged with the cluster's name.

Also a stand-in for the last part of Daylily's create tool, run by pcluster's venv (no project imports here):

    python tests/pcluster_lab.py --cluster-name NAME --region R --zone Z    (AWS_ENDPOINT_URL: the emulator)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

TOOLS = Path(__file__).resolve().parent.parent / ".tools/pcluster"
PCLUSTER = TOOLS / "bin/pcluster"
VERSION = "3.16.1"
STACK_PARAMETERS = ("Scheduler", "ResourcesS3Bucket", "ArtifactS3RootDirectory", "ClusterUser", "ConfigVersion")


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """moto's server from pcluster's venv on a free loopback port; its URL."""
    if not PCLUSTER.exists():
        raise RuntimeError("the real pcluster is missing: `make pcluster` (part of `make test`) installs it")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen(
        [str(TOOLS / "bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the emulator for pcluster did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def reset(endpoint: str) -> None:
    """Forget every resource (moto's reset)."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()


def clients(endpoint: str, region: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"region_name": region, "endpoint_url": endpoint}
    return {name: boto3.client(name, **kw) for name in ("cloudformation", "ec2", "dynamodb", "s3")}


def make_cluster(aws: dict[str, Any], name: str, *, zone: str, fleet: str = "RUNNING") -> dict[str, Any]:
    """A cluster as pcluster 3 finds it: its stack, its compute fleet's status item, its head node in ``zone``.
    The head node's EC2 description (its ``InstanceId``, ``PublicIpAddress``, ...)."""
    template = {
        "Parameters": {p: {"Type": "String"} for p in STACK_PARAMETERS},
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
    }
    values = {
        "Scheduler": "slurm",
        "ResourcesS3Bucket": "parallelcluster-artifacts",
        "ArtifactS3RootDirectory": f"parallelcluster/{VERSION}/clusters/{name}",
        "ClusterUser": "ubuntu",
        "ConfigVersion": "1",
    }
    aws["cloudformation"].create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
        Tags=[{"Key": "parallelcluster:version", "Value": VERSION}],
    )
    table = f"parallelcluster-{name}"
    aws["dynamodb"].create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    data = {"M": {"status": {"S": fleet}, "lastStatusUpdatedTime": {"S": "2026-12-05 08:00:00.000000+00:00"}}}
    aws["dynamodb"].put_item(TableName=table, Item={"Id": {"S": "COMPUTE_FLEET"}, "Data": data})
    ec2 = aws["ec2"]
    subnet = next(s for s in ec2.describe_subnets()["Subnets"] if s["AvailabilityZone"] == zone)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [
        {"Key": "parallelcluster:cluster-name", "Value": name},
        {"Key": "parallelcluster:node-type", "Value": "HeadNode"},
    ]
    [instance] = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="r7i.2xlarge",
        SubnetId=subnet["SubnetId"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"]
    return instance  # type: ignore[no-any-return]


def create_tool(*, python: str, lab: str) -> str:
    """A stand-in for Daylily's create tool, as a shell script: ``pcluster create-cluster`` synthesizes the cluster's
    stack with the AWS CDK, on Node.js — here JavaScript hot enough for the JIT (it prints ``synthesized``) — and then
    the cluster exists: ``python`` (with boto3) runs this file (at ``lab``) to make it in the emulator."""
    return f"""#!/bin/sh
node -e 'function f(n) {{ let s = 0; for (let i = 0; i < n; i++) s += i % 7; return s }}
  let t = 0; for (let k = 0; k < 200; k++) t += f(1e5); console.log("synthesized", t)' || {{
  echo "Node.js failed: the CDK cannot run" >&2; exit 1; }}
exec {python} {lab} "$@"
"""


def main(argv: list[str]) -> int:
    """Make the cluster as pcluster's creation leaves it (CREATE_COMPLETE at once), in the emulator."""
    p = argparse.ArgumentParser(prog="pcluster_lab")
    p.add_argument("--cluster-name", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--zone", required=True)
    args = p.parse_args(argv)
    make_cluster(clients(os.environ["AWS_ENDPOINT_URL"], args.region), args.cluster_name, zone=args.zone)
    print(f"Cluster {args.cluster_name} creation started")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
