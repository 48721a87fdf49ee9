"""Driving one claimed workset: its steps in order, under its lease, to one recorded outcome.

- Steps already recorded as finished (by us or by an earlier holder on any host) are skipped: a new holder resumes at
  the first unfinished step. A ``poll`` step simply runs again and re-attaches to the external run.
- The heartbeat runs beside the steps as a guarded sub-task, and so does the holding's own fencing timer: a lost
  lease (taken over, cancelled, a heartbeat that raised, a heartbeat task that ended for any reason, or no successful
  renewal for ``renew_deadline_s``, whether the heartbeat task is renewing or hung) kills the running step's process
  group at once and nothing more is written.
- ``drain`` (graceful shutdown): no new step starts; ``kill``: the running step is stopped. Either way the workset is
  released to ``ready`` (no failure counted) only after the step's processes are gone.
- A step's outcome decides: done → next step (its output tail in the ``step_finished`` event); exit 75 or a timeout →
  ``retrying`` with backoff (``error`` once attempts are used up); any other exit → ``error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import StrEnum

from monitor import errors, logs
from monitor.config import StepConfig
from monitor.leases import Holding
from monitor.model import State
from monitor.steps import Outcome, Runner

log = logs.get("monitor.driver")


class Ending(StrEnum):
    """How driving a workset ended here."""

    COMPLETE = "complete"
    RETRYING = "retrying"  # a step failed for now: the workset waits out its backoff
    ERROR = "error"  # a step failed for good, or the attempts are used up
    RELEASED = "released"  # shutdown: given back to ready, no attempt counted
    STEP_DONE = "step_done"  # the one step asked for (``only``) ran; the steps left are given back to the daemons
    LOST = "lost"  # the lease was lost: nothing more written
    CRASHED = "crashed"  # the driver raised (a bug, a permanent AWS error): the sweeper recovers the workset


async def drive(
    holding: Holding,
    *,
    steps: Sequence[StepConfig],
    runner: Runner,
    drain: asyncio.Event,
    kill: asyncio.Event,
    only: str | None = None,
) -> Ending:
    """Run the workset's remaining steps, or exactly the step ``only`` (finished before or not: an operator re-running
    it by hand); returns how it ended. Never raises for a lost lease."""
    logs.bind(workset_id=holding.workset_id, lease_owner=holding.owner, epoch=holding.epoch)
    stop = asyncio.Event()
    halt = asyncio.Event()  # stops the running step: lease lost, or shutdown ran out of patience
    heartbeat = asyncio.create_task(holding.keep_alive(stop), name=f"heartbeat {holding.workset_id}")
    heartbeat.add_done_callback(lambda task: _heartbeat_ended(holding, task, stop))
    helpers = [
        heartbeat,
        asyncio.create_task(holding.fence_on_time(stop), name=f"fencing {holding.workset_id}"),
        asyncio.create_task(_first_of(halt, holding.lost, kill)),
    ]
    try:
        return await _steps(holding, steps=steps, runner=runner, drain=drain, kill=kill, halt=halt, only=only)
    except errors.LeaseLost:
        log.warning("lease lost; workset abandoned", workset_id=holding.workset_id, reason=holding.lost_reason)
        return Ending.LOST
    finally:
        stop.set()
        for task in helpers:  # the outcome is recorded (or abandoned): a heartbeat still in flight is of no use
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


async def _steps(
    holding: Holding,
    *,
    steps: Sequence[StepConfig],
    runner: Runner,
    drain: asyncio.Event,
    kill: asyncio.Event,
    halt: asyncio.Event,
    only: str | None,
) -> Ending:
    for step in steps:
        if step.name != only if only is not None else step.name in holding.ws.steps_done:
            continue
        if drain.is_set() or kill.is_set():
            await holding.release("daemon shutting down")
            return Ending.RELEASED
        holding.step_started(step.name)
        ws = holding.ws
        values = {
            "workset_id": ws.workset_id,
            "bucket": ws.bucket,
            "prefix": ws.prefix,
            "s3_uri": ws.s3_uri,
            "attempt": ws.attempts,
            "epoch": ws.epoch,
        }
        log.info("step started", workset_id=ws.workset_id, step=step.name, kind=step.kind, epoch=ws.epoch)
        result = await runner.run(step, values, stop=halt)
        log.info(
            "step ended",
            workset_id=ws.workset_id,
            step=step.name,
            outcome=result.outcome.value,
            exit_code=result.exit_code,
            seconds=result.seconds,
        )
        if holding.lost.is_set():
            raise errors.LeaseLost(holding.lost_reason)
        summary, run = result.describe(step.name), result.record(step.name)
        if result.outcome is Outcome.STOPPED:
            await holding.release(f"daemon shutting down; {summary}", run=run)
            return Ending.RELEASED
        if result.outcome is Outcome.DONE:
            await holding.step_finished(step.name, detail=summary, run=run)
            continue
        state = await holding.fail(summary, temporary=result.outcome is Outcome.TEMPORARY, run=run)
        return Ending.RETRYING if state is State.RETRYING else Ending.ERROR
    left = [step.name for step in steps if step.name not in holding.ws.steps_done]
    if only is not None and left:
        await holding.release(f"step {only} was run by hand; {', '.join(left)} left to the daemons")
        return Ending.STEP_DONE
    await holding.complete()
    return Ending.COMPLETE


def _heartbeat_ended(holding: Holding, task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """The heartbeat is guarded: if it ends while the workset is being driven, for any reason (a bug that returns
    or raises, a cancellation), the holding is given up at once, which halts the running step."""
    if stop.is_set() or holding.lost.is_set():
        return
    why = "cancelled" if task.cancelled() else f"raised {task.exception()!r}" if task.exception() else "returned"
    holding.give_up(f"heartbeat task ended ({why})")


async def _first_of(target: asyncio.Event, *sources: asyncio.Event) -> None:
    waiters = [asyncio.create_task(source.wait()) for source in sources]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for waiter in waiters:
            waiter.cancel()
