"""The Daylily steps: each returns the step's exit status (docs/pipeline.md: 0 done, 75 temporary or, for a poll
step, still running, anything else a failure) and prints what a person needs to know, which the daemon keeps in the
workset's audit trail.

``launch`` and ``watch`` are idempotent and resumable from any host: the run is a tmux session on the head node,
named after the workset (its existence is the lock), and what the steps learn is in the workset's run state in S3.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from monitor.daylily import scripts
from monitor.daylily.pcluster import NoSuchCluster, Pcluster, PclusterError
from monitor.daylily.remote import HeadNode, Unreachable
from monitor.daylily.state import RunState, RunStates, Stale, update
from monitor.daylily.work import Work
from monitor.sections import DaylilyConfig

DONE, FAILED, TEMPORARY = 0, 1, 75  # TEMPORARY is also a poll step's "still running"


@dataclass(frozen=True, slots=True)
class Workset:
    """The step's ``WORKSET_*`` environment."""

    workset_id: str
    epoch: int
    bucket: str = ""


@dataclass(frozen=True, slots=True)
class Step:
    """What a step has: the configuration, its workset, the run state, its output, and the ways to the cluster."""

    cfg: DaylilyConfig
    workset: Workset
    states: RunStates
    out: TextIO
    head_node: Callable[[str], HeadNode]  # an address -> the head node there
    pcluster: Pcluster | None = None  # None: no region configured
    work: Callable[[], Work] = Work  # the workset's daylily_work.yaml (read when a step needs it)
    workset_file: Callable[[str], bytes | None] = lambda _name: None  # a file of the workset's folder
    zone_of: Callable[[str], str] = lambda _instance: ""  # an EC2 instance id -> its availability zone
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _fenced(step: Step, doing: str) -> RunState | None:
    """The run state, after making sure no newer holder wrote it (our epoch is recorded); None (said) if one did."""
    try:
        return update(step.states, step.workset.epoch, lambda s: s)
    except Stale as exc:
        step.say(f"not {doing}: {exc}")
        return None


def _where(step: Step, state: RunState) -> tuple[str, str] | None:
    """(head node address, pipeline directory), or None (said why)."""
    address = step.cfg.head_node or state.head_node
    if address is None:
        step.say("no head node: run the `cluster` step first, or set [daylily] head_node")
        return None
    return address, state.pipeline_dir or posixpath.join(step.cfg.workdir, step.workset.workset_id)


def _run_line(step: Step) -> str:
    """``run_command``, then the workset's own ``dy-r`` arguments from its daylily_work.yaml, when it has some."""
    suffix = step.work().run
    return f"{step.cfg.run_command} {suffix}" if suffix else step.cfg.run_command


def launch(step: Step) -> int:
    """Start the run in the workset's tmux session on the head node, or find it already started or finished."""
    ws = step.workset
    state = _fenced(step, "launching")
    if state is None:
        return TEMPORARY
    where = _where(step, state)
    if where is None:
        return FAILED
    address, pdir = where
    session = scripts.session_name(step.cfg.tmux_session_prefix, ws.workset_id)
    script = scripts.launch(
        pdir=pdir,
        session=session,
        epoch=ws.epoch,
        workset_id=ws.workset_id,
        login_shell_init=step.cfg.login_shell_init,
        run_command=_run_line(step),
        rerun=state.reported is not None,
    )
    try:
        answer = step.head_node(address).run(script)
    except Unreachable as exc:
        step.say(f"head node unreachable: {exc}")
        return TEMPORARY
    found = scripts.answers(answer.out)
    if answer.code != 0 or not found:
        step.say(f"launch failed on {address} (exit {answer.code}): {scripts.chatter(answer.out)}")
        return FAILED
    launched = found.get("session") == "launched"

    def record(s: RunState) -> RunState:
        s = dataclasses.replace(s, head_node=address, pipeline_dir=pdir, session=session)
        return dataclasses.replace(s, launched_epoch=ws.epoch, reported=None) if launched else s

    try:
        update(step.states, ws.epoch, record)
    except Stale as exc:
        step.say(f"launched, but a newer holder owns the workset now: {exc}")
        return TEMPORARY
    if launched:
        step.say(f"launched the run in tmux session {session} on {address}:{pdir} (epoch {ws.epoch})")
    elif "outcome" in found:
        step.say(f"the run has already ended ({found['outcome']}) in {pdir} on {address}; `watch` reports it")
    else:
        by = found.get("launched_by") or "an earlier holder"
        step.say(f"the run is already going in tmux session {session} on {address} (launched by epoch {by})")
    return DONE


