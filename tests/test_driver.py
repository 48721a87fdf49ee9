"""Driving claimed worksets with real step processes: order, outcomes, resume after a restart, lost leases."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from pathlib import Path

from monitor import actions, errors
from monitor.clock import SystemClock
from monitor.config import StepConfig
from monitor.driver import Ending, drive
from monitor.leases import Claimer, Holding, Policy
from monitor.memory import MemoryStore
from monitor.model import EventType, Priority, State, WorksetId
from monitor.recorder import Tally
from monitor.states import Action, Context
from monitor.steps import Runner
from tests.conftest import run
from tests.virtual_time import VirtualClock

POLICY = Policy(duration_s=3, heartbeat_s=0.5, grace_s=1, max_attempts=2)


def py(name: str, code: str, *, kind: str = "exec") -> StepConfig:
    return StepConfig(name=name, command=[sys.executable, "-c", code], kind=kind, timeout_s=20, interval_s=0.1)  # type: ignore[arg-type]


class Rig:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.clock = SystemClock()
        self.runner = Runner(self.clock, base_env={"PATH": "/usr/bin:/bin"}, kill_grace_s=1)
        self.drain, self.kill = asyncio.Event(), asyncio.Event()
        self.tally = Tally()  # what its claimers and holdings counted

    async def register(self, name: str = "ws-1") -> None:
        await actions.register(
            self.store,
            workset_id=WorksetId(name),
            bucket="lab",
            prefix=f"w/{name}/",
            priority=Priority.NORMAL,
            ctx=Context(now_ms=self.clock.now_ms(), actor="t"),
        )

    async def claim(self, owner: str = "host-a:1:0") -> Holding:
        claimer = Claimer(self.store, self.clock, owner=owner, policy=POLICY, recorder=self.tally)
        [holding] = await claimer.claim(slots=1)
        return holding

    async def drive(self, holding: Holding, steps: list[StepConfig]) -> Ending:
        return await drive(holding, steps=steps, runner=self.runner, drain=self.drain, kill=self.kill)

    async def events(self, name: str = "ws-1") -> list[EventType]:
        return [e.type for e in await self.store.history(WorksetId(name))]


def test_steps_run_in_order_and_the_workset_completes(tmp_path: Path) -> None:
    log = tmp_path / "order"
    rig = Rig()
    steps = [py(n, f"open({str(log)!r}, 'a').write('{n} '); print('did {n}')") for n in ("stage", "run", "export")]

    async def scenario() -> None:
        await rig.register()
        assert await rig.drive(await rig.claim(), steps) is Ending.COMPLETE
        history = await rig.store.history(WorksetId("ws-1"))
        assert [e.type for e in history][-4:] == [EventType.STEP_FINISHED] * 3 + [EventType.COMPLETE]
        assert "did stage" in history[2].detail

    run(scenario())
    assert log.read_text() == "stage run export "


def test_each_step_run_is_recorded_with_its_timings_and_a_resumed_run_keeps_the_earlier_ones(tmp_path: Path) -> None:
    """The audit trail and the record keep each step run's start, duration, outcome and exit code, agreeing with the
    step's own clock; a retry resumes at the failed step and the finished one's duration stays on the record."""
    times, gate = tmp_path / "times", tmp_path / "fixed"
    measure = "import time, pathlib; t = time.monotonic(); time.sleep({s}); "
    stage = py("stage", measure.format(s=0.3) + f"open({str(times)!r}, 'a').write(str(time.monotonic() - t) + ' ')")
    analyse = py(
        "analyse",
        measure.format(s=0.2)
        + f"open({str(times)!r}, 'a').write(str(time.monotonic() - t) + ' '); "
        + f"raise SystemExit(0 if pathlib.Path({str(gate)!r}).exists() else 2)",
    )
    rig = Rig()

    async def scenario() -> None:
        await rig.register()
        before = rig.clock.now_ms()
        assert await rig.drive(await rig.claim(), [stage, analyse]) is Ending.ERROR
        failed = await rig.store.get(WorksetId("ws-1"))
        assert failed is not None and failed.finished_at_ms is not None and failed.step_ms[0][0] == "stage"
        first_start = failed.started_at_ms
        assert first_start is not None and before <= first_start <= failed.finished_at_ms
        gate.touch()
        await actions.act(rig.store, WorksetId("ws-1"), Action.RETRY, Context(now_ms=rig.clock.now_ms(), actor="op"))
        assert await rig.drive(await rig.claim(), [stage, analyse]) is Ending.COMPLETE
        done = await rig.store.get(WorksetId("ws-1"))
        history = await rig.store.history(WorksetId("ws-1"))
        own = [float(t) for t in times.read_text().split()]  # stage, analyse (failed), analyse
        runs = [e.step_run for e in history if e.step_run is not None]
        assert [(r.step, r.outcome, r.exit_code) for r in runs] == [
            ("stage", "done", 0),
            ("analyse", "failed", 2),
            ("analyse", "done", 0),
        ]
        ended = [EventType.STEP_FINISHED, EventType.ERROR, EventType.STEP_FINISHED]
        assert [e.type for e in history if e.step_run] == ended
        for r, seconds in zip(runs, own, strict=True):  # the process's own sleep, plus its start-up
            assert seconds <= r.duration_ms / 1000 < seconds + 1.0, (r, seconds)
        assert all(a.started_at_ms + a.duration_ms <= b.started_at_ms for a, b in itertools.pairwise(runs))
        assert done is not None and dict(done.step_ms) == {"stage": runs[0].duration_ms, "analyse": runs[2].duration_ms}
        assert done.started_at_ms is not None and done.started_at_ms > first_start  # the retry is a new run
        assert done.finished_at_ms is not None and done.finished_at_ms >= runs[2].started_at_ms + runs[2].duration_ms

    run(scenario())


def test_a_temporary_failure_retries_and_a_permanent_one_is_an_error() -> None:
    rig = Rig()

    async def scenario() -> None:
        await rig.register("flaky")
        assert await rig.drive(await rig.claim(), [py("s", "import sys; sys.exit(75)")]) is Ending.RETRYING
        await rig.register("broken")  # registered later, so the next claim cannot be the retrying one
        assert (
            await rig.drive(await rig.claim(), [py("s", "import sys; print('bad ref'); sys.exit(2)")]) is Ending.ERROR
        )
        broken = await rig.store.get(WorksetId("broken"))
        assert broken is not None and broken.state is State.ERROR and "bad ref" in (broken.last_error or "")

    run(scenario())


def test_after_a_restart_finished_steps_are_skipped_and_a_poll_step_reattaches(tmp_path: Path) -> None:
    runs, job_done = tmp_path / "stage-runs", tmp_path / "job-done"
    stage = py(
        "stage",
        f"p = __import__('pathlib').Path({str(runs)!r}); p.write_text(p.read_text() + 'x' if p.exists() else 'x')",
    )
    wait = py(
        "analyse", f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(job_done)!r}).exists() else 75)", kind="poll"
    )
    rig = Rig()

    async def scenario() -> None:
        await rig.register()
        first = await rig.claim("host-a:1:0")
        task = asyncio.create_task(rig.drive(first, [stage, wait]))
        while first.ws.current_step != "analyse":  # stage done, polling the external job now
            await asyncio.sleep(0.05)
        rig.kill.set()  # the daemon stops while the external job is still running
        assert await task is Ending.RELEASED
        released = (await rig.store.history(WorksetId("ws-1")))[-1]
        assert released.type is EventType.RELEASED and released.step_run is not None
        assert (released.step_run.step, released.step_run.outcome) == ("analyse", "stopped")  # the run so far
        rig.kill.clear()
        second = await rig.claim("host-b:2:0")  # another daemon picks it up
        assert second.ws.steps_done == ("stage",)
        job_done.write_text("")
        assert await rig.drive(second, [stage, wait]) is Ending.COMPLETE

    run(scenario())
    assert runs.read_text() == "x", "the finished exec step ran again"


def test_a_cancelled_workset_has_its_step_killed_at_the_next_heartbeat(tmp_path: Path) -> None:
    started = tmp_path / "started"
    rig = Rig()

    async def scenario() -> None:
        await rig.register()
        holding = await rig.claim()
        task = asyncio.create_task(
            rig.drive(holding, [py("long", f"import time; open({str(started)!r}, 'w'); time.sleep(60)")])
        )
        while not started.exists():
            await asyncio.sleep(0.05)
        await actions.act(
            rig.store, WorksetId("ws-1"), Action.CANCEL, Context(now_ms=rig.clock.now_ms(), actor="operator:me@x")
        )
        assert await asyncio.wait_for(task, timeout=10) is Ending.LOST
        ws = await rig.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.state is State.CANCELLED
        assert (await rig.events())[-1] is EventType.CANCELLED  # nothing written after the cancel

    run(scenario())


def test_draining_lets_the_running_step_finish_then_releases(tmp_path: Path) -> None:
    rig = Rig()
    marker = tmp_path / "first-done"

    async def scenario() -> None:
        await rig.register()
        holding = await rig.claim()
        steps = [py("first", f"import time; time.sleep(0.5); open({str(marker)!r}, 'w')"), py("second", "print(2)")]
        task = asyncio.create_task(rig.drive(holding, steps))
        await asyncio.sleep(0.1)
        rig.drain.set()
        assert await task is Ending.RELEASED
        ws = await rig.store.get(WorksetId("ws-1"))
        assert ws is not None and ws.state is State.READY and ws.steps_done == ("first",) and ws.attempts == 0

    run(scenario())
    assert marker.exists()


def test_no_steps_configured_completes_at_once() -> None:
    rig = Rig()

    async def scenario() -> None:
        await rig.register()
        assert await rig.drive(await rig.claim(), []) is Ending.COMPLETE

    run(scenario())


class RefusedForGood:
    """A store whose heartbeats, once armed, are answered with a permanent error (the credentials lost access)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store, self.armed = store, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def heartbeat(self, *args: object, **kwargs: object) -> int | None:
        if self.armed:
            raise errors.AwsError("heartbeat: access denied (AccessDeniedException: injected)")
        return await self._store.heartbeat(*args, **kwargs)  # type: ignore[arg-type]


