"""Running the team's pipeline steps as child processes (DESIGN §6).

- Never a shell: each step is an argv list whose ``{placeholders}`` are filled in per argument, so a workset id can
  never become shell syntax. The same values are in the environment (``WORKSET_ID`` ... ``WORKSET_STEP``).
- Each run gets its own session and process group; a timeout, a cancel or a lost lease kills the whole group
  (SIGTERM, then SIGKILL after ``kill_grace_s``), grandchildren included, and ``run`` returns only once the child is
  gone.
- ``exec``: exit 0 done, 75 temporary failure, anything else a failure. ``poll``: re-run every ``interval_s`` while it
  exits 75 ("still running"), done on 0, a failure otherwise; ``timeout_s`` bounds the whole wait. This is how a
  daemon supervises a long external run without holding a process for hours, and how a new holder re-attaches.
- Output: every line goes to the daemon's log (with workset and step bound); the last ``TAIL_BYTES`` are kept for
  the audit event; with ``[run] step_logs = "s3"`` all of it, byte for byte, goes to S3 too (``monitor.step_logs``).

Not guaranteed: a child that detaches into a new session of its own escapes the group kill (systemd's control-group
kill still gets it); a step's external effects are fenced only if the step honours ``WORKSET_EPOCH``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from monitor import logs
from monitor.clock import Clock
from monitor.config import DEFAULT_PASSTHROUGH, NEVER_PASSED, StepConfig
from monitor.model import StepRun
from monitor.step_logs import Opener, Sink

log = logs.get("monitor.steps")

EXIT_TEMPORARY = 75  # EX_TEMPFAIL: try again later (exec), still running (poll)
TAIL_BYTES = 4000


class Outcome(StrEnum):
    DONE = "done"
    TEMPORARY = "temporary"  # exit 75 from exec, or a timeout: worth another attempt after a backoff
    FAILED = "failed"  # any other exit: the workset has a problem no retry fixes
    STOPPED = "stopped"  # we killed it: lease lost, cancelled, shutdown


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    exit_code: int | None
    tail: str
    seconds: float
    runs: int = 1  # how many times a poll step's command ran
    started_at_ms: int = 0  # wall clock, when ``Runner.run`` began it

    def record(self, step: str) -> StepRun:
        """This run as the audit trail keeps it."""
        return StepRun(
            step=step,
            started_at_ms=self.started_at_ms,
            duration_ms=round(self.seconds * 1000),
            outcome=self.outcome.value,
            exit_code=self.exit_code,
        )

    def describe(self, step: str) -> str:
        """One line for the audit trail: what happened, then the end of the output."""
        what = {
            Outcome.DONE: "finished",
            Outcome.TEMPORARY: "failed temporarily" if self.exit_code is not None else "timed out",
            Outcome.FAILED: "failed",
            Outcome.STOPPED: "was stopped",
        }[self.outcome]
        code = f" (exit {self.exit_code})" if self.exit_code is not None else ""
        return f"step {step} {what}{code}" + (f"; output ends: {self.tail}" if self.tail else "")


def render(step: StepConfig, values: Mapping[str, object]) -> list[str]:
    """The argv of a step with its placeholders filled (config validation guarantees only known names occur)."""
    return [arg.format_map(values) for arg in step.command]


def passed_on(env: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The part of the daemon's environment its steps get: the variables ``names`` lists (``NAME*``: every name
    with that prefix), never the daemon's own ``WORKSET_MONITOR_*`` settings (in any case: that is how they are
    read)."""
    exact = {name for name in names if not name.endswith("*")}
    prefixes = tuple(name[:-1] for name in names if name.endswith("*"))
    return {
        key: value
        for key, value in env.items()
        if (key in exact or key.startswith(prefixes)) and not key.upper().startswith(NEVER_PASSED)
    }