def watch(step: Step) -> int:
    """How the run stands: done when ``daylily.successful_run`` is there; still running (75) while its session is;
    a failure when ``daylily.failed_run`` is there, when the session ended without a sentinel, or when the run has
    taken longer than ``pipeline_timeout_minutes`` (then it gets Ctrl-C, and its session is killed after
    ``interrupt_grace_s``). A failure prints the end of the run's log."""
    ws, cfg = step.workset, step.cfg
    found_state, _ = step.states.read()
    state = found_state or RunState()
    if state.epoch > ws.epoch:
        step.say(f"not watching: the run state was written by epoch {state.epoch}; this step runs under {ws.epoch}")
        return TEMPORARY
    where = _where(step, state)
    if where is None:
        return FAILED
    address, pdir = where
    if state.session is None:
        step.say("no run was launched for this workset: the `launch` step runs it")
        return FAILED
    node = step.head_node(address)
    try:
        answer = node.run(scripts.look(pdir=pdir, session=state.session, tail_lines=cfg.log_tail_lines))
    except Unreachable as exc:
        step.say(f"head node unreachable, will look again: {exc}")
        return TEMPORARY
    found = scripts.answers(answer.out)
    outcome = found.get("outcome")
    if answer.code != 0 or outcome is None:
        step.say(f"cannot see the run on {address} (exit {answer.code}): {scripts.chatter(answer.out)}")
        return FAILED
    if outcome == "succeeded":
        step.say(f"the run succeeded ({scripts.SUCCEEDED} in {pdir})")
        return DONE
    if outcome == "running":
        return _running(step, node, state, found, pdir)
    why = (
        f"the run failed ({scripts.FAILED} in {pdir})"
        if outcome == "failed"
        else f"the run's tmux session {state.session} ended without {scripts.SUCCEEDED} or {scripts.FAILED}"
    )
    return _report(step, why, scripts.chatter(answer.out), reported="failed")


def _running(step: Step, node: HeadNode, state: RunState, found: dict[str, str], pdir: str) -> int:
    cfg = step.cfg
    try:
        ran_s = int(found["now"]) - int(found["started"])
    except (KeyError, ValueError):
        ran_s = None  # launched by something that kept no start time: no timeout can be measured
    minutes = "" if ran_s is None else f" for {ran_s / 60:.0f} min"
    if cfg.pipeline_timeout_minutes is None or ran_s is None or ran_s < cfg.pipeline_timeout_minutes * 60:
        step.say(f"running{minutes} in tmux session {state.session} on {node.address}")
        return TEMPORARY
    assert state.session is not None
    script = scripts.interrupt(
        pdir=pdir, session=state.session, grace_s=cfg.interrupt_grace_s, tail_lines=cfg.log_tail_lines
    )
    try:
        answer = node.run(script, timeout_s=cfg.ssh_command_timeout_s + cfg.interrupt_grace_s)
    except Unreachable as exc:
        step.say(f"the run is past its timeout but the head node is unreachable, will try again: {exc}")
        return TEMPORARY
    why = (
        f"the run timed out after {cfg.pipeline_timeout_minutes:g} min ([daylily] pipeline_timeout_minutes): sent "
        f"Ctrl-C, then ended tmux session {state.session}"
    )
    return _report(step, why, scripts.chatter(answer.out), reported="timed out")


def _report(step: Step, why: str, tail: str, *, reported: str) -> int:
    try:
        update(step.states, step.workset.epoch, lambda s: dataclasses.replace(s, reported=reported))
    except Stale as exc:
        step.say(f"{why}; not recorded: {exc}")
        return TEMPORARY
    step.say(why)
    if tail:
        step.say(f"--- the end of the run's log ---\n{tail}")
    return FAILED


# --- cluster ------------------------------------------------------------------------------------------------------


