"""Stand-ins for AWS ParallelCluster's ``pcluster`` and Daylily's ``daylily-create-ephemeral-cluster``, answering as
the real ones do (pcluster 3's JSON, its "does not exist" message and exit 1), from a JSON file of clusters named by
``FAKE_PCLUSTER_DB``. A cluster being created stays ``CREATE_IN_PROGRESS`` for ``looks`` describe calls. Like
pcluster 3 (``pcluster/cli/logger.py``), ``pcluster`` first makes ``~/.parallelcluster/`` and logs to
``pcluster-cli.log`` there, and dies with a traceback when it cannot (a read-only or missing ``HOME``: what the
shipped unit's sandbox gives it without the Daylily drop-in).

    python tests/fake_pcluster.py pcluster list-clusters --region R
    python tests/fake_pcluster.py create --cluster-name NAME [--config TEMPLATE]
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any


def install(bin_dir: Path) -> tuple[Path, Path]:
    """Executables ``pcluster`` and ``daylily-create-ephemeral-cluster`` in ``bin_dir`` running this file."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, role in (("pcluster", "pcluster"), ("daylily-create-ephemeral-cluster", "create")):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {role} "$@"\n')
        path.chmod(0o755)
        made.append(path)
    return made[0], made[1]


def cluster(name: str, *, status: str = "CREATE_COMPLETE", instance: str = "i-0f00d", ip: str = "127.0.0.1") -> dict:
    """A cluster whose head node is EC2 instance ``instance`` (where it runs is EC2's to say, not pcluster's)."""
    return {"status": status, "fleet": "RUNNING", "instance": instance, "public": ip, "private": "10.0.0.9", "looks": 0}


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def main(argv: list[str]) -> int:
    if argv[0] == "pcluster":  # as pcluster 3's config_logger(), before anything else (a traceback if it cannot)
        logfile = os.path.expanduser(os.path.join("~", ".parallelcluster", "pcluster-cli.log"))
        os.makedirs(os.path.dirname(logfile), exist_ok=True)
        with open(logfile, "a") as log:
            log.write(f"INFO - cli.py - {' '.join(argv[1:])}\n")
    db_path = Path(os.environ["FAKE_PCLUSTER_DB"])
    # Steps of two worksets may ask at once: one at a time, and a reader never sees a half-written file.
    with open(f"{db_path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db: dict[str, Any] = json.loads(db_path.read_text())
        role, args = argv[0], argv[1:]
        db.setdefault("calls", []).append(" ".join([role, *args]))
        try:
            return _answer(db, role, args)
        finally:
            temporary = db_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(db))
            temporary.replace(db_path)


def _answer(db: dict[str, Any], role: str, args: list[str]) -> int:
    clusters: dict[str, dict[str, Any]] = db.setdefault("clusters", {})
    if role == "create":
        name = _arg(args, "--cluster-name") or "?"
        print(f"Creating cluster {name} (contact {os.environ.get('DAY_CONTACT_EMAIL', 'unset')})")
        if db.get("create_fails"):
            print("ERROR: the VPC quota is exhausted in us-west-2", file=sys.stderr)
            return 1
        clusters[name] = cluster(name, status="CREATE_IN_PROGRESS") | {"looks": db.get("create_looks", 2)}
        db.setdefault("created", []).append({"name": name, "template": _arg(args, "--config")})
        print(f"Cluster {name} creation started")
        return 0
    command, name = args[0], _arg(args, "-n")
    if command == "list-clusters":
        print(json.dumps({"clusters": [{"clusterName": n, "clusterStatus": c["status"]} for n, c in clusters.items()]}))
        return 0
    if name not in clusters:
        print(json.dumps({"message": f"Cluster '{name}' does not exist or belongs to an incompatible version."}))
        return 1
    c = clusters[name]
    if command == "describe-cluster":
        if c["looks"] > 0:
            c["looks"] -= 1
            if c["looks"] == 0:
                c["status"] = "CREATE_COMPLETE"
        head = {  # as pcluster 3.16's EC2Instance: no availability zone
            "instanceId": c["instance"],
            "instanceType": "r7i.2xlarge",
            "state": "running",
            "publicIpAddress": c["public"],
            "privateIpAddress": c["private"],
        }
        status = {"clusterName": name, "clusterStatus": c["status"], "computeFleetStatus": c["fleet"]}
        print(json.dumps(status | {"headNode": head}))
        return 0
    if command == "delete-cluster":
        c["status"] = "DELETE_IN_PROGRESS"
        db.setdefault("deleted", []).append(name)
        print(json.dumps({"cluster": {"clusterName": name, "clusterStatus": "DELETE_IN_PROGRESS"}}))
        return 0
    if command == "describe-cluster-instances":
        head = {"nodeType": "HeadNode", "publicIpAddress": c["public"], "privateIpAddress": c["private"]}
        print(json.dumps({"instances": [head]}))
        return 0
    print(json.dumps({"message": f"unknown command {command}"}))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
