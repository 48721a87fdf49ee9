"""Three daemons and a sweeper drain worksets through a flaky DynamoDB: throttling, HTTP 500s, and writes that land
but whose response is lost. Nothing is lost, nothing completes twice, every takeover is on record."""

from __future__ import annotations

import collections
import itertools
import random
from typing import Any

import pytest

from monitor import actions, errors
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Holding, Policy
from monitor.model import EventType, Priority, State, WorksetId
from monitor.states import Backoff, Context
from monitor.sweeper import Sweeper
from tests.conftest import run
from tests.faults import FaultyClient

POLICY = Policy(duration_s=60, heartbeat_s=15, grace_s=10, max_attempts=10, backoff=Backoff(base_s=5, cap_s=20))
COUNT = 40


@pytest.mark.parametrize("seed", [1, 2])
def test_a_flaky_table_loses_nothing_and_completes_nothing_twice(dynamodb: Any, seed: int) -> None:
    schema.ensure_table(dynamodb, TableConfig(name="flaky"))
    clean = DynamoStore(dynamodb, "flaky")
    clock = FakeClock()
    rng = random.Random(seed)
    clients = [
        FaultyClient(dynamodb, seed=seed * 10 + d, throttle=0.05, server_error=0.03, lost_response=0.08)
        for d in range(4)
    ]
    daemons = [
        Claimer(DynamoStore(c, "flaky"), clock, owner=f"host-{d}:1:0", policy=POLICY, rng=rng)
        for d, c in enumerate(clients[:3])
    ]
    sweeper = Sweeper(DynamoStore(clients[3], "flaky"), clock, actor="sweeper:1:0", policy=POLICY, rng=rng)

    async def scenario() -> None:
        for i in range(COUNT):
            await actions.register(
                clean,
                workset_id=WorksetId(f"ws-{i:02d}"),
                bucket="lab-bucket",
                prefix=f"w/ws-{i:02d}/",
                priority=Priority.NORMAL,
                ctx=Context(now_ms=clock.now_ms(), actor="seed"),
            )
        held: list[Holding] = []
        for _ in range(400):
            if await _all_done(clean):
                break
            for daemon in daemons:
                held += await _tolerant(daemon.claim(slots=2), default=[])
            for holding in list(held):
                if not await _tolerant(holding.heartbeat_once(), default=False) and holding.lost.is_set():
                    held.remove(holding)
                    continue
                try:
                    if "stage" not in holding.ws.steps_done:
                        await holding.step_finished("stage")
                    if rng.random() < 0.2:
                        await holding.fail("exit 75: cluster busy", temporary=True)
                    else:
                        await holding.complete()
                except errors.LeaseLost:
                    pass
                held.remove(holding)
            await _tolerant(sweeper.sweep_once(), default=[])
            clock.advance(rng.choice([1, 5, 15, 30]))
        else:
            pytest.fail("the fleet did not drain the queue")

        for i in range(COUNT):
            history = await clean.history(WorksetId(f"ws-{i:02d}"))
            kinds = [e.type for e in history]
            assert kinds.count(EventType.COMPLETE) == 1, kinds
            assert kinds.count(EventType.STEP_FINISHED) == 1, "a step was recorded twice"  # resumed, not re-run
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
            starts = [e for e in history if e.type is EventType.STARTED]
            complete = next(e for e in history if e.type is EventType.COMPLETE)
            assert complete.epoch == starts[-1].epoch  # completed by the last holder, nobody else
            for earlier, later in itertools.pairwise(starts):
                between = {e.type for e in history if earlier.seq < e.seq < later.seq}
                assert between & {EventType.LEASE_EXPIRED, EventType.RETRYING, EventType.RELEASED}, kinds
        assert (await clean.fleet()).running == 0

    run(scenario())
    injected = sum((c.injected for c in clients), start=collections.Counter())
    assert injected["throttle"] and injected["server_error"] and injected["lost_response"], injected


async def _all_done(store: DynamoStore) -> bool:
    stats = await store.stats(now_ms=0)
    return stats.count(State.COMPLETE) == COUNT


async def _tolerant(coro: Any, *, default: Any) -> Any:
    """A daemon loop's view: a transient AWS failure skips this round, it does not crash the daemon."""
    try:
        return await coro
    except errors.MonitorError as exc:
        if not exc.temporary:
            raise
        return default