def cluster(step: Step) -> int:
    """Find the cluster to run on and its head node, and record both in the run state: ``[daylily] head_node`` as
    it is; else the cluster the run state names (a takeover, a re-run), ``cluster_name``, the first ready cluster
    (in ``availability_zone``), or a new one from ``create_command``, waited for up to ``cluster_wait_minutes``. The
    name of a cluster it creates is recorded before the creation starts, so a re-run after a crash waits for that one
    instead of creating another."""
    ws, cfg = step.workset, step.cfg

    def record(cluster: str | None, head: str | None) -> None:
        update(step.states, ws.epoch, lambda s: dataclasses.replace(s, cluster=cluster, head_node=head))

    try:
        state = update(step.states, ws.epoch, lambda s: s)
        if cfg.head_node:
            record(cfg.cluster_name, cfg.head_node)
            step.say(f"head node {cfg.head_node} ([daylily] head_node)")
            return DONE
        if step.pcluster is None:
            step.say("no region for pcluster: set [daylily] region or [aws] region")
            return FAILED
        pc = step.pcluster
        name = state.cluster or cfg.cluster_name or _ready_cluster(step, pc)
        if name is None:
            name = step.work().cluster_name or f"daylily-{int(time.time())}"
            record(name, None)
            if not _create(step, name, pc.region):
                record(None, None)
                return FAILED
        return _await(step, pc, name, record)
    except Stale as exc:
        step.say(f"not choosing a cluster: {exc}")
        return TEMPORARY
    except PclusterError as exc:
        step.say(f"pcluster failed, will try again: {exc}")
        return TEMPORARY


def _ready_cluster(step: Step, pc: Pcluster) -> str | None:
    """The first ready cluster (in ``availability_zone``, where its head node's instance runs), or None."""
    zone = step.cfg.availability_zone
    for name in pc.names():
        found = pc.describe(name)
        if not found.ready:
            continue
        if zone is not None and (found.head_instance is None or step.zone_of(found.head_instance) != zone):
            continue
        step.say(f"using ready cluster {name}" + (f" in {zone}" if zone else ""))
        return name
    return None


def _create(step: Step, name: str, region: str) -> bool:
    cfg = step.cfg
    argv = [arg.format(cluster=name, region=region) for arg in cfg.create_command]
    if cfg.cluster_template:
        argv += ["--config", cfg.cluster_template]
    step.say(f"no ready cluster: creating {name} ({' '.join(argv)})")
    contact = {"DAY_CONTACT_EMAIL": cfg.contact_email} if cfg.contact_email else {}
    done = _local(step, argv, what=f"creating cluster {name}", env=contact, drop=("DAY_DISABLE_AUTO_SELECT",))
    return done is not None


def _await(step: Step, pc: Pcluster, name: str, record: Callable[[str | None, str | None], None]) -> int:
    cfg = step.cfg
    deadline = step.monotonic() + cfg.cluster_wait_minutes * 60
    while True:
        try:
            found = pc.describe(name)
        except NoSuchCluster:
            if name == cfg.cluster_name:
                step.say(f"cluster {name} ([daylily] cluster_name) does not exist")
                return FAILED
            record(None, None)  # deleted, or its creation never got as far as pcluster: choose again next time
            step.say(f"cluster {name} no longer exists; the next attempt chooses another")
            return TEMPORARY
        if found.ready:
            break
        if not found.being_made:
            if name != cfg.cluster_name:
                record(None, None)
            step.say(f"cluster {name} is {found.status} (compute fleet {found.fleet or 'unknown'}): not usable")
            return FAILED
        if step.monotonic() >= deadline:
            step.say(f"cluster {name} is still {found.status} after {cfg.cluster_wait_minutes:g} min")
            return TEMPORARY
        step.sleep(cfg.cluster_poll_s)
    address = pc.head_node(name, private=cfg.use_private_ip)
    record(name, address)
    step.say(f"cluster {name} is ready; head node {address}")
    return DONE


# --- teardown -----------------------------------------------------------------------------------------------------


