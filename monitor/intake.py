"""Intake: fills this daemon's free slots with due worksets, urgent first, each driven by a task of its own.

It owns the claimer and everything the claimer needs to know: the fleet counter as the sweeper last read it (a
getter read at every round: a copy handed over at the end of each sweep came a sweep late and cost ~3 % more AWS
calls and ~8 % more time in the calm chaos run), when the worksets it moved to ``retrying`` become due, and the
claims whose outcome it never learnt (settled before each sweep). Its round runs every scan interval, and early
when ``wake`` is set: new work found (scanner, events), a slot freed, a takeover, a reload; or when a hold-off ends.

A driver task (``driver.drive``) is not a root task: its failure is recorded on its workset, not the daemon's; a
driver that raises leaves its workset to the sweeper.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor import logs
from monitor.clock import Clock
from monitor.driver import Ending, drive
from monitor.leases import Claimer, Holding, Policy
from monitor.live import Live
from monitor.loops import Loops, phase
from monitor.model import Fleet, Held, State
from monitor.ports import Store
from monitor.recorder import Recorder
from monitor.states import Decision
from monitor.steps import Runner

log = logs.get("monitor.intake")


class Intake:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        live: Live,
        policy: Callable[[], Policy],
        runner: Runner,
        recorder: Recorder,
        fleet: Callable[[], Fleet | None],
    ) -> None:
        self.claimer = Claimer(store, clock, owner=owner, policy=policy, recorder=recorder)
        self.drivers: dict[str, asyncio.Task[Ending]] = {}
        self._holdings: dict[str, tuple[Holding, int]] = {}  # what the drivers hold, and since when (our clock)
        self._clock = clock
        self.endings: Counter[Ending] = Counter()
        self.wake = asyncio.Event()  # run a round now
        self.drain = asyncio.Event()  # shutdown: start no new step
        self.kill = asyncio.Event()  # shutdown ran out of patience: stop the running steps
        self._fleet = fleet  # the fleet counter as the sweeper last read it, the moment it read it
        self._live = live
        self._runner = runner

    async def run(self, loops: Loops) -> None:
        await loops.poll(
            "claimer",
            self.round,
            every_s=lambda: self.claimer.next_round_s(self._live.settings.scan.interval_s),
            stale_after_s=lambda: 3 * self._live.settings.scan.interval_s + 60,
            wake=self.wake,
        )

    async def round(self) -> None:
        free = self._live.settings.run.max_concurrent - len(self.drivers)
        fleet = self._fleet()
        if fleet is not None and fleet.paused is not None:
            return  # intake paused: not even the read of the queue (a claim would be refused by its own write anyway)
        for holding in await self.claimer.claim(slots=free, fleet=fleet):
            self._spawn(holding)

    # --- what the sweeper tells us (sweeper.SweepNews) -----------------------------------------------------------

    async def before_sweep(self) -> bool:
        """Settle our own claims whose outcome we never learnt; True if one was given back."""
        return bool(await self.claimer.settle_unknown())

    def swept(self, taken: list[Decision], given_back: bool) -> None:
        for decision in taken:
            if decision.after.state is State.RETRYING:
                self.claimer.expect_retry(decision.after.available_at_ms)
        if taken or given_back:
            self.wake.set()

    # --- drivers -------------------------------------------------------------------------------------------------

    def _spawn(self, holding: Holding) -> None:
        task = asyncio.create_task(
            drive(
                holding,
                steps=list(self._live.settings.pipeline.steps),
                runner=self._runner,
                drain=self.drain,
                kill=self.kill,
            ),
            name=f"driver {holding.workset_id}",
        )
        self.drivers[holding.workset_id] = task
        self._holdings[holding.workset_id] = (holding, self._clock.now_ms())
        task.add_done_callback(functools.partial(self._driver_done, holding))

    def held(self) -> tuple[Held, ...]:
        """What this daemon runs now, for its presence item: each workset, its step, since when."""
        return tuple(
            Held(workset_id=workset_id, step=holding.ws.current_step, since_ms=since_ms)
            for workset_id, (holding, since_ms) in sorted(self._holdings.items())
        )

    def _driver_done(self, holding: Holding, task: asyncio.Task[Ending]) -> None:
        self.drivers.pop(holding.workset_id, None)
        self._holdings.pop(holding.workset_id, None)
        if holding.ws.state is State.RETRYING:
            self.claimer.expect_retry(holding.ws.available_at_ms)
        self.wake.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug or a permanent AWS error in one workset's driver: that workset is swept later
            self.endings[Ending.CRASHED] += 1
            log.error(
                "driver failed; the sweeper will recover the workset", workset_id=holding.workset_id, exc_info=exc
            )
            return
        self.endings[task.result()] += 1
        log.info("workset finished here", workset_id=holding.workset_id, ending=task.result().value)

    async def stop(self, *, grace_s: float, fast: asyncio.Event) -> None:
        """Shutdown: let the running steps finish for up to ``grace_s`` (or until ``fast``), then stop what still
        runs; each driver releases its workset to ``ready`` once its step's processes are gone."""
        if self.drivers:
            with phase(log, "shutdown: drain", running=len(self.drivers), grace_s=grace_s):
                self.drain.set()
                await self.wait_drivers(grace_s, until=fast)
        if self.drivers:
            with phase(log, "shutdown: stop steps and release", running=len(self.drivers)):
                self.kill.set()
                await self.wait_drivers(None)

    async def wait_drivers(self, timeout_s: float | None, *, until: asyncio.Event | None = None) -> None:
        """Wait for every driver to end, at most ``timeout_s``, or until ``until`` is set."""
        if not self.drivers:
            return
        # asyncio.wait never cancels what it waits for, so cancelling `waiter` leaves the drivers running.
        waiter: asyncio.Future[Any] = asyncio.ensure_future(asyncio.wait(set(self.drivers.values())))
        stopper: asyncio.Future[Any] = asyncio.ensure_future(until.wait() if until else asyncio.Event().wait())
        await asyncio.wait({waiter, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for future in (waiter, stopper):
            future.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
