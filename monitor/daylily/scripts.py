"""The shell scripts the steps send to the head node, and how their answers are read. Pure: every value in a script
is quoted here, and every answer line the steps act on starts with ``MARK`` (a login shell's own chatter, from a
``.bashrc`` say, is never mistaken for one).

On the head node, in the pipeline directory:

- ``daylily.successful_run`` / ``daylily.failed_run``: written by the pipeline itself (as the old monitor expected);
- ``.workset-monitor/run.log``: the run's output; ``run.started``: the head node's clock when it was launched (the
  timeout is measured on that one clock, whatever host watches); ``run.epoch``: the epoch that launched it.
"""

from __future__ import annotations

import posixpath
import shlex
import zlib

MARK = "@workset-daylily "
SUCCEEDED, FAILED = "daylily.successful_run", "daylily.failed_run"
OWN_DIR = ".workset-monitor"


def session_name(prefix: str, workset_id: str) -> str:
    """The run's tmux session: one per workset, so its existence is the run's lock. tmux forbids '.' and ':' in a
    name; an id with a '.' gets its CRC-32 appended, so that ``a.b`` and ``a_b`` never share a session."""
    if "." not in workset_id:
        return f"{prefix}_{workset_id}"
    return f"{prefix}_{workset_id.replace('.', '_')}_{zlib.crc32(workset_id.encode()):08x}"


def answers(out: str) -> dict[str, str]:
    """The ``MARK key=value`` lines of a script's output."""
    found = {}
    for line in out.splitlines():
        if line.startswith(MARK) and "=" in line:
            key, _, value = line[len(MARK) :].partition("=")
            found[key.strip()] = value.strip()
    return found


def chatter(out: str) -> str:
    """A script's output without its answer lines: what to show a person."""
    return "\n".join(line for line in out.splitlines() if not line.startswith(MARK)).strip()


def launch(
    *, pdir: str, session: str, epoch: int, workset_id: str, login_shell_init: str, run_command: str, rerun: bool
) -> str:
    """Start the run in its own tmux session, unless it has already started or ended. Answers ``outcome`` (a
    sentinel is there: ``succeeded`` / ``failed``), or ``session`` (``attached``: it is running; ``launched``: we
    started it). With ``rerun``, a ``daylily.failed_run`` already reported is moved aside and the run starts again."""
    q = shlex.quote
    inner = (
        f"{login_shell_init} && {run_command}" if login_shell_init.strip() else run_command
    )  # the run's own shell line, as the operator wrote it
    in_session = (
        f"cd {q(pdir)} && export WORKSET_ID={q(workset_id)} WORKSET_EPOCH={epoch} && "
        f"exec bash -lc {q(inner)} >> {OWN_DIR}/run.log 2>&1"  # exec: Ctrl-C reaches the run, not a shell between
    )
    return f"""
cd {q(pdir)} 2>/dev/null || {{ echo "no pipeline directory {q(pdir)} on the head node"; exit 3; }}
mkdir -p {OWN_DIR} || exit 3
if [ -e {SUCCEEDED} ]; then echo "{MARK}outcome=succeeded"; exit 0; fi
if [ -e {FAILED} ]; then
  if [ {int(rerun)} = 1 ]; then mv {FAILED} {OWN_DIR}/{FAILED}.$(date +%s) || exit 3
  else echo "{MARK}outcome=failed"; exit 0; fi
fi
if tmux has-session -t ={q(session)} 2>/dev/null; then
  echo "{MARK}session=attached"; echo "{MARK}launched_by=$(cat {OWN_DIR}/run.epoch 2>/dev/null)"; exit 0
fi
echo {epoch} > {OWN_DIR}/run.epoch && date +%s > {OWN_DIR}/run.started || exit 3
echo "=== launched by epoch {epoch} at $(date -u +%FT%TZ) ===" >> {OWN_DIR}/run.log
if ! tmux new-session -d -s {q(session)} {q(in_session)}; then
  # Another launch won the name a moment ago: theirs is the run.
  if tmux has-session -t ={q(session)} 2>/dev/null; then echo "{MARK}session=attached"; exit 0; fi
  echo "tmux could not start session {q(session)}"; exit 4
fi
echo "{MARK}session=launched"
"""


