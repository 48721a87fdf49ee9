"""The chaos suite, bounded: three real daemons, killed and paused at random, against an AWS that keeps failing.

The full run (300 worksets) is ``make chaos``; see ``tests/chaos.py`` for what it does and checks.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from monitor.model import Event, EventType, State, Stats, WorksetId
from tests import chaos, emulator_faults, runs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fleet_under_chaos_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    assert shutil.which("faketime"), "the operator runs under faketime: install Debian's faketime (make tools)"
    report = chaos.run(
        worksets=30,
        daemons=3,
        seed=7,
        timeout_s=200,
        drain_s=60,
        latency_bound=False,  # reported; the bound is held by the calm run of `make chaos` (a benchmark)
        workdir=tmp_path,
        out=lambda _: None,
    )
    assert report.violations == [], report.violations
    assert report.worst_latency_s > 0  # measured, and reported in the JSON
    # The chaos really happened: processes died and slept, AWS failed in every way (and went silent), heartbeats
    # were denied, an operator with a slow clock released and cancelled running work, SNS was down, work moved.
    assert report.kills >= 1 and report.pauses >= 1 and report.outages >= 1
    assert report.denials >= 1 and report.releases >= 1 and report.cancels >= 1, report.operator
    assert {"throttled", "server_error", "response_lost", "unanswered"} <= set(report.faults), report.faults
    assert {"heartbeat_denied", "channel_down"} <= set(report.faults), report.faults
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
    runs_log = tmp_path / "runs.log"
    runs_log.write_text("a 1 1 100 9 1.0 start\na 1 1 100 9 2.0 end\n")
    delivered = {
        e.event_id: 1 for name in ("a", "b") for e in run(store.history(WorksetId(name))) if e.type in NOTIFIABLE_EVENTS
    }

    def check(names: list[str], received: dict[str, int]) -> list[str]:
        report = chaos.Report(worksets=len(names), daemons=1)
        hook = SimpleNamespace(received=Counter(received), refused=Counter(), first_at={})
        chaos._check(report, store, names, runs_log, hook)  # type: ignore[arg-type]
        return report.violations

    assert check(["a", "b"], delivered) == []

    ctx = Context(now_ms=clock.now_ms(), actor="op")
    run(
        actions.register(
            store, workset_id=WorksetId("d"), bucket="lab", prefix="chaos/d/", priority=Priority.NORMAL, ctx=ctx
        )
    )
    run(actions.act(store, WorksetId("d"), Action.CANCEL, ctx))

    # twice under epoch 1; an epoch never claimed, which ran beside epoch 1's second run
    runs_log.write_text(
        "a 1 1 100 9 1.0 start\na 1 1 100 9 2.0 end\na 1 1 101 9 3.0 start\na 7 1 102 9 3.5 start\n"
        "a 7 1 102 9 4.0 end\na 1 1 101 9 5.0 end\n"
    )
    violations = check(["a", "b", "c", "d"], {})
    assert "d: ended cancelled" in violations
    assert "never registered: ['c']" in violations
    assert "a: the step ran twice under one epoch: [1, 1, 7]" in violations
    assert "a: a step ran under epoch 7, which no claim recorded" in violations
    assert "a: epoch 1 was superseded without a recorded takeover or retry" in violations
    assert any(
        v.startswith("8 events never reached the webhook: a#1 (registered), a#2 (started)") for v in violations
    ), violations
    assert "a: runs overlap: epoch 1 (pid 101, end) still ran 0.50 s after epoch 7 (pid 102, end) started" in violations
    assert not any(v.startswith("the queue counts") for v in violations)

    class Miscounting:  # the store, with a finished counter one too high
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def stats(self, **kw: Any) -> Stats:
            stats = await store.stats(**kw)
            counts = dict(stats.counts) | {State.COMPLETE: {Priority.NORMAL: stats.count(State.COMPLETE) + 1}}
            return dataclasses.replace(stats, counts=counts)

    report = chaos.Report(worksets=2, daemons=1)
    hook = SimpleNamespace(received=Counter(delivered), refused=Counter(), first_at={})
    chaos._check(report, Miscounting(), ["a", "b"], runs_log, hook)  # type: ignore[arg-type]
    assert any(v.startswith("the queue counts {'complete': 3}, the worksets' states") for v in report.violations)


def _runs(text: str, *, kills: dict[int, float] | None = None, end: float = 100.0) -> list[runs.Run]:
    return runs.parse(text.strip().splitlines(), kills=kills or {}, end=end)


def test_the_overlap_check_passes_runs_one_after_another() -> None:
    recorded = _runs("""
        w 1 1 10 5 1.0 start
        w 1 1 10 5 2.0 stopped
        w 2 2 11 6 2.0 start
        w 2 2 11 6 3.5 end
        x 1 1 12 6 2.5 start
        x 1 1 12 6 3.0 end
    """)
    assert [(r.epoch, r.how) for r in recorded if r.workset == "w"] == [(1, "stopped"), (2, "end")]
    assert runs.overlaps(recorded, paused={}) == ([], 0)  # touching is not overlapping; other worksets may


def test_the_overlap_check_flags_every_overlapping_pair() -> None:
    recorded = _runs("""
        w 1 1 10 5 1.0 start
        w 2 2 11 6 2.0 start
        w 3 3 12 7 2.5 start
        w 1 1 10 5 3.0 end
        w 2 2 11 6 4.0 end
        w 3 3 12 7 5.0 end
    """)
    violations, excused = runs.overlaps(recorded, paused={})
    assert excused == 0
    assert violations == [
        "w: runs overlap: epoch 1 (pid 10, end) still ran 1.00 s after epoch 2 (pid 11, end) started",
        "w: runs overlap: epoch 1 (pid 10, end) still ran 0.50 s after epoch 3 (pid 12, end) started",
        "w: runs overlap: epoch 2 (pid 11, end) still ran 1.50 s after epoch 3 (pid 12, end) started",
    ]


def test_a_run_without_a_stop_lasts_until_its_daemon_was_killed_or_for_ever() -> None:
    text = """
        w 1 1 10 5 1.0 start
        w 2 2 11 6 4.0 start
        w 2 2 11 6 5.0 end
    """
    # SIGKILLed with its daemon (pid 5) at 3.0: over before epoch 2 began
    assert runs.overlaps(_runs(text, kills={5: 3.0}), paused={}) == ([], 0)
    # ... at 4.5: it ran into epoch 2
    violations, _ = runs.overlaps(_runs(text, kills={5: 4.5}), paused={})
    assert violations == [
        "w: runs overlap: epoch 1 (pid 10, killed) still ran 0.50 s after epoch 2 (pid 11, end) started"
    ]
    # never stopped and never killed: running still, beside epoch 2, and a leak
    violations, _ = runs.overlaps(_runs(text), paused={})
    assert violations == [
        "w: runs overlap: epoch 1 (pid 10, open) still ran 1.00 s after epoch 2 (pid 11, end) started",
        "w: the run under epoch 1 (pid 10) never stopped and its daemon was never killed",
    ]


def test_an_overlap_after_the_first_holder_was_frozen_is_excused() -> None:
    recorded = _runs("""
        w 1 1 10 5 1.0 start
        w 2 2 11 6 5.0 start
        w 1 1 10 5 6.0 stopped
        w 2 2 11 6 7.0 end
    """)
    assert runs.overlaps(recorded, paused={5: [(1.5, 6.0)]}) == ([], 1)
    assert runs.overlaps(recorded, paused={6: [(1.5, 6.0)], 5: [(5.5, 6.0)]})[1] == 0  # frozen after the takeover


def _event(seq: int, at_s: float, actor: str = "d0:1:aa") -> Event:
    return Event(WorksetId("w"), seq, EventType.COMPLETE, round(at_s * 1000), actor, State.IN_PROGRESS, State.COMPLETE)


def test_late_notifications_are_flagged_unless_a_disturbance_explains_them() -> None:
    events = [_event(1, 100.0), _event(2, 100.0), _event(3, 200.0), _event(4, 300.0), _event(5, 400.0, "operator:o@h")]
    arrived = {"w#1": 101.5, "w#2": 104.0, "w#3": 209.0, "w#4": 320.0, "w#5": 461.0}
    late, count, excused, retried, worst = chaos._late(events, arrived, disturbed=[(201.0, 203.0)])
    # w#3 is within the outage's end + the claim + 2 s; w#5 was committed at 460 s by a clock a minute behind
    assert (count, excused, retried, worst) == (2, 1, 0, 20.0)
    assert late == [
        "2 of 5 events reached the webhook later than 2 s after their commit, outside any kill, pause or outage and "
        "not explained by a retry of its own; the latest: w#4 (complete by d0:1:aa) 20.0 s, w#2 (complete by d0:1:aa) "
        "4.0 s"
    ]
    # w#2 met an injected failure of its own (say a throttled claim) and was retried: 2 s more for it, not for w#4
    late, count, excused, retried, worst = chaos._late(events, arrived, [(201.0, 203.0)], retried={"w#2", "w#4"})
    assert (count, retried) == (1, 1)


def test_an_event_whose_own_delivery_was_retried_is_found() -> None:
    events = [_event(1, 100.0), _event(2, 200.0), _event(3, 300.0)]
    hook = type("Hook", (), {})()
    hook.first_at = {"w#1": 101.0, "w#2": 204.0, "w#3": 303.0}  # type: ignore[attr-defined]
    hook.refused = Counter({"w#3": 1})  # type: ignore[attr-defined]
    faulted = [(203.0, "w"), (99.0, "w"), (150.0, "other")]  # (when, the failed request's workset)
    assert chaos._retried(events, hook, faulted) == {"w#2", "w#3"}


class _App:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.bodies.append(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        start_response("200 OK", [])
        return [b"{}"]


def _request(injector: emulator_faults.Faults, key: str, service: str, body: dict[str, Any], target: str = "") -> str:
    data = json.dumps(body).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential={key}/20261202/us-east-1/{service}/aws4_request, x",
        "HTTP_X_AMZ_TARGET": target,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    status: list[str] = []
    b"".join(injector(environ, lambda s, _h: status.append(s)))
    return status[0]


def test_the_faults_deny_one_daemons_heartbeats_and_keep_a_channel_down() -> None:
    app = _App()
    injector = emulator_faults.Faults(app, throttle=0, error=0, lost=0, down=frozenset({"sns"}))
    heartbeat = {"UpdateExpression": "SET heartbeat_at_ms = :now ADD hb_count :one", "TableName": "t"}
    other = {"UpdateExpression": "SET claimed_by = :me", "TableName": "t"}
    update = "DynamoDB_20120810.UpdateItem"
    assert _request(injector, "chaos-d1", "dynamodb", heartbeat, update) == "200 OK"
    injector.deny_heartbeats("chaos-d1", 60)
    assert _request(injector, "chaos-d1", "dynamodb", heartbeat, update) == "400 Bad Request"
    assert _request(injector, "chaos-d1", "dynamodb", other, update) == "200 OK"  # only heartbeats
    assert _request(injector, "chaos-d2", "dynamodb", heartbeat, update) == "200 OK"  # only that daemon's
    assert app.bodies[-1] == json.dumps(heartbeat).encode()  # a body read to judge it is passed on whole
    injector.enabled = False
    assert _request(injector, "chaos-d2", "sns", {}) == "503 Service Unavailable"  # down whatever `enabled` says
    assert injector.counts == Counter({"heartbeat_denied": 1, "channel_down": 1})


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


def test_latency_is_told_apart_by_how_loaded_the_emulator_was() -> None:
    events = [_event(1, 100.0), _event(2, 200.0), _event(3, 300.0)]
    arrived = {"w#1": 101.0, "w#2": 205.0, "w#3": 300.5}
    answers = [(300.2, 0.06), (100.5, 0.01), (202.0, 0.3), (201.0, 0.3)]  # (answered at, seconds), out of order
    assert chaos._by_load(events, arrived, answers) == {"<25 ms": [1, 0], "<100 ms": [1, 0], "<400 ms": [0, 1]}