def teardown(step: Step) -> int:
    """A poll step: delete the workset's cluster once it has been idle for ``idle_teardown_minutes`` (no tmux session
    of any run, nothing in ``squeue``), on the head node's clock, whichever host looks. Done at once when
    ``auto_teardown`` is off, when the cluster is busy again (another run: its own teardown looks later), or when it
    was named by ``cluster_name``; 75 while it is idle but not yet for long enough."""
    cfg = step.cfg
    if not cfg.auto_teardown:
        step.say("auto_teardown is off: the cluster is left running")
        return DONE
    state = _fenced(step, "tearing down")
    if state is None:
        return TEMPORARY
    name = state.cluster
    if name is None:
        step.say("no cluster of ours to tear down")
        return DONE
    if name == cfg.cluster_name:
        step.say(f"{name} is kept (cluster_name)")
        return DONE
    if step.pcluster is None:
        step.say(f"cannot tear down cluster {name}: no region for pcluster (set [daylily] region or [aws] region)")
        return FAILED
    address = cfg.head_node or state.head_node
    if address is None:
        step.say(f"no head node recorded for cluster {name}: cannot tell whether it is idle")
        return FAILED
    try:
        found = scripts.answers(step.head_node(address).run(scripts.idle(cfg.queue_command)).out)
    except Unreachable as exc:
        gone = _gone(step.pcluster, name)
        if gone is not None:  # another workset's teardown deleted it: its head node will never answer again
            update(step.states, step.workset.epoch, lambda s: dataclasses.replace(s, cluster=None, head_node=None))
            step.say(f"cluster {name} {gone}: nothing to tear down")
            return DONE
        step.say(f"head node unreachable, will look again: {exc}")
        return TEMPORARY
    if "busy" in found:
        step.say(f"cluster {name} is busy ({found['busy']}): left running")
        return DONE
    try:
        idle_s = int(found["idle_s"])
    except (KeyError, ValueError):
        step.say(f"cannot tell whether cluster {name} is idle: {found}")
        return FAILED
    if idle_s < cfg.idle_teardown_minutes * 60:
        step.say(f"cluster {name} idle for {idle_s} s of {cfg.idle_teardown_minutes:g} min")
        return TEMPORARY
    try:
        step.pcluster.delete(name)
    except PclusterError as exc:
        step.say(f"deleting cluster {name} failed, will try again: {exc}")
        return TEMPORARY
    update(step.states, step.workset.epoch, lambda s: dataclasses.replace(s, cluster=None, head_node=None))
    step.say(f"cluster {name} was idle for {idle_s // 60} min: deleting it (pcluster delete-cluster)")
    return DONE


def _gone(pcluster: Pcluster, name: str) -> str | None:
    """How ``name`` is gone ("no longer exists", "is already being deleted (...)"), or None when it is not, or
    when pcluster cannot tell (then the caller keeps trying)."""
    try:
        status = pcluster.describe(name).status
    except NoSuchCluster:
        return "no longer exists"
    except PclusterError:
        return None
    return f"is already being deleted ({status})" if status.startswith("DELETE") else None


# --- export -------------------------------------------------------------------------------------------------------

EXPORT_FILE = "fsx_export.yaml"


def export_report(text: str) -> dict[str, str]:
    """The ``fsx_export:`` mapping of an ``fsx_export.yaml`` (plain ``key: value`` lines under it), as strings."""
    found: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            inside = line.split(":", 1)[0].strip() == "fsx_export"
            continue
        if inside and ":" in line:
            key, _, value = line.strip().partition(":")
            found[key.strip()] = value.strip().strip("'\"")
    return found


