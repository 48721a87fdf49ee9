"""The supervisor in-process (S3 and DynamoDB on moto, real step processes): rounds, crashes, shutdown, reload."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client import CollectorRegistry

from monitor import config, errors
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.gauges import Gauges
from monitor.leases import Policy
from monitor.live import Live
from monitor.metrics import Metrics
from monitor.model import State, WorksetId
from monitor.reloader import keep_restart_only
from monitor.scanner import Scanner
from monitor.states import nobody
from monitor.steps import Runner
from monitor.supervisor import Services, Supervisor
from monitor.sweeper import Sweeper
from monitor.systemd import Notifier
from tests.conftest import REGION, run, supervising
from tests.lab import BUCKET, Lab
from tests.virtual_time import VirtualClock

TABLE = "sup-test"


def write_config(path: Path, *, steps: str = 'command = ["true"]', extra: str = "") -> Path:
    path.write_text(
        f'[table]\nname = "{TABLE}"\n[scan]\nbucket = "{BUCKET}"\nprefixes = ["w/"]\ninterval_s = 0.5\n'
        "[lease]\nduration_s = 4\nheartbeat_s = 1\nsweep_interval_s = 0.5\ngrace_s = 1\n"
        "[run]\nmax_concurrent = 2\nshutdown_grace_s = 1\nretry_backoff_base_s = 1\nretry_backoff_max_s = 1\n"
        f'{extra}\n[[pipeline.steps]]\nname = "main"\n{steps}\n'
    )
    return path


@pytest.fixture
def world(mocked_aws: None, tmp_path: Path) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name=TABLE))
    return {"lab": Lab(s3), "store": DynamoStore(dynamodb, TABLE), "source": S3Source(s3, BUCKET), "tmp": tmp_path}


def supervisor(world: dict[str, Any], path: Path, **kw: Any) -> Supervisor:
    """A daemon on ``world`` configured by ``path``; ``kw``: other services (a source, an outbox...)."""
    loaded = config.load(path, {})
    clock = SystemClock()
    services = Services(
        store=world["store"],
        source=kw.pop("source", world["source"]),
        clock=clock,
        runner=Runner(clock, base_env=dict(os.environ), kill_grace_s=1),
        owner=kw.pop("owner", "host-t:1:0"),
        reload=lambda: config.load(path, {}),
        **kw,
    )
    return Supervisor(loaded.settings, services, config_path=str(path))


def states(world: dict[str, Any]) -> dict[str, State]:
    return {ws.workset_id: ws.state for ws in run(world["store"].list())}


def test_once_scans_claims_and_finishes_what_it_claimed(world: dict[str, Any]) -> None:
    for name in ("a", "b", "c"):
        world["lab"].workset(name, prefix="w/")
    sup = supervisor(world, write_config(world["tmp"] / "c.toml"))
    assert run(sup.run(once=True)) == 0
    assert sorted(states(world).values()) == [State.COMPLETE, State.COMPLETE, State.READY]  # max_concurrent = 2
    assert sup.intake.endings == {"complete": 2}


def test_a_dying_root_task_brings_the_daemon_down_with_exit_1(world: dict[str, Any]) -> None:
    class Broken(S3Source):
        async def folders(self, prefix: str) -> list[str]:
            raise RuntimeError("a bug in discovery")

    broken = Broken(world["source"]._client, BUCKET)
    sup = supervisor(world, write_config(world["tmp"] / "c.toml"), source=broken)
    assert run(asyncio.wait_for(sup.run(), timeout=20)) == 1
    assert sup.failed == "scanner"


def test_temporary_aws_trouble_does_not_kill_the_daemon(world: dict[str, Any]) -> None:
    calls = 0

    class Flaky(S3Source):
        async def folders(self, prefix: str) -> list[str]:
            nonlocal calls
            calls += 1
            raise errors.AwsTemporaryError("SlowDown")

    sup = supervisor(world, write_config(world["tmp"] / "c.toml"), source=Flaky(world["source"]._client, BUCKET))

    async def scenario() -> None:
        async with supervising(sup):
            while calls < 3:
                await asyncio.sleep(0.05)

    run(asyncio.wait_for(scenario(), timeout=20))
    assert sup.healthy()[0] is True


def test_stop_during_a_long_step_releases_the_workset_within_the_grace(world: dict[str, Any]) -> None:
    world["lab"].workset("slow", prefix="w/")
    path = write_config(
        world["tmp"] / "c.toml", steps=f'command = ["{sys.executable}", "-c", "import time; time.sleep(60)"]'
    )
    sup = supervisor(world, path)

    async def scenario() -> None:
        async with supervising(sup):
            while not sup.intake.drivers:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)

    run(asyncio.wait_for(scenario(), timeout=20))
    ws = run(world["store"].get(WorksetId("slow")))
    assert ws is not None and ws.state is State.READY and ws.attempts == 0 and sup.intake.endings == {"released": 1}


def test_a_broken_reload_keeps_the_running_configuration(world: dict[str, Any]) -> None:
    path = write_config(world["tmp"] / "c.toml")
    sup = supervisor(world, path)
    path.write_text(path.read_text() + "\n[run]\nmax_concurrent = 'lots'\n")
    assert run(sup.reloader.reload()) is False
    assert sup.reloader.successful is False and sup.settings.run.max_concurrent == 2


def test_a_reload_applies_safe_keys_and_keeps_restart_only_ones(world: dict[str, Any]) -> None:
    path = write_config(world["tmp"] / "c.toml")
    sup = supervisor(world, path)
    text = path.read_text().replace("max_concurrent = 2", "max_concurrent = 5").replace(TABLE, "another-table")
    path.write_text(text.replace('prefixes = ["w/"]', 'prefixes = ["w/", "x/"]') + '\n[log]\nlevel = "debug"\n')
    assert run(sup.reloader.reload()) is True
    assert sup.settings.run.max_concurrent == 5 and sup.settings.table.name == TABLE
    assert sup.scanner.prefixes() == ["w/", "x/"] and sup.reloader.successful


def test_restart_only_keys_are_kept_and_named(tmp_path: Path) -> None:
    old = config.load(write_config(tmp_path / "a.toml"), {}).settings
    new = config.load(
        write_config(tmp_path / "b.toml", extra='[aws]\nregion = "eu-west-1"\n[metrics]\nport = 12000\n'), {}
    ).settings
    merged, kept = keep_restart_only(
        old, new.model_copy(update={"run": new.run.model_copy(update={"max_attempts": 9})})
    )
    assert sorted(kept) == ["aws", "metrics.port"]
    assert merged.aws == old.aws and merged.metrics.port == old.metrics.port and merged.run.max_attempts == 9


def test_loops_subtract_the_time_their_work_took() -> None:
    from monitor.clock import FakeClock
    from monitor.loops import Loops

    clock = FakeClock()
    starts: list[float] = []

    async def scenario() -> None:
        loops = Loops(clock, stop := asyncio.Event())

        async def work() -> None:
            starts.append(clock.monotonic())
            clock.advance(0.3)  # the work itself takes 0.3 s of the 1 s interval
            if len(starts) == 5:
                stop.set()

        await loops.poll("scanner", work, every_s=lambda: 1.0)

    run(scenario())
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [1.0] * 4


def test_an_idle_daemon_makes_at_most_three_dynamodb_calls_per_scan_interval(world: dict[str, Any]) -> None:
    """The budget of docs/performance.md, in-process: once the work is done, a scan interval costs one read of the
    fleet's control items (the sweep's look at the counter and the chores role), one query of the ready worksets
    (the claim round) and one of the outbox; and the only write is the chores role's renewal, once per heartbeat."""
    import time

    from monitor.config import NotifyConfig
    from monitor.leases import INDEX_SETTLE_S
    from monitor.notify.outbox import Doorbell, Outbox

    for name in ("a", "b", "c", "d"):
        world["lab"].workset(name, prefix="w/")
    interval = 0.25
    text = write_config(world["tmp"] / "c.toml").read_text()
    path = world["tmp"] / "idle.toml"
    path.write_text(text.replace("interval_s = 0.5", f"interval_s = {interval}").replace("0.5\n", f"{interval}\n"))
    outbox = Outbox(
        world["store"], SystemClock(), owner="host-t:1:0", doorbell=Doorbell(), notify=NotifyConfig(), channels=[]
    )
    sup = supervisor(world, path, outbox=outbox)
    assert sup.settings.lease.sweep_interval_s == sup.settings.scan.interval_s == interval
    calls: list[str] = []
    world["store"]._client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))

    async def scenario() -> tuple[list[str], float]:
        async with supervising(sup):
            while [ws.state for ws in await world["store"].list()] != [State.COMPLETE] * 4 or sup.intake.drivers:
                await asyncio.sleep(0.05)
            # the last rounds after the work, and the retrying reads confirming the counter (INDEX_SETTLE_S)
            await asyncio.sleep(6 * interval + INDEX_SETTLE_S)
            start, started = len(calls), time.monotonic()
            await asyncio.sleep(20 * interval)
            assert sup.chores.held()  # this one daemon does the chores
            return calls[start:], time.monotonic() - started

    window, elapsed = run(asyncio.wait_for(scenario(), timeout=60))
    cycles = elapsed / interval
    reads = [call for call in window if call != "UpdateItem"]
    assert len(reads) <= 3 * cycles + 3, (len(reads), cycles, sorted(reads))
    assert set(reads) <= {"Query"}  # no per-workset read (the fleet's control items are one Query)
    renewals = window.count("UpdateItem")  # the chores role's, once per heartbeat_s (1 s here)
    assert 0 < renewals <= elapsed / sup.settings.lease.heartbeat_s + 1, (renewals, elapsed)


