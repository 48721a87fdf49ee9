"""`workset-monitor watch`: what a refresh reads, what changed between refreshes, and the screen it draws."""

from __future__ import annotations

from typing import Any

from monitor import watch
from monitor.clock import FakeClock
from monitor.memory import MemoryStore
from monitor.model import State
from tests.conftest import run
from tests.faults import StoreSpy
from tests.test_leases import World


class _Stats(StoreSpy):
    """Remembers which states each stats() read."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.stats_states: list[Any] = []

    async def stats(self, *, now_ms: int, states: Any = None) -> Any:
        self.stats_states.append(states)
        return await self._store.stats(now_ms=now_ms, states=states)


def test_a_refresh_reads_the_active_states_and_the_finished_ones_once_a_minute() -> None:
    clock = FakeClock()
    store = _Stats(MemoryStore())
    watcher = watch.Watcher(store, clock)  # type: ignore[arg-type]
    for _ in range(3):
        run(watcher.frame())
        clock.advance(2)
    clock.advance(watch.FINISHED_EVERY_S)
    run(watcher.frame())
    assert store.stats_states == [None, watch.ACTIVE, watch.ACTIVE, None]


def test_the_view_tells_what_started_and_how_it_ended_between_refreshes() -> None:
    world = World(store=StoreSpy(MemoryStore()), clock=FakeClock())

    async def scenario() -> list[str]:
        await world.register("ws-1")
        world.clock.advance(1)
        await world.register("ws-\x1b[2J")  # later in the queue: ws-1 is claimed first
        watcher = watch.Watcher(world.store, world.clock)  # type: ignore[arg-type]
        first = await watcher.frame()
        assert first.changes == [] and first.counts[State.READY] != {}
        held, _ = await world.daemon("host-a").claim(slots=2)  # both run: the escape shows in RUNNING
        world.clock.advance(5)
        second = await watcher.frame()
        assert len(second.running) == 2 and any(
            "ws-1 started (attempt 1) on host-a:1:aaaa" in c for c in second.changes
        )
        await held.fail("exit 2: reference missing", temporary=False)
        third = await watcher.frame()
        assert "ws-1 -> error: exit 2: reference missing" in third.changes[0]
        return watch.screen(third, width=100)

    lines = run(scenario())
    assert lines[0].startswith("workset-monitor watch") and "QUEUE" in lines and all(len(line) <= 100 for line in lines)
    assert not any("\x1b" in line for line in lines)  # a workset id's escape is shown, never obeyed
    assert any("ws-\\x1b[2J" in line for line in lines)


def test_the_view_names_the_daemon_doing_the_chores() -> None:
    clock = FakeClock()
    store = MemoryStore()
    watcher = watch.Watcher(store, clock)
    assert "chores (S3 scan, sweep, queue gauges): nobody holds the role" in "\n".join(
        watch.screen(run(watcher.frame()))
    )
    run(store.take_chores(token="t", owner="head-1:4242:ab12", now_ms=clock.now_ms(), expect=None))
    clock.advance(7)
    shown = "\n".join(watch.screen(run(watcher.frame())))
    assert "chores (S3 scan, sweep, queue gauges): head-1:4242:ab12, renewed 7s ago" in shown
