"""``workset-monitor run``: the runner of the daemon's named root tasks, and its lifecycle. It runs engines; it does
none of their work.

Engines, one module each, every one a loop through ``Loops.poll`` (which records its ticks and applies the one policy
for trouble in a tick): ``scanner`` (discovery), ``claimer`` (``intake``: fills free slots and runs each workset on a
driver task), ``sweeper`` (dead holders), ``events`` (optional SQS notifications), ``notifier`` (the outbox),
``gauges`` (queue depth; ``cloudwatch`` optionally), ``reloader`` (SIGHUP), ``presence`` (this daemon's presence
item, for ``fleet``), ``watchdog`` (systemd), ``role`` (renews the chores role while this daemon holds it: the scanner,
the sweep and the gauges work only then; ``roles``). They read the
configuration through one swappable reference (``Live``) and tell each other news through events and small
protocols, never through each other's fields.

Every root task is guarded: one that raises, or returns while the daemon is not stopping, brings the daemon down in
order, with exit code 1, so systemd or Docker restarts it. Never a half-alive process.

Signal handlers only set flags. Shutdown is ordinary code in timed, logged phases: stop intake, drain running steps
for up to ``run.shutdown_grace_s``, stop what still runs, release those worksets to ``ready`` once their processes
are gone, flush the notification outbox (bounded; what is left is delivered after the next start), then exit 0. A
second SIGTERM/SIGINT skips the drain. SIGHUP reloads the config file (``reloader``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from monitor import __version__, logs
from monitor.config import Settings
from monitor.events import ReadyListener, listen_forever
from monitor.gauges import Gauges
from monitor.intake import Intake
from monitor.leases import Policy
from monitor.live import Live
from monitor.loops import Loops, phase
from monitor.notify import filters
from monitor.notify.outbox import deliver_forever
from monitor.presence import PresenceWriter, config_digest
from monitor.recorder import Tally
from monitor.reloader import Reloader
from monitor.roles import Chores
from monitor.scanner import Scanner, scan_forever, scan_tick
from monitor.services import Services
from monitor.sideport import SidePort
from monitor.sweeper import Sweeper, sweep_forever
from monitor.systemd import watchdog_forever

log = logs.get("monitor.supervisor")

__all__ = ["Services", "Supervisor"]  # Services lives in monitor.services; tests and the CLI import it here too


class Supervisor:
    def __init__(self, settings: Settings, services: Services, *, config_path: str = "") -> None:
        self.live = live = Live(settings)
        self.services = s = services
        self._config_path = config_path
        self._stop = asyncio.Event()
        self._fast = asyncio.Event()
        self.loops = Loops(s.clock, self._stop)
        policy = live.derive(Policy.from_settings)
        self.scanner = Scanner(
            s.store,
            s.source,
            s.clock,
            prefixes=live.derive(lambda new: list(new.scan.prefixes)),
            actor=f"scanner:{s.owner}",
            max_manifest_bytes=live.derive(lambda new: new.scan.max_manifest_bytes),
            notify=lambda event: filters.anyone_wants(live.settings.notify, event),
            memory=s.known_folders,
        )
        rec = s.metrics or Tally()
        self.chores = Chores(s.store, s.clock, owner=s.owner, policy=policy, recorder=rec)
        self.sweeper = Sweeper(
            s.store, s.clock, actor=f"sweeper:{s.owner}", policy=policy, recorder=rec, chores=self.chores
        )
        self.intake = Intake(
            s.store,
            s.clock,
            owner=s.owner,
            live=live,
            policy=policy,
            runner=s.runner,
            recorder=rec,
            fleet=lambda: self.sweeper.fleet,  # read at every round: the counter as soon as a sweep has read it
        )
        self.presence = PresenceWriter(
            s.store,
            s.clock,
            owner=s.owner,
            interval_s=live.derive(lambda new: new.run.presence_interval_s),
            digest=live.derive(config_digest),
            held=self.intake.held,
            ticks=self.loops.wall_times,
        )
        self.reloader = Reloader(live, read=s.reload, notifier=s.notifier, applied=self._applied)
        self.gauges = (
            Gauges(s.store, s.clock, metrics=s.metrics, live=live, sweeper=self.sweeper) if s.metrics else None
        )
        self.failed: str | None = None  # the root task that brought the daemon down
        self._roots: dict[str, asyncio.Task[None]] = {}
        self.side_port: SidePort | None = None
        if s.metrics is not None:
            s.metrics.attach(ticks=self.loops.wall_times, reload=self.reloader.state)
            s.metrics.hold_role(self.chores.held)

    @property
    def settings(self) -> Settings:
        return self.live.settings

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> int:
        """Run until a signal (or, with ``once``, one scan and claim round); returns the process exit code."""
        self._install_signal_handlers()
        log.info(
            "starting",
            version=__version__,
            config=self._config_path,
            table=self.settings.table.name,
            bucket=self.settings.scan.bucket,
            prefixes=self.settings.scan.prefixes,
            owner=self.services.owner,
            steps=[s.name for s in self.settings.pipeline.steps],
            once=once,
        )
        try:
            await (self._once() if once else self._forever())
        finally:
            await self._shutdown()
            self._remove_signal_handlers()
            self.services.notifier.close()
        log.info(
            "stopped",
            exit_code=1 if self.failed else 0,
            failed_task=self.failed,
            endings={ending.value: n for ending, n in self.intake.endings.items()},
            scanner=dict(self.scanner.totals),
        )
        return 1 if self.failed else 0

    def request_stop(self) -> None:
        """Begin a graceful shutdown; a second request skips the drain."""
        if self._stop.is_set():
            self._fast.set()
        self._stop.set()

    def request_reload(self) -> None:
        self.reloader.request()

    async def _forever(self) -> None:
        s, live, found = self.services, self.live, self.intake.wake
        scan_s = live.derive(lambda new: new.scan.interval_s)
        if s.metrics is not None and self.gauges is not None:
            self.side_port = SidePort(s.metrics.registry, health=self.loops.healthy, ready=self.gauges.ready)
            self.side_port.start(self.settings.metrics.host, self.settings.metrics.port)
            host, port = self.side_port.address
            log.info("serving metrics", url=f"http://{host}:{port}/metrics")
            self._start("gauges", self.gauges.run(self.loops))
            if s.cloudwatch is not None and (cw := self.settings.metrics.cloudwatch) is not None:
                publish = self.gauges.publish_forever(
                    self.loops, s.cloudwatch, interval_s=cw.interval_s, counters=s.metrics.totals
                )
                self._start("cloudwatch", publish)
        observe = s.metrics.scan_duration.observe if s.metrics is not None else None
        # In event mode the queue registers new worksets; the full scan only reconciles (a lost notification, a
        # prefix without them), on its own interval. The claimer and the notifier keep the scan interval either way.
        full_scan_s = scan_s if s.queue is None else live.derive(lambda new: new.scan.reconcile_interval_s)
        scanner = scan_forever(
            self.scanner, self.loops, interval_s=full_scan_s, found=found, observe=observe, chores=self.chores
        )
        self._start("scanner", scanner)
        self._start("claimer", self.intake.run(self.loops))
        sweep_s = live.derive(lambda new: new.lease.sweep_interval_s)
        self._start("sweeper", sweep_forever(self.sweeper, self.loops, interval_s=sweep_s, news=self.intake))
        heartbeat_s = live.derive(lambda new: new.lease.heartbeat_s)
        self._start("role", self.loops.poll("role", self.chores.renew, every_s=heartbeat_s))
        if s.queue is not None and self.settings.scan.bucket:
            listener = ReadyListener(s.queue, self.scanner, bucket=self.settings.scan.bucket)
            self._start("events", listen_forever(listener, self.loops, interval_s=scan_s, found=found))
        if s.outbox is not None:
            claim_s = live.derive(lambda new: new.notify.claim_s)
            self._start("notifier", deliver_forever(s.outbox, self.loops, interval_s=scan_s, claim_s=claim_s))
        self._start("reloader", self.reloader.run(self.loops))
        self._start("presence", self.presence.run(self.loops))
        if s.notifier.watchdog_interval_s:
            self._start("watchdog", watchdog_forever(s.notifier, self.loops))
        s.notifier.ready(f"serving: {len(self.settings.scan.prefixes)} prefix(es), owner {s.owner}")
        await self._stop.wait()

    async def _once(self) -> None:
        await scan_tick(self.scanner)
        await self.intake.round()
        await self.intake.wait_drivers(None, until=self._stop)
        await self.intake.claimer.settle_unknown()
        if self.services.outbox is not None:
            await self.services.outbox.deliver_pending()

    async def _shutdown(self) -> None:
        s, intake = self.services, self.intake
        s.notifier.stopping("stopping: draining running steps")
        with phase(log, "shutdown: stop intake", running=len(intake.drivers)):
            for task in self._roots.values():
                task.cancel()
            await asyncio.gather(*self._roots.values(), return_exceptions=True)
        grace_s = 0.0 if self._fast.is_set() else self.settings.run.shutdown_grace_s
        await intake.stop(grace_s=grace_s, fast=self._fast)
        if "role" in self._roots:
            with phase(log, "shutdown: release the chores role"):
                await self.chores.release()
        if "presence" in self._roots:
            with phase(log, "shutdown: remove presence"):
                await self.presence.remove()
        if s.outbox is not None:
            with phase(log, "shutdown: flush notifications"):
                await s.outbox.flush(timeout_s=10.0)
        if self.side_port is not None:
            self.side_port.stop()
        log.info("shutdown: done")

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _start(self, name: str, engine: Coroutine[Any, Any, None]) -> None:
        self._roots[name] = asyncio.create_task(self._guard(name, engine), name=name)

    async def _guard(self, name: str, engine: Coroutine[Any, Any, None]) -> None:
        """A root task that raises, or returns before the daemon stops, brings the daemon down."""
        try:
            await engine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.critical("root task died; shutting down", task=name, exc_info=True)
        else:
            if self._stop.is_set():
                return
            log.critical("root task ended; shutting down", task=name)
        if self.failed is None:
            self.failed = name
        self._stop.set()

    def _applied(self, new: Settings) -> None:
        s = self.services
        if s.outbox is not None and s.channels is not None:
            s.outbox.reconfigure(new.notify, s.channels(new.notify))
        self.intake.wake.set()

    # --- the verdicts the side port serves ------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        return self.loops.healthy()

    def ready(self) -> tuple[bool, str]:
        return self.gauges.ready() if self.gauges is not None else (False, "no queue gauges without metrics")
