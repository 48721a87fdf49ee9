"""The chaos suite, bounded: three real daemons, killed and paused at random, against an AWS that keeps failing.

The full run (300 worksets) is ``make chaos``; see ``tests/chaos.py`` for what it does and checks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests import chaos


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fleet_under_chaos_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    report = chaos.run(worksets=30, daemons=3, seed=7, timeout_s=200, workdir=tmp_path, out=lambda _: None)
    assert report.violations == [], report.violations
    # The chaos really happened: processes died and slept, AWS failed in every way (and went silent), work moved.
    assert report.kills >= 1 and report.pauses >= 1 and report.outages >= 1
    assert {"throttled", "server_error", "response_lost", "unanswered"} <= set(report.faults), report.faults
    assert report.webhook_refused > 0
    assert report.states == {"complete": 30}, report.states
    # ...and the metrics saw it: every counter the run exercised moved (the chaos module checks each against what
    # the trail and the logs say happened; these are the ones every run exercises).
    fed = {key.partition("{")[0] for key, value in report.counters.items() if value > 0}
    assert {
        "workset_monitor_claims_total",
        "workset_monitor_heartbeats_total",
        "workset_monitor_transitions_total",
        "workset_monitor_notifications_total",
        "workset_monitor_aws_requests_total",
        "workset_monitor_aws_retries_total",
    } <= fed, sorted(fed)


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The suite's checker on a store we break on purpose: a run of the chaos suite can only be as good as this."""
    from types import SimpleNamespace

    from monitor import actions
    from monitor.clock import FakeClock
    from monitor.leases import Claimer, Policy
    from monitor.memory import MemoryStore
    from monitor.model import NOTIFIABLE_EVENTS, Priority, WorksetId
    from monitor.states import Action, Context
    from tests.conftest import run

    store, clock = MemoryStore(), FakeClock()
    policy = Policy(duration_s=3.0, heartbeat_s=0.75)

    async def setup() -> None:
        for name in ("a", "b"):
            ctx = Context(now_ms=clock.now_ms(), actor="scanner")
            await actions.register(
                store,
                workset_id=WorksetId(name),
                bucket="lab",
                prefix=f"chaos/{name}/",
                priority=Priority.NORMAL,
                ctx=ctx,
            )
        claimer = Claimer(store, clock, owner="d0:1:aaaa", policy=policy)
        for holding in await claimer.claim(slots=2):  # both claimed under epoch 1 and completed
            await holding.complete()

    run(setup())
    runs = tmp_path / "runs.log"
    runs.write_text("a 1 1 100 start\na 1 1 100 end\n")
    delivered = {
        e.event_id: 1 for name in ("a", "b") for e in run(store.history(WorksetId(name))) if e.type in NOTIFIABLE_EVENTS
    }

    def check(names: list[str], received: dict[str, int]) -> list[str]:
        report = chaos.Report(worksets=len(names), daemons=1)
        hook = SimpleNamespace(received=Counter(received), refused=Counter())
        chaos._check(report, store, names, runs, hook)  # type: ignore[arg-type]
        return report.violations

    assert check(["a", "b"], delivered) == []

    ctx = Context(now_ms=clock.now_ms(), actor="op")
    run(
        actions.register(
            store, workset_id=WorksetId("d"), bucket="lab", prefix="chaos/d/", priority=Priority.NORMAL, ctx=ctx
        )
    )
    run(actions.act(store, WorksetId("d"), Action.CANCEL, ctx))

    runs.write_text(
        "a 1 1 100 start\na 1 1 101 start\na 7 1 102 start\n"
    )  # twice under epoch 1; an epoch never claimed
    violations = check(["a", "b", "c", "d"], {})
    assert "d: ended cancelled" in violations
    assert "never registered: ['c']" in violations
    assert "a: the step ran twice under one epoch: [1, 1, 7]" in violations
    assert "a: a step ran under epoch 7, which no claim recorded" in violations
    assert "a: epoch 1 was superseded without a recorded takeover or retry" in violations
    assert any(v.endswith("(complete) never reached the webhook") for v in violations), violations


def test_the_metrics_check_names_every_counter_that_did_not_move() -> None:
    fed = {
        'workset_monitor_claims_total{"result": "won"}': 4.0,
        'workset_monitor_heartbeats_total{"result": "ok"}': 9.0,
        'workset_monitor_heartbeats_total{"result": "lost"}': 0.0,
        'workset_monitor_transitions_total{"from_state": "in_progress", "to_state": "complete"}': 3.0,
        'workset_monitor_aws_requests_total{"operation": "Query", "outcome": "ok", "service": "dynamodb"}': 50.0,
        "workset_monitor_scan_duration_seconds_count{}": 7.0,
        'workset_monitor_step_duration_seconds_count{"outcome": "done", "step": "record"}': 4.0,
    }
    report = chaos.Report(worksets=3, daemons=1, step_runs=4, states={"complete": 3}, counters=fed)
    assert chaos._unfed_counters(report) == []  # nothing else happened, so nothing else had to move

    report.takeovers, report.lease_losses_logged, report.webhook_deliveries = 1, 2, 5
    report.faults = {"throttled": 3}
    report.counters = {k: v for k, v in fed.items() if "heartbeats" not in k}
    assert [v.split()[2] for v in chaos._unfed_counters(report)] == [
        "heartbeats_total{result=ok}",
        "leases_lost_total",
        "stale_leases_reclaimed_total",
        "notifications_total{channel=webhook,outcome=sent}",
        "aws_retries_total",
        "notification_delivery_seconds_count",
    ]
