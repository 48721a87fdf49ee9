"""``workset-monitor run``: the supervisor of the daemon's named root tasks, and its lifecycle.

Root tasks: ``scanner`` (discovery every ``scan.interval_s``), ``claimer`` (fills free slots, urgent first),
``sweeper`` (dead holders, and our own claims whose outcome we never learnt), ``events`` (optional SQS
notifications), ``notifier`` (the outbox), ``gauges`` (queue depth), ``cloudwatch`` (optional), ``reloader``
(SIGHUP), ``watchdog`` (systemd).
Every root task is a loop started by ``Supervisor._start``, which records each completed tick; a loop that declares a
staleness limit counts in the health verdict (``/healthz``, and the ``WATCHDOG=1`` pings: no ping while unhealthy).
No loop can forget to record its tick, and none can be watched without ticking.
Each is guarded: temporary AWS trouble is logged and retried on the next tick, and so is a corrupt item in the table
(logged once per item: a restart could not repair it, and the loops' listings leave it out), but a root task that dies
for any other reason brings the daemon down in order, with exit code 1, so systemd or Docker restarts it. Never a
half-alive process. Each claimed workset gets a driver task of its own (``driver.drive``), which is not a root task: its
failure is recorded on its workset, not the daemon's.

Signal handlers only set flags. Shutdown is ordinary code in logged phases: stop intake, drain running steps for up to
``run.shutdown_grace_s``, stop what still runs, release those worksets to ``ready`` once their processes are gone,
flush the notification outbox (bounded; what is left is delivered after the next start), then exit 0. A second
SIGTERM/SIGINT skips the drain. SIGHUP reloads the config file: a bad file is logged and the old configuration kept;
safe keys apply live; keys that need a restart are reported and keep their old value.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from monitor import __version__, errors, logs
from monitor.clock import Clock
from monitor.config import Loaded, NotifyConfig, Settings
from monitor.driver import Ending, drive
from monitor.events import ReadyListener
from monitor.leases import Claimer, Holding, Policy
from monitor.metrics import Metrics, Publisher
from monitor.model import FINISHED_STATES, State, Stats
from monitor.notify.outbox import Channel, Outbox
from monitor.ports import Queue, Source, Store
from monitor.scanner import Scanner
from monitor.sideport import SidePort
from monitor.steps import Runner
from monitor.sweeper import Sweeper
from monitor.systemd import Notifier

log = logs.get("monitor.supervisor")

# (section, key or None for the whole section): changing these needs a restart; a reload keeps the old value.
RESTART_ONLY: tuple[tuple[str, str | None], ...] = (
    ("aws", None),
    ("table", None),
    ("lease", None),
    ("scan", "bucket"),
    ("scan", "write_sentinels"),
    ("scan", "sqs_queue_url"),
    ("metrics", "host"),
    ("metrics", "port"),
    ("metrics", "cloudwatch"),
    ("run", "step_env_passthrough"),
    ("log", "format"),
)


@dataclass
class Services:
    """What the daemon works with; built by the CLI (or a test) from the configuration."""

    store: Store
    source: Source
    clock: Clock
    runner: Runner
    owner: str
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    queue: Queue | None = None
    reload: Callable[[], Loaded] | None = None  # reads and validates the config file again
    outbox: Outbox | None = None  # notification delivery
    channels: Callable[[NotifyConfig], list[Channel]] | None = None  # rebuilds the channels on reload
    metrics: Metrics | None = None  # Prometheus; served on the side port
    cloudwatch: Publisher | None = None  # optional, for sites without Prometheus


class Supervisor:
    def __init__(self, settings: Settings, services: Services, *, config_path: str = "") -> None:
        self.settings = settings
        self._s = services
        self._config_path = config_path
        policy = Policy.from_config(settings.lease, settings.run)
        self.scanner = Scanner(
            services.store,
            services.source,
            services.clock,
            prefixes=list(settings.scan.prefixes),
            actor=f"scanner:{services.owner}",
            max_manifest_bytes=settings.scan.max_manifest_bytes,
        )
        self.claimer = Claimer(services.store, services.clock, owner=services.owner, policy=policy)
        self.sweeper = Sweeper(services.store, services.clock, actor=f"sweeper:{services.owner}", policy=policy)
        self.drivers: dict[str, asyncio.Task[Ending]] = {}
        self.endings: Counter[str] = Counter()
        self.last_success: dict[str, float] = {}  # loop name -> monotonic time of its last good tick
        self.reload_successful = True
        self.failed: str | None = None  # the root task that brought the daemon down
        self._stop = asyncio.Event()
        self._fast = asyncio.Event()
        self._reload = asyncio.Event()  # wakes the reloader...
        self._reload_requested = False  # ...which reloads if this is set (a SIGHUP came)
        self._wake_claimer = asyncio.Event()
        self._drain = asyncio.Event()
        self._kill = asyncio.Event()
        self._roots: dict[str, asyncio.Task[None]] = {}
        self._stale_after_s: dict[str, Callable[[], float]] = {}  # the loops the health verdict watches
        self._withheld = False  # the watchdog ping is being withheld (logged once)
        self._corrupt: set[str] = set()  # keys of the corrupt items a loop tick met (logged once each)
        self._started_at = services.clock.monotonic()
        self._loaded_at = time.time()
        self._side_port: SidePort | None = None
        self.latest_stats: Stats | None = None  # the last queue refresh (gauges, CloudWatch)
        self._stats_at: float | None = None  # monotonic time of it
        self._finished_at: float | None = None  # ... and of the last one that counted FINISHED_STATES too
        if services.metrics is not None:
            services.metrics.attach(self)
            if services.outbox is not None:
                services.outbox.observe = services.metrics.notification

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
            owner=self._s.owner,
            steps=[s.name for s in self.settings.pipeline.steps],
            once=once,
        )
        try:
            if once:
                await self._once()
            else:
                await self._forever()
        finally:
            await self._shutdown()
            self._remove_signal_handlers()
            self._s.notifier.close()
        log.info(
            "stopped",
            exit_code=1 if self.failed else 0,
            failed_task=self.failed,
            endings=dict(self.endings),
            scanner=dict(self.scanner.totals),
            claims=dict(self.claimer.counts),
            takeovers=self.sweeper.taken_over,
        )
        return 1 if self.failed else 0

    def request_stop(self) -> None:
        """Begin a graceful shutdown; a second request skips the drain."""
        if self._stop.is_set():
            self._fast.set()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._reload.set()

    async def _forever(self) -> None:
        s = self.settings  # read through self.settings in every lambda below: reloads apply live
        if self._s.metrics is not None:
            self._side_port = SidePort(self._s.metrics.registry, health=self.healthy, ready=self.ready)
            self._side_port.start(s.metrics.host, s.metrics.port)
            host, port = self._side_port.address
            log.info("serving metrics", url=f"http://{host}:{port}/metrics")
            self._start(
                "gauges",
                self._gauges_tick,
                every_s=lambda: self.settings.metrics.queue_refresh_s,
                stale_after_s=lambda: 3 * self.settings.metrics.queue_refresh_s + 60,
            )
        if self._s.cloudwatch is not None and s.metrics.cloudwatch is not None:
            cw = s.metrics.cloudwatch
            self._start("cloudwatch", self._cloudwatch_tick, every_s=lambda: cw.interval_s)
        self._start("scanner", self._scan_tick, every_s=self._scan_s, stale_after_s=self._scan_stale_s)
        self._start(
            "claimer",
            self._claim_round,
            # and when woken: new work found here, a slot freed, a takeover, a reload; or when a hold-off ends
            every_s=lambda: self.claimer.next_round_s(self.settings.scan.interval_s),
            stale_after_s=self._scan_stale_s,
            wake=self._wake_claimer,
        )
        self._start(
            "sweeper",
            self._sweep_tick,
            every_s=lambda: self.sweeper.next_interval_s(self.settings.lease.sweep_interval_s),
            stale_after_s=lambda: 3 * self.settings.lease.sweep_interval_s + 60,
            first_delay_s=self.sweeper.first_delay_s(s.lease.sweep_interval_s),
        )
        if self._s.queue is not None and s.scan.bucket:
            listener = ReadyListener(self._s.queue, self.scanner, bucket=s.scan.bucket, prefixes=self.scanner_prefixes)
            self._start(
                "events",
                lambda: self._events_tick(listener),
                every_s=lambda: 0.0,  # each tick long-polls the queue
                stale_after_s=lambda: 3 * self._events_wait_s() + 60,
            )
        if self._s.outbox is not None:
            outbox = self._s.outbox
            self._start(
                "notifier",
                lambda: outbox.deliver_pending(budget_s=self.settings.scan.interval_s),
                every_s=self._scan_s,
                # a pass stops taking events after its budget; one event's delivery never outlasts its claim
                stale_after_s=lambda: self._scan_stale_s() + self.settings.notify.claim_s,
                wake=outbox.doorbell.rung,
            )
        self._start("reloader", self._reload_tick, every_s=lambda: 3600.0, wake=self._reload)
        if self._s.notifier.watchdog_interval_s:
            interval_s = self._s.notifier.watchdog_interval_s
            self._start("watchdog", self._watchdog_tick, every_s=lambda: interval_s)
        self._s.notifier.ready(f"serving: {len(s.scan.prefixes)} prefix(es), owner {self._s.owner}")
        await self._stop.wait()

    def _scan_s(self) -> float:
        return self.settings.scan.interval_s

    def _scan_stale_s(self) -> float:
        return 3 * self.settings.scan.interval_s + 60

    def _events_wait_s(self) -> int:
        return min(20, int(self.settings.scan.interval_s))

    async def _once(self) -> None:
        await self._scan_tick()
        await self._claim_round()
        if self.drivers:
            await self._wait_drivers(None, until=self._stop)
        await self.claimer.settle_unknown()
        if self._s.outbox is not None:
            await self._s.outbox.deliver_pending()

    async def _shutdown(self) -> None:
        self._s.notifier.stopping("stopping: draining running steps")
        log.info("shutdown: stop intake", running=len(self.drivers))
        for task in self._roots.values():
            task.cancel()
        await asyncio.gather(*self._roots.values(), return_exceptions=True)
        if self.drivers:
            grace = 0.0 if self._fast.is_set() else self.settings.run.shutdown_grace_s
            log.info("shutdown: drain", running=len(self.drivers), grace_s=grace)
            self._drain.set()
            await self._wait_drivers(grace, until=self._fast)
        if self.drivers:
            log.info("shutdown: stop steps and release", running=len(self.drivers))
            self._kill.set()
            await self._wait_drivers(None)
        if self._s.outbox is not None:
            log.info("shutdown: flush notifications")
            await self._s.outbox.flush(timeout_s=10.0)
        if self._side_port is not None:
            self._side_port.stop()
        log.info("shutdown: done")

    async def _wait_drivers(self, timeout_s: float | None, *, until: asyncio.Event | None = None) -> None:
        """Wait for every driver to end, at most ``timeout_s``, or until ``until`` is set."""
        # asyncio.wait never cancels what it waits for, so cancelling `waiter` leaves the drivers running.
        waiter: asyncio.Future[Any] = asyncio.ensure_future(asyncio.wait(set(self.drivers.values())))
        stopper: asyncio.Future[Any] = asyncio.ensure_future(until.wait() if until else asyncio.Event().wait())
        await asyncio.wait({waiter, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for future in (waiter, stopper):
            future.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    # --- root tasks --------------------------------------------------------------------------------------------

    def _start(
        self,
        name: str,
        body: Callable[[], Awaitable[object]],
        *,
        every_s: Callable[[], float],
        stale_after_s: Callable[[], float] | None = None,
        wake: asyncio.Event | None = None,
        first_delay_s: float = 0.0,
    ) -> None:
        """Start root task ``name``: ``body`` every ``every_s()`` seconds, guarded. The only way to start one, so every
        root task records its completed ticks; with ``stale_after_s`` it counts in the health verdict (and so in the
        systemd watchdog): unhealthy once it has not completed a tick for that long."""
        if stale_after_s is not None:
            self._stale_after_s[name] = stale_after_s
        loop = self._loop(name, every_s, body, wake=wake, first_delay_s=first_delay_s)
        self._roots[name] = asyncio.create_task(self._guard(name, loop), name=name)

    async def _guard(self, name: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.failed is None:
                self.failed = name
            log.critical("root task died; shutting down", task=name, exc_info=True)
            self._stop.set()

    async def _loop(
        self,
        name: str,
        interval_s: Callable[[], float],
        body: Callable[[], Awaitable[object]],
        *,
        wake: asyncio.Event | None = None,
        first_delay_s: float = 0.0,
    ) -> None:
        """Run ``body`` every ``interval_s()`` seconds (the time the work took is subtracted), tolerating temporary
        AWS trouble, and record each completed tick in ``last_success``; ``wake`` runs it early."""
        if first_delay_s > 0:
            await self._s.clock.sleep(first_delay_s, until=self._stop)
        while not self._stop.is_set():
            if wake is not None:
                wake.clear()
            started = self._s.clock.monotonic()
            try:
                await body()
                self.last_success[name] = self._s.clock.monotonic()
            except errors.CorruptItem as exc:  # listings leave corrupt items out; this one was read on its own
                if exc.key not in self._corrupt:
                    self._corrupt.add(exc.key)
                    log.error("loop tick met a corrupt item; repair or delete it", loop=name, error=str(exc))
            except errors.MonitorError as exc:
                if not exc.temporary:
                    raise
                log.warning("loop tick failed; will retry", loop=name, error=str(exc))
            elapsed = self._s.clock.monotonic() - started
            await self._s.clock.sleep(max(interval_s() - elapsed, 0), until=wake or self._stop)

    async def _scan_tick(self) -> None:
        started = time.perf_counter()
        report = await self.scanner.scan_once()
        if self._s.metrics is not None:
            self._s.metrics.scan_duration.observe(time.perf_counter() - started)
        if report.outcomes:
            log.info("scan", folders=report.folders, **report.outcomes)
        if report["registered"] or report["already_registered"]:  # new work, ours or found by another daemon
            self._wake_claimer.set()

    async def _sweep_tick(self) -> None:
        given_back = await self.claimer.settle_unknown()  # our own claims whose outcome we never learnt
        taken = await self.sweeper.sweep_once()
        for decision in taken:
            if decision.after.state is State.RETRYING:
                self.claimer.expect_retry(decision.after.available_at_ms)
        if taken or given_back:
            self._wake_claimer.set()

    async def _events_tick(self, listener: ReadyListener) -> None:
        if await listener.poll_once(wait_s=self._events_wait_s()):
            self._wake_claimer.set()

    async def _claim_round(self) -> None:
        free = self.settings.run.max_concurrent - len(self.drivers)
        for holding in await self.claimer.claim(slots=free, fleet=self.sweeper.fleet):
            self._spawn(holding)

    def _spawn(self, holding: Holding) -> None:
        task = asyncio.create_task(
            drive(
                holding,
                steps=list(self.settings.pipeline.steps),
                runner=self._s.runner,
                drain=self._drain,
                kill=self._kill,
            ),
            name=f"driver {holding.workset_id}",
        )
        self.drivers[holding.workset_id] = task
        task.add_done_callback(functools.partial(self._driver_done, holding))

    def _driver_done(self, holding: Holding, task: asyncio.Task[Ending]) -> None:
        self.drivers.pop(holding.workset_id, None)
        if holding.ws.state is State.RETRYING:
            self.claimer.expect_retry(holding.ws.available_at_ms)
        self._wake_claimer.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug or a permanent AWS error in one workset's driver: that workset is swept later
            self.endings["crashed"] += 1
            log.error(
                "driver failed; the sweeper will recover the workset", workset_id=holding.workset_id, exc_info=exc
            )
            return
        self.endings[task.result().value] += 1
        log.info("workset finished here", workset_id=holding.workset_id, ending=task.result().value)

    async def _gauges_tick(self) -> None:
        """Queue depth and ages from the table, on their own interval: a scrape never queries the table.

        Counting reads every index entry of a state, so the states that only grow (complete, ignored, cancelled:
        nearly all of a busy table) are counted every ``finished_refresh_s``, the rest every ``queue_refresh_s``.
        """
        assert self._s.metrics is not None
        now = self._s.clock.monotonic()
        previous = self.latest_stats
        everything = self._finished_at is None or now - self._finished_at >= self.settings.metrics.finished_refresh_s
        active = [s for s in State if s not in FINISHED_STATES]
        stats = await self._s.store.stats(now_ms=self._s.clock.now_ms(), states=None if everything else active)
        if everything:
            self._finished_at = now
        else:
            assert previous is not None  # set together with _finished_at
            stats = Stats(
                counts={s: previous.counts.get(s, {}) for s in FINISHED_STATES} | stats.counts,
                oldest_ready_age_s=stats.oldest_ready_age_s,
                oldest_change_age_s={s: a for s, a in previous.oldest_change_age_s.items() if s in FINISHED_STATES}
                | stats.oldest_change_age_s,
            )
        self._s.metrics.queue(stats, oldest_age_s=stats.oldest_change_age_s, now_s=time.time())
        self.latest_stats, self._stats_at = stats, self._s.clock.monotonic()
        fleet = self.sweeper.fleet
        if fleet is not None and fleet.running <= 0 and stats.count(State.IN_PROGRESS) > 0:
            self.sweeper.distrust_counter()  # the index says otherwise: let the sweeper look (it logs if so)

    async def _cloudwatch_tick(self) -> None:
        assert self._s.cloudwatch is not None
        await self._s.cloudwatch.publish(self.latest_stats, self.counters())

    async def _watchdog_tick(self) -> None:
        healthy, why = self.healthy()
        if healthy:
            self._s.notifier.watchdog()
            self._withheld = False
        elif not self._withheld:  # once per spell: systemd kills the daemon one watchdog period later
            self._withheld = True
            log.error("unhealthy: withholding the systemd watchdog ping", reason=why)

    def healthy(self) -> tuple[bool, str]:
        """(True, "") when every watched loop has completed a tick recently, else (False, which loop is stuck)."""
        now = self._s.clock.monotonic()
        for name, limit_s in self._stale_after_s.items():
            silent_s = now - self.last_success.get(name, self._started_at)
            if silent_s > limit_s():
                return False, f"loop {name} has not completed a tick for {silent_s:.0f} s"
        return True, ""

    def ready(self) -> tuple[bool, str]:
        """(True, "") once the table has answered a queue refresh recently."""
        if self._stats_at is None:
            return False, "the table has not answered yet"
        silent_s = self._s.clock.monotonic() - self._stats_at
        if silent_s > 3 * self.settings.metrics.queue_refresh_s + 30:
            return False, f"the table has not answered for {silent_s:.0f} s"
        return True, ""

    # --- what the metrics read at scrape time (metrics.Sources) ---------------------------------------------------

    def counters(self) -> dict[str, dict[tuple[str, ...], float]]:
        hb = self.claimer.heartbeats
        return {
            "claims": {(k,): v for k, v in self.claimer.counts.items()},
            "heartbeats": {(k,): v for k, v in hb.items()},
            "leases_lost": {(): hb.get("lost", 0)},
            "stale_leases_reclaimed": {(): self.sweeper.taken_over},
            "notifications": {k: float(v) for k, v in self._s.outbox.counts.items()} if self._s.outbox else {},
            "error_transitions": {(): self._s.metrics.errors_written()} if self._s.metrics is not None else {},
        }

    def loop_ticks(self) -> dict[str, float]:
        now_mono, now_wall = self._s.clock.monotonic(), time.time()
        return {name: now_wall - (now_mono - at) for name, at in self.last_success.items()}

    def reload_state(self) -> tuple[bool, float]:
        return self.reload_successful, self._loaded_at

    # --- reload ------------------------------------------------------------------------------------------------

    async def _reload_tick(self) -> None:
        if self._reload_requested:
            self._reload_requested = False
            await self.reload()

    async def reload(self) -> bool:
        """Read the config file again; apply what is safe live. False (old config kept) when it is invalid."""
        if self._s.reload is None:
            return False
        self._s.notifier.reloading()
        try:
            loaded = await asyncio.to_thread(self._s.reload)
        except errors.ConfigError as exc:
            self.reload_successful = False
            log.error("config reload failed; keeping the running configuration", error=str(exc))
            self._s.notifier.send("READY=1", f"STATUS=reload failed: {exc}"[:200])
            return False
        new, kept = keep_restart_only(self.settings, loaded.settings)
        for key in kept:
            log.warning("config key needs a restart; keeping the running value", key=key)
        self.apply(new)
        self.reload_successful = True
        self._loaded_at = time.time()
        log.info("config reloaded", config=str(loaded.path), restart_needed=kept)
        self._s.notifier.ready("serving (configuration reloaded)")
        return True

    def apply(self, new: Settings) -> None:
        """Switch to ``new`` settings: intervals, concurrency, retries, steps, prefixes, channels, log level."""
        self.settings = new
        policy = Policy.from_config(new.lease, new.run)
        self.claimer._policy = policy
        self.sweeper._policy = policy
        self.scanner._prefixes[:] = new.scan.prefixes
        self.scanner._max_manifest_bytes = new.scan.max_manifest_bytes
        logs.set_level(new.log.level)
        if self._s.outbox is not None and self._s.channels is not None:
            self._s.outbox.reconfigure(new.notify, self._s.channels(new.notify))
        self._wake_claimer.set()

    @property
    def scanner_prefixes(self) -> list[str]:
        return self.scanner._prefixes


def keep_restart_only(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with every restart-only key that changed put back to its ``old`` value, and those keys' names."""
    kept: list[str] = []
    sections: dict[str, Any] = {}
    for section, key in RESTART_ONLY:
        old_section, new_section = getattr(old, section), sections.get(section, getattr(new, section))
        if key is None:
            if old_section != new_section:
                kept.append(section)
                sections[section] = old_section
        elif getattr(old_section, key) != getattr(new_section, key):
            kept.append(f"{section}.{key}")
            sections[section] = new_section.model_copy(update={key: getattr(old_section, key)})
    return new.model_copy(update=sections), kept
