"""The lease protocol under random schedules (hypothesis), on DynamoDB (moto, in-process).

Three daemons and a sweeper act in any order on three worksets: claim, heartbeat, pause (time passes without a
heartbeat), sweep, write (complete, fail, release, step progress), crash (a daemon forgets everything it held), and
"zombie" writes that skip the holder's self-fencing. Invariants checked after every step:

- at most one live (not self-fenced) holder per workset;
- epochs strictly increase from claim to claim;
- no write carrying a token other than the one on the item is ever accepted;
- attempts never exceed max_attempts; in_progress items always carry a lease, others never do;
- and at the end every workset is terminal or claimable again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

import boto3
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from moto import mock_aws

from monitor import actions, errors, states
from monitor.aws import schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import FakeClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Holding, Policy
from monitor.model import Priority, State, Workset, WorksetId
from monitor.states import Action, Backoff, Context
from monitor.sweeper import Sweeper
from tests.conftest import REGION

T = TypeVar("T")
POLICY = Policy(duration_s=60, heartbeat_s=15, grace_s=10, max_attempts=3, backoff=Backoff(base_s=20, cap_s=80))
WORKSETS = [WorksetId(f"ws-{i}") for i in range(3)]
DAEMONS = range(3)


class LeaseProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.aws = mock_aws()
        self.aws.start()
        client = boto3.client("dynamodb", region_name=REGION)
        schema.ensure_table(client, TableConfig(name="lease-props"))
        self.store = DynamoStore(client, "lease-props")
        self.clock = FakeClock()
        rng = random.Random(1)
        self.claimers = [
            Claimer(self.store, self.clock, owner=f"host-{d}:1:{d:04x}", policy=POLICY, rng=rng) for d in DAEMONS
        ]
        self.sweeper = Sweeper(self.store, self.clock, actor="sweeper:9:ffff", policy=POLICY, rng=rng)
        self.held: dict[int, dict[WorksetId, Holding]] = {d: {} for d in DAEMONS}
        self.epochs: dict[WorksetId, int] = dict.fromkeys(WORKSETS, 0)
        for name in WORKSETS:
            self.run(
                actions.register(
                    self.store,
                    workset_id=name,
                    bucket="lab-bucket",
                    prefix=f"w/{name}/",
                    priority=Priority.NORMAL,
                    ctx=Context(now_ms=self.clock.now_ms(), actor="scanner"),
                )
            )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.everyone_crashes_and_the_fleet_recovers()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
            self.aws.stop()

    # --- rules ------------------------------------------------------------------------------------------------

    @rule(daemon=st.sampled_from(DAEMONS), slots=st.integers(1, 2))
    def claim(self, daemon: int, slots: int) -> None:
        for holding in self.run(self.claimers[daemon].claim(slots=slots)):
            name = WorksetId(holding.workset_id)
            assert holding.epoch > self.epochs[name], "epochs must strictly increase"
            self.epochs[name] = holding.epoch
            self.held[daemon][name] = holding

    @rule(daemon=st.sampled_from(DAEMONS), name=st.sampled_from(WORKSETS))
    def heartbeat(self, daemon: int, name: WorksetId) -> None:
        if name in self.held[daemon]:
            self.run(self.held[daemon][name].heartbeat_once())

    @rule(seconds=st.sampled_from([1, 5, 15, 30, 45, 71]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self.run(self.sweeper.sweep_once())

    @rule(
        daemon=st.sampled_from(DAEMONS),
        name=st.sampled_from(WORKSETS),
        write=st.sampled_from(["step", "complete", "fail_temporary", "fail_permanent", "release"]),
    )
    def holder_writes(self, daemon: int, name: WorksetId, write: str) -> None:
        holding = self.held[daemon].get(name)
        if holding is None:
            return
        before = self.run(self.store.get(name))
        coro = {
            "step": lambda: holding.step_finished("stage"),
            "complete": holding.complete,
            "fail_temporary": lambda: holding.fail("exit 75", temporary=True),
            "fail_permanent": lambda: holding.fail("exit 1", temporary=False),
            "release": lambda: holding.release("shutdown"),
        }[write]()
        try:
            self.run(coro)
        except errors.LeaseLost:
            return
        assert before is not None and before.lease is not None and before.lease.token == holding.token, (
            "a write was accepted from a holder whose token was not on the item"
        )

    @rule(daemon=st.sampled_from(DAEMONS), name=st.sampled_from(WORKSETS))
    def zombie_writes(self, daemon: int, name: WorksetId) -> None:
        """A paused process that wakes up and writes without checking its own lease first."""
        holding = self.held[daemon].get(name)
        if holding is None:
            return
        current = self.run(self.store.get(name))
        assert current is not None
        if current.state is not State.IN_PROGRESS:
            return
        ctx = Context(now_ms=self.clock.now_ms(), actor=holding.owner, reason="zombie")
        decision = states.decide(current, Action.COMPLETE, ctx)
        try:
            self.run(self.store.commit(decision, fence_token=holding.token))
        except errors.LeaseLost:
            assert current.lease is None or current.lease.token != holding.token
            return
        assert current.lease is not None and current.lease.token == holding.token

    @rule(daemon=st.sampled_from(DAEMONS))
    def crash(self, daemon: int) -> None:
        self.held[daemon].clear()

    # --- invariants -------------------------------------------------------------------------------------------

    @invariant()
    def at_most_one_live_holder(self) -> None:
        for name in WORKSETS:
            live = [d for d in DAEMONS if name in self.held[d] and not self.held[d][name].fenced()]
            assert len(live) <= 1, f"{name} has live holders on daemons {live}"

    def worksets(self) -> list[Workset]:
        """Every control item, read consistently (three GetItems: cheaper than a listing after every step)."""
        found = [self.run(self.store.get(name)) for name in WORKSETS]
        return [ws for ws in found if ws is not None]

    @invariant()
    def items_are_consistent(self) -> None:
        for ws in self.worksets():
            assert ws.attempts <= POLICY.max_attempts
            assert (ws.lease is not None) == (ws.state is State.IN_PROGRESS)
            assert ws.epoch == self.epochs[ws.workset_id]

    def everyone_crashes_and_the_fleet_recovers(self) -> None:
        for d in DAEMONS:
            self.crash(d)
        self.sweep()
        self.clock.advance(POLICY.takeover_after_s)
        self.sweep()
        self.clock.advance(POLICY.backoff.cap_s)
        for ws in self.worksets():
            assert ws.state is not State.IN_PROGRESS, f"{ws.workset_id} is stuck in progress"
        fresh = Claimer(self.store, self.clock, owner="fresh:1:0", policy=POLICY)
        claimable = {ws.workset_id for ws in self.worksets() if not ws.state.terminal}
        claimed = {h.workset_id for h in self.run(fresh.claim(slots=len(WORKSETS)))}
        assert claimed == claimable


TestLeaseProtocol = LeaseProtocol.TestCase  # examples and steps: the hypothesis profile (tests/conftest.py)