def environment(values: Mapping[str, object], step: str, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env |= {f"WORKSET_{name.upper()}": str(value) for name, value in values.items() if name != "workset_id"}
    env |= {"WORKSET_ID": str(values["workset_id"]), "WORKSET_STEP": step}
    return env


class Runner:
    """Runs steps. A step's environment is its own ``WORKSET_*`` variables and, of ``base_env`` (the daemon's
    environment, given by the CLI), only what ``passthrough`` lists (``[run] step_env_passthrough``): a daemon's
    secrets and credentials given by environment never reach a step, its output, the log or the audit trail."""

    def __init__(
        self,
        clock: Clock,
        *,
        base_env: Mapping[str, str],
        passthrough: Sequence[str] = DEFAULT_PASSTHROUGH,
        kill_grace_s: float = 5.0,
        observe: Callable[[str, Result], None] | None = None,
        logs: Opener | None = None,
    ) -> None:
        self._clock = clock
        self._base_env = passed_on(base_env, passthrough)
        self._kill_grace_s = kill_grace_s
        self._observe = observe  # metrics: every finished run, by step name
        self._open_log = logs  # full step logs (``[run] step_logs``): where each run's output goes

    async def run(self, step: StepConfig, values: Mapping[str, object], *, stop: asyncio.Event) -> Result:
        """Run ``step`` to its outcome, or until ``stop`` is set (then the process group is killed)."""
        started_at_ms = self._clock.now_ms()
        sink = self._open_log(step.name, values) if self._open_log is not None else None
        try:
            result = await self._run(step, values, stop=stop, sink=sink)
        finally:
            if sink is not None:
                await sink.close()
        result = dataclasses.replace(result, started_at_ms=started_at_ms)
        if self._observe is not None:
            self._observe(step.name, result)
        return result

    async def _run(
        self, step: StepConfig, values: Mapping[str, object], *, stop: asyncio.Event, sink: Sink | None
    ) -> Result:
        if step.kind == "exec":
            return await self._once(step, values, stop=stop, timeout_s=step.timeout_s, sink=sink)
        started = time.monotonic()
        runs = 0
        while True:
            remaining = step.timeout_s - (time.monotonic() - started)
            if remaining <= 0:
                tail = f"still running after {step.timeout_s:g} s"
                return Result(Outcome.TEMPORARY, None, tail, _since(started), runs)
            result = await self._once(step, values, stop=stop, timeout_s=remaining, sink=sink)
            runs += 1
            if result.outcome is not Outcome.TEMPORARY or result.exit_code != EXIT_TEMPORARY:
                return Result(result.outcome, result.exit_code, result.tail, _since(started), runs)
            if await self._clock.sleep(min(step.interval_s, remaining), until=stop):
                return Result(Outcome.STOPPED, None, result.tail, _since(started), runs)

    async def _once(
        self,
        step: StepConfig,
        values: Mapping[str, object],
        *,
        stop: asyncio.Event,
        timeout_s: float,
        sink: Sink | None,
    ) -> Result:
        argv = render(step, values)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=environment(values, step.name, self._base_env),
                start_new_session=True,  # its own process group: we can kill the whole tree
            )
        except OSError as exc:
            why = f"could not start {argv[0]!r}: {exc.strerror or exc}"
            if sink is not None:
                await sink.write(f"[workset-monitor: {why}]\n".encode())
            return Result(Outcome.FAILED, None, why, 0.0)
        tail: collections.deque[bytes] = collections.deque()
        reader = asyncio.create_task(_pump(process, tail, step=step.name, sink=sink))
        # Not process.wait(): asyncio reports the exit only once every pipe is closed, which a grandchild that
        # inherited our stdout can delay for ever.
        exited = asyncio.create_task(_exited(process))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({exited, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if exited not in done:
            exited.cancel()
            await self._kill(process)
        else:  # the step is over; whatever it left running in its group goes with it (it would hold our pipe)
            _signal_group(process.pid, signal.SIGTERM)
        await self._reap_group(process.pid, reader)
        await asyncio.gather(exited, stopper, reader, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # the pipes are closed now: let asyncio finish the transport
            await asyncio.wait_for(process.wait(), timeout=1)
        text = _tail_text(tail)
        seconds = _since(started)
        if exited not in done:
            timed_out = stopper not in done
            return Result(Outcome.TEMPORARY if timed_out else Outcome.STOPPED, None, text, seconds)
        code = process.returncode
        assert code is not None
        if code == 0:
            return Result(Outcome.DONE, 0, text, seconds)
        if code == EXIT_TEMPORARY:
            return Result(Outcome.TEMPORARY, code, text, seconds)
        return Result(Outcome.FAILED, code, text, seconds)

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the whole group, SIGKILL what is left after the grace period; returns when the child is gone."""
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_exited(process), timeout=self._kill_grace_s)
        _signal_group(process.pid, signal.SIGKILL)  # also reaches grandchildren that outlived their parent
        await _exited(process)

    async def _reap_group(self, pgid: int, reader: asyncio.Task[None]) -> None:
        """Wait for the group's output to end (every member gone); SIGKILL stragglers after the grace period."""
        try:
            await asyncio.wait_for(asyncio.shield(reader), timeout=self._kill_grace_s)
        except TimeoutError:
            _signal_group(pgid, signal.SIGKILL)


async def _exited(process: asyncio.subprocess.Process) -> int:
    """The child's exit code, as soon as it has exited (whatever still holds its output pipe)."""
    while process.returncode is None:  # noqa: ASYNC110 - asyncio offers no exit event apart from the pipes
        await asyncio.sleep(0.05)
    return process.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _pump(
    process: asyncio.subprocess.Process, tail: collections.deque[bytes], *, step: str, sink: Sink | None
) -> None:
    """Stream the child's output to our log line by line, keeping the last TAIL_BYTES (lines of any length), and
    to the step log as it is."""
    assert process.stdout is not None
    size = 0
    buffer = b""
    while True:
        chunk = await process.stdout.read(65536)
        if sink is not None and chunk:
            await sink.write(chunk)
        *complete, buffer = (buffer + chunk).split(b"\n")
        if not chunk or len(buffer) > 65536:  # the end, or a line too long to wait for: take it as it is
            complete.append(buffer)
            buffer = b""
        for line in filter(None, complete):
            tail.append(line + b"\n")
            size += len(line) + 1
            log.info("step output", step=step, line=line.decode("utf-8", "replace")[:2000])
        while size > TAIL_BYTES and len(tail) > 1:
            size -= len(tail.popleft())
        if not chunk:
            return


def _tail_text(tail: collections.deque[bytes]) -> str:
    text = b"".join(tail)[-TAIL_BYTES:].decode("utf-8", "replace").strip()
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-TAIL_BYTES:]


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