def test_finished_worksets_are_counted_on_their_own_slower_interval(world: dict[str, Any]) -> None:
    """Counting reads every workset of a state: the ever-growing complete/ignored/cancelled are re-counted every
    ``finished_refresh_s``; the states operators watch (ready, in progress, retrying, error) every refresh."""
    from prometheus_client import CollectorRegistry

    from monitor import states as core
    from monitor.clock import FakeClock
    from monitor.metrics import Metrics
    from monitor.model import Priority
    from monitor.states import Context

    path = write_config(world["tmp"] / "c.toml", extra="[metrics]\nqueue_refresh_s = 30\nfinished_refresh_s = 900\n")
    clock, store, metrics = FakeClock(), world["store"], Metrics(CollectorRegistry(), process=False)
    sweeper = Sweeper(store, clock, actor="sweeper:t", policy=Policy())
    gauges = Gauges(store, clock, metrics=metrics, live=Live(config.load(path, {}).settings), sweeper=sweeper)
    asked: list[set[State]] = []
    real_stats = store.stats

    async def recording_stats(*, now_ms: int, states: Any = None) -> Any:
        asked.append(set(State if states is None else states))
        return await real_stats(now_ms=now_ms, states=states)

    store.stats = recording_stats

    def add(name: str, state: State) -> None:
        ctx = Context(now_ms=clock.now_ms(), actor="test")
        decision = core.new_workset(
            workset_id=WorksetId(name),
            bucket=BUCKET,
            prefix=f"w/{name}/",
            priority=Priority.NORMAL,
            ctx=ctx,
            imported=state,
        )
        assert run(store.register(decision))

    def gauge(state: State) -> float | None:
        labels = {"state": state.value, "priority": "normal"}
        return metrics.registry.get_sample_value("workset_monitor_worksets", labels)

    add("done-1", State.COMPLETE)
    add("new-1", State.READY)
    run(gauges.refresh())
    assert asked[-1] == set(State)
    assert (gauge(State.COMPLETE), gauge(State.READY)) == (1, 1)

    add("done-2", State.COMPLETE)
    add("new-2", State.READY)
    clock.advance(30)
    run(gauges.refresh())
    assert asked[-1] == {State.READY, State.IN_PROGRESS, State.RETRYING, State.ERROR}
    assert (gauge(State.COMPLETE), gauge(State.READY)) == (1, 2)  # the finished count is kept, not zeroed
    assert gauges.latest is not None and gauges.latest.count(State.COMPLETE) == 1

    clock.advance(900)
    run(gauges.refresh())
    assert asked[-1] == set(State)
    assert (gauge(State.COMPLETE), gauge(State.READY)) == (2, 2)