def export(step: Step) -> int:
    """Run ``export_command`` and believe it only from its own ``fsx_export.yaml``: ``status: success`` and an
    ``s3_uri``. Done at once when the run state says the results were exported (a re-run after a crash)."""
    ws, cfg = step.workset, step.cfg
    if cfg.export_command is None:
        step.say("no [daylily] export_command: nothing exported")
        return DONE
    state = _fenced(step, "exporting")
    if state is None:
        return TEMPORARY
    if state.exported:
        step.say(f"already exported to {state.exported}")
        return DONE
    where = _where(step, state)
    if where is None:
        return FAILED
    address, pdir = where
    with tempfile.TemporaryDirectory(prefix="workset-daylily-export-") as output_dir:
        values = {
            "cluster": state.cluster or "",
            "region": step.pcluster.region if step.pcluster else "",
            "head_node": address,
            "pipeline_dir": pdir,
            "workset_id": ws.workset_id,
            "target_uri": (step.work().export_uri or cfg.export_uri or "").replace("{workset_id}", ws.workset_id),
            "output_dir": output_dir,
        }
        argv = [arg.format(**values) for arg in cfg.export_command]
        if _local(step, argv, what="the export") is None:
            return FAILED
        report_path = Path(output_dir) / EXPORT_FILE
        if not report_path.exists():
            step.say(
                f"the export wrote no {EXPORT_FILE} in {{output_dir}} ({output_dir}): it must be given {{output_dir}}"
            )
            return FAILED
        report = export_report(report_path.read_text(errors="replace"))
    if report.get("status") != "success" or not report.get("s3_uri"):
        step.say(f"{EXPORT_FILE} does not say the export succeeded: {report or 'no fsx_export mapping'}")
        return FAILED
    uri = report["s3_uri"]
    update(step.states, ws.epoch, lambda s: dataclasses.replace(s, exported=uri))
    step.say(f"exported to {uri}")
    return DONE


# --- stage --------------------------------------------------------------------------------------------------------

STAGE_DIR_LINE = "Remote FSx stage directory:"
STAGED_FILES_LINE = "Staged files"


def stage_output(out: str) -> tuple[str | None, tuple[str, ...]]:
    """The stage directory (a relative one is under /fsx) and the staged files (relative to it) that the staging
    tool printed: a ``Remote FSx stage directory: PATH`` line, and a ``Staged files`` line followed by indented
    paths."""
    stage_dir: str | None = None
    files: list[str] = []
    listing = False
    for line in out.splitlines():
        if line.startswith(STAGE_DIR_LINE):
            path = line[len(STAGE_DIR_LINE) :].strip()
            stage_dir = path if path.startswith("/") else posixpath.join("/fsx", path)
            listing = False
        elif line.startswith(STAGED_FILES_LINE):
            listing = True
        elif listing and line[:1].isspace() and line.strip():
            files.append(line.strip().lstrip("- ").strip())
        elif listing:
            listing = False
    if stage_dir is not None:
        prefix = stage_dir.rstrip("/") + "/"
        files = [f.removeprefix(prefix) for f in files]
    return stage_dir, tuple(files)


def stage(step: Step) -> int:
    """Run ``stage_command`` on this host with a local copy of the workset's stage_samples.tsv, and record the stage
    directory and files its output names (pushed into the pipeline directory by ``clone``). Done at once when the
    run state says it was staged."""
    ws, cfg = step.workset, step.cfg
    if cfg.stage_command is None:
        step.say("no [daylily] stage_command: nothing staged")
        return DONE
    state = _fenced(step, "staging")
    if state is None:
        return TEMPORARY
    if state.stage_dir:
        step.say(f"already staged in {state.stage_dir} ({len(state.staged)} files)")
        return DONE
    manifest = step.workset_file("stage_samples.tsv")
    if manifest is None:
        step.say("the workset has no stage_samples.tsv")
        return FAILED
    with tempfile.TemporaryDirectory(prefix="workset-daylily-stage-") as here:
        samples = Path(here) / "stage_samples.tsv"
        samples.write_bytes(manifest)
        values = {
            "analysis_samples": str(samples),
            "cluster": state.cluster or "",
            "region": step.pcluster.region if step.pcluster else "",
            "head_node": cfg.head_node or state.head_node or "",
            "reference_bucket": cfg.reference_bucket or f"s3://{ws.bucket}/",
            "ssh_user": cfg.ssh_user,
            "ssh_identity_file": cfg.ssh_identity_file or "",
            "workset_id": ws.workset_id,
        }
        argv = [arg.format(**values) for arg in cfg.stage_command]
        done = _local(step, argv, what="staging")
    if done is None:
        return FAILED
    stage_dir, files = stage_output(done)
    if stage_dir is None:
        step.say(f"the staging tool's output names no stage directory (a {STAGE_DIR_LINE!r} line)")
        return FAILED
    update(step.states, ws.epoch, lambda s: dataclasses.replace(s, stage_dir=stage_dir, staged=files))
    step.say(f"staged {len(files)} files in {stage_dir}")
    return DONE


