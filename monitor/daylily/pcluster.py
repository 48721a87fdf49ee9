"""AWS ParallelCluster's ``pcluster`` command, as the ``cluster`` step uses it: JSON out, one call per question.

- ``list-clusters --region R``: ``{"clusters": [{"clusterName", "clusterStatus", ...}]}``
- ``describe-cluster -n NAME --region R``: ``{"clusterName", "clusterStatus", "computeFleetStatus", "headNode":
  {"instanceId", "publicIpAddress", "privateIpAddress", ...}}`` (no availability zone: see ``monitor.aws.instances``)
- ``describe-cluster-instances -n NAME --region R --node-type HeadNode``: ``{"instances": [{"publicIpAddress",
  "privateIpAddress", ...}]}``
- ``delete-cluster -n NAME --region R``: starts the deletion

A cluster is *ready* (as the old monitor judged it) when its status is ``CREATE_COMPLETE`` or ``UPDATE_COMPLETE`` and
its compute fleet is running (or reports no status).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

READY = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
FLEET_RUNNING = ("", "RUNNING", "ENABLED", "STARTED")
BEING_MADE = ("CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS")


class PclusterError(Exception):
    """``pcluster`` failed, or answered what this program cannot read."""


class NoSuchCluster(PclusterError):
    """``describe-cluster`` says the cluster does not exist."""


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    status: str
    fleet: str
    head_instance: str | None  # the head node's EC2 instance id (None while it has none)

    @property
    def ready(self) -> bool:
        return self.status in READY and self.fleet in FLEET_RUNNING

    @property
    def being_made(self) -> bool:
        return self.status in BEING_MADE


def cluster_from(data: Mapping[str, Any]) -> Cluster:
    head = data.get("headNode") or {}
    try:
        return Cluster(
            name=str(data["clusterName"]),
            status=str(data.get("clusterStatus", "")),
            fleet=str(data.get("computeFleetStatus") or ""),
            head_instance=head.get("instanceId") if isinstance(head, Mapping) else None,
        )
    except KeyError:
        raise PclusterError(f"describe-cluster answered without a clusterName: {json.dumps(data)[:200]}") from None


def head_address(data: Mapping[str, Any], *, private: bool) -> str:
    """The head node's address from ``describe-cluster-instances``."""
    key = "privateIpAddress" if private else "publicIpAddress"
    for instance in data.get("instances") or []:
        if instance.get("nodeType", "HeadNode") == "HeadNode" and instance.get(key):
            return str(instance[key])
    raise PclusterError(f"describe-cluster-instances shows no head node with a {key}")


def _said(output: str) -> str:
    """What a failed pcluster said, in short: a Python traceback's last line (the exception), else its end."""
    if "Traceback (most recent call last):" in output:
        return output.splitlines()[-1].strip()[:500]
    return output[-500:]


class Pcluster:
    def __init__(self, command: str, *, region: str, profile: str | None, timeout_s: float = 300) -> None:
        self._command = command
        self.region = region
        self._env = dict(os.environ) | ({"AWS_PROFILE": profile} if profile else {})
        self._timeout_s = timeout_s

    def _call(self, *args: str) -> Any:
        argv = [self._command, *args, "--region", self.region]
        try:
            done = subprocess.run(  # noqa: S603 - an argv list from the config
                argv, capture_output=True, text=True, env=self._env, timeout=self._timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PclusterError(f"{' '.join(argv)}: {exc}") from None
        try:
            data = json.loads(done.stdout) if done.stdout.strip() else {}
        except json.JSONDecodeError:
            data = None
        if done.returncode != 0:
            message = data.get("message") if isinstance(data, dict) else None
            text = message or _said(done.stderr.strip() or done.stdout.strip())
            if "does not exist" in str(text):
                raise NoSuchCluster(text)
            raise PclusterError(f"{' '.join(argv)} exited {done.returncode}: {text}")
        if not isinstance(data, dict):
            raise PclusterError(f"{' '.join(argv)} did not answer JSON: {done.stdout[:200]!r}")
        return data

    def names(self) -> list[str]:
        return [str(c["clusterName"]) for c in self._call("list-clusters").get("clusters", []) if "clusterName" in c]

    def describe(self, name: str) -> Cluster:
        return cluster_from(self._call("describe-cluster", "-n", name))

    def delete(self, name: str) -> None:
        """``delete-cluster``; a cluster already gone (or going) is fine."""
        try:
            self._call("delete-cluster", "-n", name)
        except NoSuchCluster:
            return

    def head_node(self, name: str, *, private: bool) -> str:
        data = self._call("describe-cluster-instances", "-n", name, "--node-type", "HeadNode")
        return head_address(data, private=private)