def test_the_gauge_refresh_makes_the_sweeper_look_when_the_index_disagrees_with_the_fleet_counter(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet counter gone wrong (0 while a workset is in progress) would make every sweep skip its query and strand
    the workset: the gauge refresh, which counts the index, makes the next sweep query regardless."""
    from prometheus_client import CollectorRegistry

    from monitor.leases import Claimer
    from monitor.metrics import Metrics
    from monitor.model import Fleet

    class WrongCounter(DynamoStore):
        queried = 0

        async def fleet(self) -> Fleet:
            return Fleet(running=0)

        async def running(self) -> Any:
            WrongCounter.queried += 1
            return await super().running()

    world["lab"].workset("a", prefix="w/")
    store, clock = WrongCounter(world["store"]._client, TABLE), SystemClock()
    run(Scanner(store, world["source"], clock, prefixes=["w/"], actor="s", notify=nobody).scan_once())
    run(Claimer(store, clock, owner="other:1:0", policy=Policy()).claim(slots=1))
    sweeper = Sweeper(store, clock, actor="sweeper:t", policy=Policy())
    settings = config.load(write_config(world["tmp"] / "c.toml"), {}).settings
    gauges = Gauges(
        store, clock, metrics=Metrics(CollectorRegistry(), process=False), live=Live(settings), sweeper=sweeper
    )
    run(sweeper.sweep_once())
    assert WrongCounter.queried == 0  # the counter says nothing runs: no query
    run(gauges.refresh())
    run(sweeper.sweep_once())
    assert WrongCounter.queried == 1
    assert any("fleet counter says nothing is in progress" in r.getMessage() for r in caplog.records)


# --- the health verdict over hours of virtual time ------------------------------------------------------------------


class NoFolders:
    """An S3 prefix nobody has dropped anything into."""

    async def folders(self, prefix: str) -> list[str]:
        return []


class Watchdog(Notifier):
    """systemd's side of the watchdog: when each ``WATCHDOG=1`` came."""

    def __init__(self, clock: VirtualClock, *, period_s: float) -> None:
        super().__init__(None, watchdog_usec=round(period_s * 1_000_000))
        self.pings: list[float] = []
        self._clock = clock

    def watchdog(self) -> None:
        self.pings.append(self._clock.monotonic())


class HungChannel:
    """A webhook whose server accepts the connection and never answers: every send times out."""

    name = "webhook"

    def __init__(self, clock: VirtualClock, *, timeout_s: float) -> None:
        self._clock, self._timeout_s = clock, timeout_s
        self.sends = 0

    async def send(self, event: Any, ws: Any) -> str:
        self.sends += 1
        await self._clock.sleep(self._timeout_s)
        raise errors.DeliveryError("webhook: timed out", temporary=True)


def idle_daemon(
    clock: VirtualClock, *, extra: dict[str, Any] | None = None, source: Any = None, channels: Any = ()
) -> tuple[Supervisor, Watchdog]:
    """A daemon with every loop the health verdict can watch, on the default configuration, with nothing to do
    (unless ``source`` lists folders, or a channel is given)."""
    from prometheus_client import CollectorRegistry

    from monitor.config import Settings
    from monitor.memory import MemoryStore
    from monitor.metrics import Metrics
    from monitor.notify.outbox import Doorbell, Outbox

    settings = Settings.model_validate(
        {
            "scan": {"bucket": BUCKET, "prefixes": ["w/"]},
            "metrics": {"port": 0},
            "pipeline": {"steps": [{"name": "main", "command": ["true"]}]},
            **(extra or {}),
        }
    )
    doorbell = Doorbell()
    store = MemoryStore(on_pending=doorbell.ring)
    watchdog = Watchdog(clock, period_s=60)  # the shipped unit's WatchdogSec
    services = Services(
        store=store,
        source=source or NoFolders(),
        clock=clock,
        runner=Runner(clock, base_env={}),
        owner="host-v:1:0",
        notifier=watchdog,
        outbox=Outbox(
            store,
            clock,
            owner="host-v:1:0",
            doorbell=doorbell,
            notify=settings.notify,
            channels=channels,
            sleep=clock.sleep,
        ),
        metrics=Metrics(CollectorRegistry(), process=False),
    )
    return Supervisor(settings, services), watchdog


def test_every_watched_loop_ticks_while_an_idle_daemon_outlives_its_staleness_limits() -> None:
    """The defect that got the daemon killed by systemd every five minutes: a root loop that never recorded a tick.
    Two hours of an idle daemon on the default configuration, checked every 10 s: healthy throughout, every loop
    the verdict watches ticking, and WATCHDOG=1 every quarter of the watchdog period."""
    clock = VirtualClock()
    sup, watchdog = idle_daemon(clock)

    watched = ("scanner", "claimer", "sweeper", "notifier", "gauges")

    async def scenario() -> tuple[list[tuple[float, str]], dict[str, float]]:
        unhealthy, longest_silence = [], dict.fromkeys(watched, 0.0)
        async with supervising(sup, clock=clock):
            for _ in range(720):
                await clock.run_for(10)
                healthy, why = sup.healthy()
                if not healthy:
                    unhealthy.append((clock.monotonic(), why))
                for name in watched:
                    longest_silence[name] = max(longest_silence[name], sup.loops.silent_s(name))
        return unhealthy, longest_silence

    unhealthy, longest_silence = run(scenario())
    assert unhealthy == []
    limits = sup.loops.watched()
    assert set(limits) == set(watched)
    assert 2 * max(limits.values()) < 2 * 3600  # the run outlives every staleness limit twice over
    for name, limit in limits.items():
        assert longest_silence[name] < limit / 2, (name, longest_silence[name], limit)
    gaps = [b - a for a, b in itertools.pairwise(watchdog.pings)]
    assert len(watchdog.pings) > 400 and max(gaps) <= 60 / 4 + 1e-6, max(gaps)  # a ping every quarter period


def test_a_hung_notification_channel_delays_delivery_but_never_stalls_the_notifier_loop() -> None:
    """A webhook that never answers: every send waits out its timeout, each event several times. The notifier loop
    must still complete its ticks (a pass stops after its budget; one event never outlasts its claim), or the
    watchdog would kill the daemon, and the running pipelines with it, because a chat channel is down."""
    from monitor import actions
    from monitor.model import Priority
    from monitor.notify import filters
    from monitor.states import Context

    clock = VirtualClock()
    hung = HungChannel(clock, timeout_s=10)
    sup, watchdog = idle_daemon(
        clock,
        channels=[hung],
        extra={
            "scan": {"bucket": BUCKET, "prefixes": ["w/"], "interval_s": 1},
            "notify": {"events": ["invalid"], "webhook": {"url": "http://127.0.0.1:9/hook"}},
        },
    )

    async def scenario() -> list[str]:
        verdicts = []
        async with supervising(sup, clock=clock):
            for i in range(40):  # forty bad folders' events, all for the dead webhook
                ctx = Context(now_ms=clock.now_ms(), actor="test", notify=filters.wanted(sup.settings.notify))
                await actions.register(
                    sup.services.store,
                    workset_id=WorksetId(f"bad-{i}"),
                    bucket=BUCKET,
                    prefix=f"w/bad-{i}/",
                    priority=Priority.NORMAL,
                    ctx=ctx,
                    invalid_reason="stage_samples.tsv: missing",
                )
            for _ in range(120):  # 20 minutes
                await clock.run_for(10)
                healthy, why = sup.healthy()
                if not healthy:
                    verdicts.append(why)
        return verdicts

    assert run(scenario()) == []
    assert hung.sends >= 8  # probed again after every rest (a claim long) while events waited for it
    gaps = [b - a for a, b in itertools.pairwise(watchdog.pings)]
    assert max(gaps) <= 60 / 4 + 1e-6


def test_a_stuck_loop_stops_the_watchdog_pings_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    """What makes systemd restart a stuck daemon: the pings stop once a watched loop is past its staleness limit
    (here the scanner's listing never returns: 3 x 60 s + 60 s), and the log says which loop, once."""

    class HungListing(NoFolders):
        async def folders(self, prefix: str) -> list[str]:
            await clock.sleep(10**9)
            return []

    clock = VirtualClock()
    sup, watchdog = idle_daemon(clock, source=HungListing())

    async def scenario() -> None:
        async with supervising(sup, clock=clock):
            await clock.run_for(600)

    run(scenario())
    started = sup.loops.started_at
    assert watchdog.pings and 240 - 15 <= watchdog.pings[-1] - started <= 240
    withheld = [r.getMessage() for r in caplog.records if "withholding the systemd watchdog" in r.getMessage()]
    assert len(withheld) == 1 and "loop scanner has not completed a tick" in withheld[0], withheld


def test_run_once_stops_a_step_whose_heartbeats_are_denied_and_reports_the_lease_lost(
    world: dict[str, Any],
) -> None:
    """``run --once`` drives its worksets like ``run``: heartbeats answered AccessDenied lose the lease at once, so
    the step (8 s here) is killed long before another daemon could take the workset over (lease 4 s + grace 1 s)."""

    class Denied(DynamoStore):
        async def heartbeat(self, *args: Any, **kwargs: Any) -> int | None:
            raise errors.AwsError("updating the heartbeat: access denied (AccessDeniedException: injected)")

    world["lab"].workset("denied", prefix="w/")
    world["store"] = Denied(world["store"]._client, TABLE)
    path = write_config(
        world["tmp"] / "c.toml", steps=f'command = ["{sys.executable}", "-c", "import time; time.sleep(8)"]'
    )
    metrics = Metrics(CollectorRegistry(), process=False)
    sup = supervisor(world, path, metrics=metrics)
    started = time.monotonic()
    assert run(sup.run(once=True)) == 0
    assert time.monotonic() - started < 4 * 2 / 3 + 1  # the renew deadline, plus time to kill the step
    assert sup.intake.endings == {"lost": 1}
    assert metrics.registry.get_sample_value("workset_monitor_heartbeats_total", {"result": "lost"}) == 1


def test_a_corrupt_item_is_logged_once_and_the_daemon_carries_on(world: dict[str, Any], caplog: Any) -> None:
    """Issue 14.7: a fraction in an integer attribute (the claimer's candidate) and a missing attribute (the scanner's
    listing) each killed a root task, so every daemon exited and restarted into them forever."""
    from monitor import actions
    from monitor.aws import codec
    from monitor.model import Priority
    from monitor.states import Context

    for name in ("a", "b", "c"):
        world["lab"].workset(name, prefix="w/")
    store, client = world["store"], world["store"]._client

    async def corrupt() -> None:
        for name, update in (("bad-fraction", "SET attempts = :v"), ("bad-bucket", "REMOVE #bucket")):
            ctx = Context(now_ms=SystemClock().now_ms() - 1000, actor="test")
            await actions.register(
                store, workset_id=WorksetId(name), bucket=BUCKET, prefix=f"x/{name}/", priority=Priority.URGENT, ctx=ctx
            )
            values = {"ExpressionAttributeValues": {":v": {"N": "1.5"}}} if ":v" in update else {}
            names = {"ExpressionAttributeNames": {"#bucket": "bucket"}} if "#" in update else {}
            key = codec.control_key(name)
            client.update_item(TableName=TABLE, Key=key, UpdateExpression=update, **names, **values)

    run(corrupt())
    sup = supervisor(world, write_config(world["tmp"] / "c.toml"))

    async def scenario() -> None:
        async with supervising(sup):
            names = [WorksetId(n) for n in "abc"]
            while not sup.failed and not all(
                ws and ws.state is State.COMPLETE for ws in [await store.get(n) for n in names]
            ):
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a few more rounds meet the corrupt items again

    run(asyncio.wait_for(scenario(), timeout=30))
    assert sup.intake.endings == {"complete": 3}
    for name in ("bad-fraction", "bad-bucket"):
        reports = [r for r in caplog.records if "corrupt item" in r.getMessage() and f"pk='{name}'" in r.getMessage()]
        assert len(reports) == 1, (name, [r.getMessage() for r in reports])


def test_two_daemons_one_does_the_chores_and_the_other_takes_them_when_it_stops(world: dict[str, Any]) -> None:
    """The chores role (issue 19): of two daemons on one table, one scans S3, sweeps and exports the queue gauges;
    both claim and run. When it stops, the other takes the role at its next look and finds new worksets itself."""
    from monitor.aws.s3 import S3Source as Source

    listings: dict[str, int] = {"one": 0, "two": 0}

    class Counted(Source):
        def __init__(self, name: str) -> None:
            super().__init__(world["source"]._client, BUCKET)
            self.name = name

        async def folders(self, prefix: str) -> list[str]:
            listings[self.name] += 1
            return await super().folders(prefix)

    path = write_config(
        world["tmp"] / "c.toml",
        steps='command = ["sleep", "0.3"]',
        extra="[metrics]\nport = 0\nqueue_refresh_s = 0.5\nfinished_refresh_s = 0.5\n",
    )
    metrics = {name: Metrics(CollectorRegistry()) for name in ("one", "two")}
    sups = {
        name: supervisor(world, path, source=Counted(name), owner=f"host-{name}:1:0", metrics=metrics[name])
        for name in ("one", "two")
    }

    def gauge(name: str, metric: str, **labels: str) -> float | None:
        return metrics[name].registry.get_sample_value(f"workset_monitor_{metric}", labels)

    async def until(check: Any, what: str) -> None:
        for _ in range(400):
            found = check()
            if await found if asyncio.iscoroutine(found) else found:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async def all_complete(*names: str) -> bool:
        now = {ws.workset_id: ws.state for ws in await world["store"].list()}
        return all(now.get(WorksetId(name)) is State.COMPLETE for name in names)

    for name in ("a", "b", "c", "d", "e", "f"):
        world["lab"].workset(name, prefix="w/")

    async def scenario() -> None:
        tasks = {name: asyncio.create_task(sup.run()) for name, sup in sups.items()}
        try:
            await until(lambda: all_complete(*"abcdef"), "six worksets complete")
            await until(lambda: all(s.intake.endings for s in sups.values()), "both to run some")
            holder = next(name for name, sup in sups.items() if sup.chores.held())
            other = "two" if holder == "one" else "one"
            await until(lambda: gauge(holder, "worksets", state="complete", priority="normal") == 6, "gauges")
            assert not sups[other].chores.held()
            assert gauge(holder, "role_held", role="chores") == 1
            assert gauge(other, "role_held", role="chores") == 0
            assert gauge(other, "worksets", state="complete", priority="normal") is None  # one count, not two
            assert listings[other] == 0 and listings[holder] > 0
            assert sups[other].scanner.known == 0  # nor did it read the registered ids
            sups[holder].request_stop()  # a clean stop releases the role: the other takes it at its next look
            assert await tasks[holder] == 0
            stopped = time.monotonic()
            await until(sups[other].chores.held, "the other daemon to take the role")
            assert time.monotonic() - stopped < 0.5 + 1  # one sweep interval (+ slack), not a lease
            world["lab"].workset("g", prefix="w/")
            await until(lambda: all_complete("g"), "a new workset found and run")
            assert listings[other] > 0
            await until(lambda: gauge(other, "worksets", state="complete", priority="normal") == 7, "its gauges")
            assert gauge(other, "role_held", role="chores") == 1
            assert gauge(other, "role_changes_total", role="chores", change="taken") == 1
            assert gauge(holder, "role_changes_total", role="chores", change="released") == 1
        finally:
            for sup in sups.values():
                sup.request_stop()
            codes = await asyncio.gather(*tasks.values())
        assert codes == [0, 0]

    run(asyncio.wait_for(scenario(), timeout=60))


class SilentQueue:
    """An SQS queue nobody writes to: each long poll waits a little and returns nothing."""

    async def receive(self, *, wait_s: int, max_messages: int = 10) -> list[Any]:
        await asyncio.sleep(0.05)
        return []

    async def delete(self, message: Any) -> None:
        raise AssertionError("nothing was received")


@pytest.mark.parametrize("event_mode", [True, False])
def test_in_event_mode_the_full_scan_is_a_reconcile_on_its_own_interval(
    world: dict[str, Any], event_mode: bool
) -> None:
    """With a queue, the S3 listing runs every ``[scan] reconcile_interval_s`` (once at start here: 1 h), while
    the claimer and the notifier keep ``interval_s``; without one, every ``interval_s`` as before."""
    from monitor.config import NotifyConfig
    from monitor.notify.outbox import Doorbell, Outbox

    world["lab"].workset("a", prefix="w/")
    path = write_config(world["tmp"] / "c.toml", extra="")
    text = path.read_text().replace("interval_s = 0.5\n", "interval_s = 0.25\nreconcile_interval_s = 3600\n", 1)
    path.write_text(text)
    outbox = Outbox(
        world["store"], SystemClock(), owner="host-t:1:0", doorbell=Doorbell(), notify=NotifyConfig(), channels=[]
    )
    kw: dict[str, Any] = {"queue": SilentQueue()} if event_mode else {}
    sup = supervisor(world, path, outbox=outbox, **kw)
    listings: list[str] = []
    world["lab"].s3.meta.events.register(
        "provide-client-params.s3.ListObjectsV2",
        lambda params, **_: listings.append(params["Prefix"]) if params["Prefix"] == "w/" else None,
    )
    reads: list[str] = []
    world["store"]._client.meta.events.register("before-call.dynamodb.Query", lambda **_: reads.append("query"))

    async def scenario() -> None:
        async with supervising(sup):
            while [ws.state for ws in await world["store"].list()] != [State.COMPLETE]:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)

    run(asyncio.wait_for(scenario(), timeout=30))
    if event_mode:
        assert listings == ["w/"]  # the prefix, once: at taking the chores role; the next pass in an hour
    else:
        assert len(listings) >= 8, listings
    assert len(reads) >= 8  # the claim rounds and the outbox go on at interval_s either way
