"""Each daemon's presence item (`workset-monitor fleet`): what it writes, what it costs, who cleans up the dead."""

from __future__ import annotations

from monitor import errors, fleet_view
from monitor.clock import FakeClock
from monitor.model import Held, Lease, Presence, Priority, State, Workset, WorksetId
from monitor.ports import Store
from monitor.presence import STALE_AFTER_S, PresenceWriter
from tests.conftest import run

DAY_MS = round(STALE_AFTER_S * 1000)


def writer(store: Store, clock: FakeClock, owner: str = "host-a:1:aaaa", held: tuple[Held, ...] = ()) -> PresenceWriter:
    return PresenceWriter(
        store,
        clock,
        owner=owner,
        interval_s=lambda: 30.0,
        digest=lambda: "0123456789ab",
        held=lambda: held,
        ticks=lambda: {"scanner": clock.now_ms() / 1000, "claimer": clock.now_ms() / 1000 - 1},
    )


def test_a_daemon_writes_what_it_runs_round_trip_through_the_store(store: Store) -> None:
    clock = FakeClock()
    held = (Held(WorksetId("ws-1"), "stage", clock.now_ms() - 5000), Held(WorksetId("ws-2"), None, clock.now_ms()))
    w = writer(store, clock, held=held)
    run(w.tick())
    clock.advance(30)
    run(w.tick())
    [p] = run(store.presences())
    assert (p.owner, p.seq, p.interval_s, p.config_digest, p.held) == ("host-a:1:aaaa", 2, 30.0, "0123456789ab", held)
    assert p.written_at_ms == clock.now_ms() and p.started_at_ms == clock.now_ms() - 30_000
    assert dict(p.ticks) == {"scanner": clock.now_ms(), "claimer": clock.now_ms() - 1000}
    run(w.remove())
    assert run(store.presences()) == []
    run(w.remove())  # nothing there: fine


def test_a_day_old_presence_is_cleaned_by_any_daemon_and_only_then(store: Store) -> None:
    clock = FakeClock()
    dead, sleepy = writer(store, clock, owner="host-dead:1:dead"), writer(store, clock, owner="host-b:2:bbbb")
    run(dead.tick())
    clock.advance(STALE_AFTER_S - 60)
    run(sleepy.tick())
    clock.advance(120)  # the dead one is a day and a minute silent; the other two minutes
    a = writer(store, clock)
    run(a.tick())
    assert a.removed == ["host-dead:1:dead"]
    assert [p.owner for p in run(store.presences())] == ["host-a:1:aaaa", "host-b:2:bbbb"]


def test_the_idle_path_is_one_write_and_no_read(store: Store) -> None:
    """One PutItem per presence interval; the list of presences is read once at start and every six hours."""
    clock = FakeClock()
    calls: list[str] = []
    spied = _Spy(store, calls)
    w = writer(spied, clock)  # type: ignore[arg-type]
    for _ in range(12):  # six minutes of ticks
        run(w.tick())
        clock.advance(30)
    assert calls == ["put_presence", "presences"] + ["put_presence"] * 11


class _Spy:
    def __init__(self, store: Store, calls: list[str]) -> None:
        self._store, self._calls = store, calls

    def __getattr__(self, name: str) -> object:
        self._calls.append(name)
        return getattr(self._store, name)


def _presence(owner: str, *, written_at_ms: int, held: tuple[Held, ...] = ()) -> Presence:
    return Presence(
        owner=owner,
        host=owner.split(":", maxsplit=1)[0],
        pid=int(owner.split(":")[1]),
        version="1",
        started_at_ms=written_at_ms - 3_600_000,
        written_at_ms=written_at_ms,
        interval_s=30.0,
        config_digest="x",
        held=held,
    )


def _running(workset_id: str, owner: str) -> Workset:
    lease = Lease(token="t", owner=owner, heartbeat_at_ms=0, expires_at_ms=0)
    return Workset(
        workset_id=WorksetId(workset_id),
        state=State.IN_PROGRESS,
        priority=Priority.NORMAL,
        bucket="b",
        prefix=f"w/{workset_id}/",
        created_at_ms=0,
        updated_at_ms=0,
        available_at_ms=0,
        lease=lease,
    )


def test_fleet_says_alive_silent_or_gone_and_whether_a_holding_was_taken_over() -> None:
    now = 1_800_000_000_000
    found = fleet_view.daemons(
        [
            _presence("a:1:x", written_at_ms=now - 20_000, held=(Held(WorksetId("ws-1"), "stage", now - 60_000),)),
            _presence("b:2:x", written_at_ms=now - 66_000, held=(Held(WorksetId("ws-2"), "run", now - 90_000),)),
            _presence("c:3:x", written_at_ms=now - DAY_MS - 1, held=(Held(WorksetId("ws-3"), None, now - DAY_MS),)),
        ],
        [_running("ws-1", "a:1:x"), _running("ws-2", "d:4:x")],
        now_ms=now,
    )
    assert [(d.status, d.holdings[0]["now"]) for d in found] == [
        ("alive", "held"),
        ("silent", "taken over by d:4:x"),  # 66 s > two 30 s intervals + 5 s
        ("gone", "not running"),
    ]
    assert found[0].holdings[0]["seconds"] == 60.0
    rows = fleet_view.table_rows(found, now_ms=now)
    assert rows[1][3] == "silent for 1m" and rows[0][5:8] == ("ws-1", "stage", "1m")


def test_a_presence_that_cannot_be_written_never_stops_the_daemon(store: Store) -> None:
    """A policy without the permission (a permanent AWS error) is logged once and tried again next interval."""
    clock = FakeClock()
    w = writer(_Refusing(store), clock)  # type: ignore[arg-type]
    run(w.tick())
    run(w.tick())
    assert w.failing and run(store.presences()) == []


class _Refusing:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def put_presence(self, presence: Presence) -> None:
        raise errors.AwsError("AccessDenied: not authorized to perform dynamodb:PutItem")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)
