"""Where an EC2 instance runs: the ``cluster`` step's zone check. pcluster 3 does not say where a cluster is
(``describe-cluster`` has no availability zone; the old monitor read ``headNode.availabilityZone``, which it never
had), so the head node's instance does: one ``ec2:DescribeInstances`` per candidate cluster, and only when
``[daylily] availability_zone`` is set."""

from __future__ import annotations

from typing import Any

from monitor import errors
from monitor.aws import clients


def zone_of(client: Any, instance_id: str) -> str:
    """The availability zone of ``instance_id``."""
    try:
        reservations = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except Exception as exc:
        raise clients.translate(exc, what=f"finding where instance {instance_id} runs (ec2:DescribeInstances)") from exc
    for reservation in reservations:
        for instance in reservation.get("Instances", []):
            zone = instance.get("Placement", {}).get("AvailabilityZone")
            if zone:
                return str(zone)
    raise errors.MonitorError(f"ec2:DescribeInstances shows no availability zone for instance {instance_id}")