async def _ending_by(rig: Rig, task: asyncio.Task[Ending], clock: VirtualClock, seconds: float) -> Ending | None:
    """Let ``seconds`` of virtual time pass: the driver's ending if it came within a few real seconds (time to kill and
    reap the step's process), else None, once the step is stopped as a shutdown would (to end the test in order)."""
    await clock.run_for(seconds)
    done, _ = await asyncio.wait({task}, timeout=5)
    if done:
        return task.result()
    rig.kill.set()
    with contextlib.suppress(TimeoutError, errors.MonitorError):
        await asyncio.wait_for(task, timeout=5)
    return None


def _long_step(started: Path) -> StepConfig:
    return py("long", f"import time; open({str(started)!r}, 'w'); time.sleep(60)")


def test_a_heartbeat_refused_for_good_stops_the_step_by_the_renew_deadline(tmp_path: Path) -> None:
    """AccessDenied/ExpiredToken on a heartbeat used to end the heartbeat task with nobody watching it: the step ran
    on past the renew deadline while another daemon's sweeper could take the workset over and run it again."""
    started = tmp_path / "started"
    rig = Rig()
    rig.clock = clock = VirtualClock()  # type: ignore[assignment]
    rig.store = store = RefusedForGood(rig.store)  # type: ignore[assignment]

    async def scenario() -> None:
        await rig.register()
        holding = await rig.claim()
        task = asyncio.create_task(rig.drive(holding, [_long_step(started)]))
        while not started.exists():
            await asyncio.sleep(0.05)
        store.armed = True
        left_s = holding.renewed_at + POLICY.renew_deadline_s - clock.monotonic()
        assert await _ending_by(rig, task, clock, left_s) is Ending.LOST
        assert rig.tally.heartbeats["lost"] == 1 and "access denied" in holding.lost_reason, holding.lost_reason

    run(scenario())