def look(*, pdir: str, session: str, tail_lines: int) -> str:
    """How the run stands: ``outcome`` = ``succeeded`` | ``failed`` | ``running`` | ``gone`` (no session and no
    sentinel), ``now`` and ``started`` on the head node's clock; the log's tail when it did not succeed."""
    q = shlex.quote
    return f"""
cd {q(pdir)} 2>/dev/null || {{ echo "no pipeline directory {q(pdir)} on the head node"; exit 3; }}
if [ -e {SUCCEEDED} ]; then outcome=succeeded
elif [ -e {FAILED} ]; then outcome=failed
elif tmux has-session -t ={q(session)} 2>/dev/null; then outcome=running
else outcome=gone; fi
echo "{MARK}outcome=$outcome"
echo "{MARK}now=$(date +%s)"
echo "{MARK}started=$(cat {OWN_DIR}/run.started 2>/dev/null)"
case $outcome in
  succeeded) tmux kill-session -t ={q(session)} 2>/dev/null ;;
  failed|gone) tmux kill-session -t ={q(session)} 2>/dev/null; tail -n {tail_lines} {OWN_DIR}/run.log 2>/dev/null ;;
esac
exit 0
"""


def interrupt(*, pdir: str, session: str, grace_s: float, tail_lines: int) -> str:
    """Ctrl-C to the run (as a person at its terminal would), then, after ``grace_s``, kill its session."""
    q = shlex.quote
    return f"""
tmux send-keys -t ={q(session + ":")} C-c 2>/dev/null  # "=name:" is the session's pane; "=name" is no pane
for _ in $(seq {max(1, round(grace_s))}); do tmux has-session -t ={q(session)} 2>/dev/null || break; sleep 1; done
tmux kill-session -t ={q(session)} 2>/dev/null
cd {q(pdir)} 2>/dev/null && tail -n {tail_lines} {OWN_DIR}/run.log 2>/dev/null
exit 0
"""


IDLE_MARK = "~/.workset-monitor/idle_since"  # on the head node: shared by every host that asks


def idle(queue_command: str) -> str:
    """Whether the cluster is idle — no tmux session (no run of any workset) and nothing in Slurm's queue — and, if
    so, for how long on the head node's clock (since the first look that found it idle; a busy look forgets that)."""
    return f"""
sessions=$(tmux list-sessions 2>/dev/null | wc -l)
jobs=$({queue_command} 2>/dev/null | wc -l)
mkdir -p ~/.workset-monitor
if [ "$sessions" -gt 0 ] || [ "$jobs" -gt 0 ]; then
  rm -f {IDLE_MARK}; echo "{MARK}busy=$sessions session(s), $jobs job(s)"; exit 0
fi
[ -s {IDLE_MARK} ] || date +%s > {IDLE_MARK}
echo "{MARK}idle_s=$(( $(date +%s) - $(cat {IDLE_MARK}) ))"
"""


def clone(*, login_shell_init: str, command: str, earlier: str | None) -> str:
    """Clone the pipeline with the team's command, unless a clone is already where this one would land
    (``earlier``: a clone made before a crash). Answers ``location`` when it found one; the command's output
    otherwise (its ``Location:`` line names the directory)."""
    q = shlex.quote
    found = f'if [ -d {q(earlier)} ]; then echo "{MARK}location={earlier}"; exit 0; fi\n' if earlier is not None else ""
    run = f"{login_shell_init} && {command}" if login_shell_init.strip() else command
    return f"{found}{run}\n"


def ensure_dir(path: str) -> str:
    return f'mkdir -p {shlex.quote(path)} && echo "{MARK}location={path}"\n'


def push(*, pdir: str, stage_dir: str, staged: tuple[str, ...]) -> str:
    """Copy the staged files into the pipeline directory's sample_data/ (keeping their paths), and the stage's
    ``<ts>_samples.tsv`` / ``<ts>_units.tsv`` to config/samples.tsv and config/units.tsv, as the old monitor did
    (``ts`` is the stage directory's name without ``remote_stage_``). Copying again gives the same result."""
    q = shlex.quote
    lines = ["set -e", f"cd {q(pdir)}", "mkdir -p config sample_data"]
    for rel in staged:
        target = posixpath.join("sample_data", rel)
        lines.append(f"mkdir -p {q(posixpath.dirname(target) or '.')}")
        lines.append(f"cp -p {q(posixpath.join(stage_dir, rel))} {q(target)}")
    ts = posixpath.basename(stage_dir.rstrip("/")).removeprefix("remote_stage_")
    for kind in ("samples", "units"):
        source = q(posixpath.join(stage_dir, f"{ts}_{kind}.tsv"))
        lines.append(f"if [ -e {source} ]; then cp -p {source} config/{kind}.tsv; fi")
    lines.append(f'echo "{MARK}pushed={len(staged)}"')
    return "\n".join(lines) + "\n"
