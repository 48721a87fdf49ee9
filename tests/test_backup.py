"""``import`` against a table daemons are working: the fleet counter stays exact."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from monitor import actions
from monitor.aws import backup, codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Policy
from monitor.model import Priority, State, WorksetId
from monitor.states import Context
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
    counter = dynamodb.get_item(TableName="live", Key=codec.FLEET_KEY, ConsistentRead=True)["Item"]
    assert int(counter["running"]["N"]) == len(in_progress)