def test_a_hung_heartbeat_task_cannot_keep_the_step_running_past_the_renew_deadline(tmp_path: Path) -> None:
    """The step is stopped on the holding's own timer, whatever the heartbeat task does (here: nothing, ever)."""
    started = tmp_path / "started"
    rig = Rig()
    rig.clock = clock = VirtualClock()  # type: ignore[assignment]

    async def hang(stop: asyncio.Event) -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        await rig.register()
        holding = await rig.claim()
        holding.keep_alive = hang  # type: ignore[method-assign]
        task = asyncio.create_task(rig.drive(holding, [_long_step(started)]))
        while not started.exists():
            await asyncio.sleep(0.05)
        left_s = holding.renewed_at + POLICY.renew_deadline_s - clock.monotonic()
        await clock.run_for(left_s - 0.05)
        assert not task.done(), "stopped before the renew deadline"
        assert await _ending_by(rig, task, clock, 0.05) is Ending.LOST
        assert rig.tally.heartbeats["lost"] == 1 and "no successful renewal" in holding.lost_reason

    run(scenario())


def test_a_heartbeat_task_that_ends_early_for_any_reason_halts_the_step_at_once(tmp_path: Path) -> None:
    """The heartbeat is a guarded sub-task of the driver: should it return (a bug) or be cancelled while the step
    runs, the holding is given up at once and the step stopped, not left running until the renew deadline."""

    async def returns(stop: asyncio.Event) -> None:
        return None

    async def cancelled(stop: asyncio.Event) -> None:
        raise asyncio.CancelledError

    async def scenario(name: str, ending: object) -> None:
        rig = Rig()
        rig.clock = clock = VirtualClock()  # type: ignore[assignment]
        started = tmp_path / f"started-{name}"
        await rig.register(name)
        holding = await rig.claim()
        holding.keep_alive = ending  # type: ignore[method-assign]
        task = asyncio.create_task(rig.drive(holding, [_long_step(started)]))
        while not started.exists() and not task.done():  # the step may be stopped before it got going
            await asyncio.sleep(0.05)
        assert await _ending_by(rig, task, clock, 0.01) is Ending.LOST, "the step ran on without a heartbeat"
        assert "heartbeat task ended" in holding.lost_reason, holding.lost_reason

    run(scenario("returns", returns))
    run(scenario("cancelled", cancelled))
