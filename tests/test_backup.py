"""``import`` against a table daemons are working: the fleet counter stays exact."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from monitor import actions, errors
from monitor.aws import backup, codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Policy
from monitor.model import EventType, Presence, Priority, State, WorksetId
from monitor.states import Action, Context
from tests.conftest import run


class Racing:
    """A table client through which every call the import makes is followed by a daemon's claim."""

    def __init__(self, client: Any, claim: Callable[[], None]) -> None:
        self._client, self._claim = client, claim

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(**kwargs: Any) -> Any:
            result = method(**kwargs)
            self._claim()
            return result

        return call


def _register(store: DynamoStore, *names: str) -> None:
    async def register() -> None:
        for name in names:
            ctx = Context(now_ms=SystemClock().now_ms() - 1000, actor="test")
            await actions.register(
                store, workset_id=WorksetId(name), bucket="b", prefix=f"w/{name}/", priority=Priority.NORMAL, ctx=ctx
            )

    run(register())


def test_import_keeps_the_fleet_counter_exact_while_a_daemon_claims(dynamodb: Any) -> None:
    """Issue 14.7: import recounted the in-progress worksets with a scan, then set the counter outside any transaction,
    so a claim committed in between was lost from it: a counter too low lets the fleet exceed its cap, and a sweeper
    that reads 0 never looks for dead holders."""
    for table in ("old", "live"):
        schema.ensure_table(dynamodb, TableConfig(name=table))
    old, live = DynamoStore(dynamodb, "old"), DynamoStore(dynamodb, "live")
    _register(old, "restored-1", "restored-2")
    claimer = Claimer(old, SystemClock(), owner="h:1:0", policy=Policy())
    assert len(run(claimer.claim(slots=1))) == 1  # the file holds one workset in progress
    out = io.StringIO()
    backup.export(dynamodb, "old", out, now_iso="2026-12-02T00:00:00Z")
    items = backup.read(io.StringIO(out.getvalue()), source="backup.jsonl")

    _register(live, *(f"live-{i}" for i in range(12)))
    daemon = Claimer(live, SystemClock(), owner="d:2:0", policy=Policy())
    claimed: list[Any] = []
    backup.load(Racing(dynamodb, lambda: claimed.extend(run(daemon.claim(slots=1)))), "live", items)

    in_progress = [ws.workset_id for ws in run(live.list(state=State.IN_PROGRESS))]
    assert len(in_progress) == 1 + len(claimed) and len(claimed) >= 3
    assert run(live.fleet()).running == len(in_progress)


def _export(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    backup.export(dynamodb, table, out, now_iso="2026-12-03T00:00:00Z")
    return backup.read(io.StringIO(out.getvalue()), source="old.jsonl")


def test_a_forced_import_of_an_older_copy_is_a_new_audited_version(dynamodb: Any) -> None:
    """import --force of an older copy set a workset's version back (16 -> 8) while its newer events stayed: every
    later action then failed forever ("kept changing... try again"), and no audit event recorded the import."""
    schema.ensure_table(dynamodb, TableConfig(name="live"))
    store = DynamoStore(dynamodb, "live")
    _register(store, "ws-1")
    older = _export(dynamodb, "live")  # version 1: ready
    ctx = Context(now_ms=SystemClock().now_ms(), actor="operator:test")
    run(actions.act(store, WorksetId("ws-1"), Action.CANCEL, ctx))
    run(actions.act(store, WorksetId("ws-1"), Action.RETRY, ctx))
    run(actions.act(store, WorksetId("ws-1"), Action.IGNORE, ctx))  # version 4: ignored
    report = backup.load(dynamodb, "live", older, force=True, actor="operator:alice@host", source="old.jsonl")
    assert report.worksets_written == 1
    ws = run(store.get(WorksetId("ws-1")))
    assert ws is not None and (ws.state, ws.version) == (State.READY, 5)  # the file's state, a version on top
    history = run(store.history(WorksetId("ws-1")))
    assert [e.seq for e in history] == [1, 2, 3, 4, 5]
    last = history[-1]
    assert (last.type, last.from_state, last.to_state, last.actor) == (
        EventType.IMPORTED,
        State.IGNORED,
        State.READY,
        "operator:alice@host",
    )
    assert "old.jsonl" in last.reason and "version 1" in last.reason
    # ...and the workset works on: the next action is an ordinary one.
    run(actions.act(store, WorksetId("ws-1"), Action.CANCEL, ctx))
    assert run(store.get(WorksetId("ws-1"))).version == 6  # type: ignore[union-attr]


def test_an_import_file_without_a_header_is_refused(dynamodb: Any) -> None:
    for text in ("", "\n\n"):
        with pytest.raises(errors.InvalidInput, match=r"empty.jsonl: empty: not a workset-monitor export"):
            backup.read(io.StringIO(text), source="empty.jsonl")


def test_an_export_leaves_the_daemons_presence_items_out(dynamodb: Any) -> None:
    """They describe running processes, rewritten every interval: restored elsewhere they would show ghosts."""
    schema.ensure_table(dynamodb, TableConfig(name="one"))
    store = DynamoStore(dynamodb, "one")
    _register(store, "ws-1")
    presence = Presence(
        owner="host:1:aaaa",
        host="host",
        pid=1,
        version="1",
        started_at_ms=1,
        written_at_ms=2,
        interval_s=30.0,
        config_digest="x",
    )
    run(store.put_presence(presence))
    out = io.StringIO()
    count = backup.export(dynamodb, "one", out, now_iso="2026-12-04T00:00:00Z")
    assert count == 2 and codec.PRESENCE_PK not in out.getvalue()  # the workset's control item and event
    assert run(store.presences()) == [presence]
