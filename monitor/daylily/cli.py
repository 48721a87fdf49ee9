"""``workset-daylily``: the Daylily pipeline's steps, one subcommand each, for ``[[pipeline.steps]]``.

    workset-daylily [--config PATH] cluster    choose (or create) the cluster and record its head node
    workset-daylily [--config PATH] stage      stage the samples to the cluster's FSx (the team's staging tool)
    workset-daylily [--config PATH] clone      clone the pipeline on the head node and copy the staged files in
    workset-daylily [--config PATH] launch     start the run in its tmux session on the head node (or find it)
    workset-daylily [--config PATH] watch      a poll step: 0 succeeded, 75 still running, 1 failed or timed out
    workset-daylily [--config PATH] export     run export_command; believe its fsx_export.yaml only
    workset-daylily [--config PATH] teardown   a poll step: delete the cluster once idle_teardown_minutes idle

Its own command, not a ``workset-monitor`` subcommand: a step is a program the daemon runs with the step exit-code
contract (0 / 75 / other) and the workset's ``WORKSET_*`` environment, and nothing an operator types; keeping it
apart keeps ``workset-monitor``'s commands (exit codes 0 / 1 / 69 / 78) about the table. It reads the same config
file (``[daylily]``, ``[aws]``), given by ``--config`` or ``WORKSET_MONITOR_CONFIG`` (a step's environment does not
carry the daemon's: name the file in the step's command).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from monitor import config, errors
from monitor.aws import instances
from monitor.aws.clients import Clients
from monitor.aws.run_states import S3RunStates, read_workset_file
from monitor.daylily import steps, work
from monitor.daylily.pcluster import Pcluster
from monitor.daylily.remote import HeadNode
from monitor.daylily.state import Changed, Corrupt, Stale
from monitor.daylily.work import Work
from monitor.manifest import WORK_FILE

STEPS = {  # in the order a deployment runs them
    "cluster": steps.cluster,
    "stage": steps.stage,
    "clone": steps.clone,
    "launch": steps.launch,
    "watch": steps.watch,
    "export": steps.export,
    "teardown": steps.teardown,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workset-daylily", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="the config file (default: $WORKSET_MONITOR_CONFIG, else the default path)")
    p.add_argument("step", choices=sorted(STEPS), help="the step to run")
    return p


def _workset(env: Mapping[str, str]) -> steps.Workset | str:
    """The workset from the step's environment, or what is missing."""
    missing = [n for n in ("WORKSET_ID", "WORKSET_EPOCH", "WORKSET_BUCKET", "WORKSET_PREFIX") if not env.get(n)]
    if missing:
        return f"not run by workset-monitor: {', '.join(missing)} not set (the daemon sets them for every step)"
    try:
        return steps.Workset(
            workset_id=env["WORKSET_ID"], epoch=int(env["WORKSET_EPOCH"]), bucket=env["WORKSET_BUCKET"]
        )
    except ValueError:
        return f"WORKSET_EPOCH={env['WORKSET_EPOCH']!r} is not a number"


def _work(s3: Any, env: Mapping[str, str], workset_id: str) -> Work:
    data = read_workset_file(s3, env["WORKSET_BUCKET"], env["WORKSET_PREFIX"] + WORK_FILE)
    return Work() if data is None else work.read(data.decode("utf-8", errors="replace"), workset_id=workset_id)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    workset = _workset(env)
    if isinstance(workset, str):
        print(f"workset-daylily: {workset}", file=out)
        return errors.EX_USAGE
    try:
        settings = config.load(args.config, env).settings
    except errors.ConfigError as exc:
        print(f"workset-daylily: {exc}", file=out)
        return errors.EX_CONFIG
    if settings.daylily is None:
        print("workset-daylily: the config file has no [daylily] section (docs/pipeline.md, Daylily)", file=out)
        return errors.EX_CONFIG
    cfg = settings.daylily
    region = cfg.region or settings.aws.region
    aws = Clients(settings.aws)
    # EC2 where pcluster looks: the cluster's region, as [daylily] aws_profile (built only when a step asks)
    cluster_aws = Clients(
        settings.aws.model_copy(update={"region": region, "profile": cfg.aws_profile or settings.aws.profile})
    )
    try:
        s3 = aws.get("s3")
        step = steps.Step(
            cfg=cfg,
            workset=workset,
            states=S3RunStates(s3, env["WORKSET_BUCKET"], env["WORKSET_PREFIX"]),
            out=out,
            head_node=lambda address: HeadNode(cfg, address),
            pcluster=None if region is None else Pcluster(cfg.pcluster, region=region, profile=cfg.aws_profile),
            work=functools.cache(lambda: _work(s3, env, workset.workset_id)),
            workset_file=lambda name: read_workset_file(s3, env["WORKSET_BUCKET"], env["WORKSET_PREFIX"] + name),
            zone_of=lambda instance: instances.zone_of(cluster_aws.get("ec2"), instance),
        )
        return STEPS[args.step](step)
    except errors.MonitorError as exc:
        print(f"workset-daylily {args.step}: {exc}", file=out)
        return steps.TEMPORARY if exc.temporary else steps.FAILED
    except Changed as exc:
        print(f"workset-daylily {args.step}: {exc}; will try again", file=out)
        return steps.TEMPORARY
    except Stale as exc:  # a newer holder wrote the run state while this step worked: its result is not ours to keep
        print(f"workset-daylily {args.step}: not recorded: {exc}", file=out)
        return steps.TEMPORARY
    except Corrupt as exc:
        print(f"workset-daylily {args.step}: the run state is damaged: {exc}", file=out)
        return steps.FAILED
    finally:
        aws.close()
        cluster_aws.close()


if __name__ == "__main__":
    sys.exit(main())