def _local(
    step: Step, argv: list[str], *, what: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()
) -> str | None:
    """Run ``argv`` here (``AWS_PROFILE`` from ``aws_profile``, ``env`` added, ``drop`` removed); its stdout (the end
    of all its output said), or None when it failed (said why)."""
    profile = {"AWS_PROFILE": step.cfg.aws_profile} if step.cfg.aws_profile else {}
    env = {k: v for k, v in os.environ.items() if k not in drop} | profile | (env or {})
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env, check=False)  # noqa: S603
    except OSError as exc:
        step.say(f"cannot run {argv[0]}: {exc}")
        return None
    output = (done.stdout + done.stderr).strip()
    if output:
        step.say("\n".join(output.splitlines()[-step.cfg.log_tail_lines :]))
    if done.returncode != 0:
        step.say(f"{what} failed (exit {done.returncode})")
        return None
    return done.stdout


# --- clone --------------------------------------------------------------------------------------------------------

_DEST = re.compile(r"(?:^|\s)(?:-d|--dest|--destination)(?:\s+|=)(\S+)")


def clone_location(out: str) -> str | None:
    """Where the clone landed, from its output: a ``Location: PATH`` line, else a ``cd PATH`` line."""
    for line in out.splitlines():
        if line.startswith("Location") and ":" in line:
            return line.split(":", 1)[1].strip() or None
    for line in out.splitlines():
        if line.strip().startswith("cd "):
            return line.strip()[3:].strip() or None
    return None


def clone(step: Step) -> int:
    """Make the pipeline directory on the head node — the team's clone command with the workset's ``day-clone``
    arguments, or ``<workdir>/<workset id>`` without them — record it, and copy the staged files into it. A clone
    already recorded (or already where this one would land: a crash before it was recorded) is not made again."""
    ws, cfg = step.workset, step.cfg
    state = _fenced(step, "cloning")
    if state is None:
        return TEMPORARY
    address = cfg.head_node or state.head_node
    if address is None:
        step.say("no head node: run the `cluster` step first, or set [daylily] head_node")
        return FAILED
    node = step.head_node(address)
    try:
        pdir = state.pipeline_dir or _clone(step, node)
        if pdir is None:
            return FAILED
        update(step.states, ws.epoch, lambda s: dataclasses.replace(s, pipeline_dir=pdir))
        if state.staged and state.stage_dir and state.pushed != pdir:
            answer = node.run(scripts.push(pdir=pdir, stage_dir=state.stage_dir, staged=state.staged))
            if answer.code != 0:
                step.say(f"copying the staged files into {pdir} failed: {scripts.chatter(answer.out)}")
                return FAILED
            update(step.states, ws.epoch, lambda s: dataclasses.replace(s, pushed=pdir))
            step.say(f"copied {len(state.staged)} staged files into {pdir}/sample_data")
    except Unreachable as exc:
        step.say(f"head node unreachable: {exc}")
        return TEMPORARY
    except Stale as exc:
        step.say(f"a newer holder owns the workset now: {exc}")
        return TEMPORARY
    step.say(f"pipeline directory {pdir} on {address}")
    return DONE


def _clone(step: Step, node: HeadNode) -> str | None:
    ws, cfg = step.workset, step.cfg
    args = step.work().clone_args
    if args is None:
        answer = node.run(scripts.ensure_dir(posixpath.join(cfg.workdir, ws.workset_id)))
        return scripts.answers(answer.out).get("location") if answer.code == 0 else None
    dest = match.group(1) if (match := _DEST.search(args)) else ws.workset_id
    landing = posixpath.join(cfg.clone_dest_root, dest, cfg.repo_dir_name)
    command = cfg.clone_command.replace("{clone_args}", args).replace("{workset_id}", ws.workset_id)
    answer = node.run(scripts.clone(login_shell_init=cfg.login_shell_init, command=command, earlier=landing))
    if found := scripts.answers(answer.out).get("location"):
        step.say(f"found the clone made before: {found}")
        return found
    if answer.code != 0:
        step.say(f"the clone failed (exit {answer.code}): {scripts.chatter(answer.out)[-2000:]}")
        return None
    return clone_location(answer.out) or landing
