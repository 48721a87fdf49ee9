"""The soak, bounded: two real daemons for 3 busy minutes and 1 idle, sampled every 10 s, held to the same checks.

The full run (30 + 5 minutes) is ``make soak``; see ``tests/soak.py`` for what it does and ``tests/soak_checks.py``
for the checks, which the second test below runs on fabricated samples with one defect at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests import soak
from tests.soak_checks import Bounds, DaemonSample, Result, Sample, check


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_two_daemons_stay_healthy_and_flat_for_minutes_of_steady_work(tmp_path: Path) -> None:
    result = soak.run(minutes=3, idle_minutes=1, every_s=10, seed=7, workdir=tmp_path, out=lambda _: None)
    assert result.violations == [], result.violations
    # It really ran: every workset arrived and completed, some after a temporary failure, the webhook refused some
    # deliveries, systemd heard the watchdog all along, and the idle phase was measured.
    assert result.states == {"complete": 90}, result.states
    assert result.temporary_failures >= 1 and result.webhook_refused >= 1
    assert all(len(pings) >= 40 for pings in result.pings), result.summary["watchdog"]
    assert len(result.samples) >= 24 and result.summary["idle"]["intervals"] >= 20
    assert result.exit_codes == [0, 0]


# --- the checker, on samples made up to look like a healthy run, then broken one way at a time -------------------


def healthy(**changes: Any) -> Result:
    """A made-up 30 + 5 minute run of two daemons that does everything right; ``changes`` per sample field."""
    busy_s, end_s = 1800, 2100
    samples = []
    for t in range(0, end_s + 1, 30):
        dropped = min(t // 2, 900)
        per_daemon = [
            DaemonSample(
                rss_mb=70 + 2 * min(t, 300) / 300 + (0.3 if t % 90 == 0 else 0),  # warms up, then wanders
                fds=8 + (t // 30) % 2,
                threads=6 + (t // 60) % 2,
                cpu_s=t * 0.05,
                healthz=200,
                # d0 holds the chores role: it lists the prefix every interval; d1 only reads workset files
                calls={"dynamodb.Query": 3 * t + 20 * dropped, "s3.ListObjectsV2": (t if d == 0 else 0) + 5 * dropped},
            )
            for d in range(2)
        ]
        backlog = {"ready": (t // 30) % 3, "in_progress": 1, "retrying": 0} if t < busy_s else {}
        samples.append(Sample(t, "busy" if t < busy_s else "idle", dropped, backlog, 1.0, per_daemon))
    result = Result(
        minutes=30,
        idle_minutes=5,
        every_s=30,
        arrival_s=2,
        daemons=2,
        seed=1,
        watchdog_s=20,
        interval_s=1,
        queue_refresh_s=30,
        finished_refresh_s=900,
        samples=samples,
        pings=[[5.0 * k + 0.1 * d for k in range(end_s // 5 + 1)] for d in range(2)],
        stopped_at_s=end_s + 1,
        exit_codes=[0, 0],
        states={"complete": 900},
        latency_s=[2.0] * 900,
    )
    return dataclasses.replace(result, **changes)


def broken(change: Any) -> list[str]:
    """The violations of a healthy run after ``change(result)``."""
    result = healthy()
    change(result)
    return check(result, Bounds())[1]


def test_the_checks_catch_what_they_look_for() -> None:
    summary, violations = check(healthy(), Bounds())
    assert violations == [], violations
    assert summary["watchdog"]["max_gap_s"] == 5.0 and summary["latency_s"]["max"] == 2.0
    assert summary["idle"]["per_daemon"][0] == {"dynamodb_per_interval": 3.0, "s3_per_interval": 1.0}

    def leak(per_workset_kb: float, what: str = "rss_mb") -> Any:  # memory or fds that grow with every workset
        def change(result: Result) -> None:
            for sample in result.samples:
                ds = sample.daemons[1]
                grown = getattr(ds, what) + per_workset_kb * sample.dropped / (1024 if what == "rss_mb" else 1)
                sample.daemons[1] = dataclasses.replace(ds, **{what: grown})

        return change

    assert any(v.startswith("d1: rss_mb rose") for v in broken(leak(20))), "a 20 KB-per-workset leak"
    assert broken(leak(5)) == [], "5 KB per workset (4.4 MB over 900) is within the bound"
    assert any(v.startswith("d1: fds rose") for v in broken(leak(0.02, "fds"))), "an fd every 50 worksets"
    assert any(v.startswith("d1: threads rose") for v in broken(leak(0.02, "threads")))

    def unhealthy(result: Result) -> None:
        result.samples[40].daemons[0] = dataclasses.replace(
            result.samples[40].daemons[0], healthz=503, health_reason="loop notifier has not completed a tick"
        )

    assert broken(unhealthy) == ["d0: /healthz 503 at 1200 s: loop notifier has not completed a tick"]

    def silent_watchdog(result: Result) -> None:
        result.pings[1] = [t for t in result.pings[1] if not 600 < t < 608]

    assert broken(silent_watchdog) == ["d1: 15.0 s without WATCHDOG=1 (limit: half the 20 s period)"]

    def late_watchdog(result: Result) -> None:  # the pings stopped a while before the SIGTERM
        result.pings[0] = [t for t in result.pings[0] if t < 2080]

    assert broken(late_watchdog) == ["d0: 26.0 s without WATCHDOG=1 (limit: half the 20 s period)"]

    def costlier(result: Result) -> None:  # each workset costs more DynamoDB calls as the table grows
        for sample in result.samples:
            for i, ds in enumerate(sample.daemons):
                extra = sample.dropped**2 // 100
                sample.daemons[i] = dataclasses.replace(
                    ds, calls=ds.calls | {"dynamodb.Query": ds.calls["dynamodb.Query"] + extra}
                )

    drift = broken(costlier)
    assert any(v.startswith("dynamodb AWS calls per workset went from") for v in drift), drift

    def idle_costs(dynamodb_per_s: float, s3_per_s: float) -> Any:
        def change(result: Result) -> None:
            base = result.samples[60].daemons[0].calls
            for sample in result.samples[60:]:
                t = sample.t_s - 1800
                calls = {"dynamodb.Query": base["dynamodb.Query"] + int(dynamodb_per_s * t)}
                calls["s3.ListObjectsV2"] = base["s3.ListObjectsV2"] + int(s3_per_s * t)
                sample.daemons[0] = dataclasses.replace(sample.daemons[0], calls=calls)

        return change

    assert broken(idle_costs(3.1, 1)) == []  # the queue gauges' share fits
    assert [v.split(" (")[0] for v in broken(idle_costs(4, 3))] == [
        "d0: 960 DynamoDB calls in 240 idle intervals",
        "d0: 720 S3 calls in 240 idle intervals",
        "the fleet made 720 S3 calls in 240 idle intervals",
    ]

    def both_scan(result: Result) -> None:  # every daemon lists every prefix: the fleet pays D times (issue 19)
        for sample in result.samples:
            calls = dict(sample.daemons[1].calls)
            calls["s3.ListObjectsV2"] += sample.t_s
            sample.daemons[1] = dataclasses.replace(sample.daemons[1], calls=calls)

    assert [v.split(" (")[0] for v in broken(both_scan)] == ["the fleet made 480 S3 calls in 240 idle intervals"]

    def still_notifying(until_s: float) -> Any:  # the outbox is still draining when the idle budget would start
        def change(result: Result) -> None:
            for sample in result.samples:
                sample.outbox = 7 if sample.t_s < until_s else 0

        return change

    late = healthy()
    still_notifying(1950)(late)
    assert check(late, Bounds())[0]["idle"]["from_s"] == 1950  # the budget is measured once the fleet is quiet
    assert broken(still_notifying(2100)) == [
        "the fleet was not idle for two samples in a row before the end: nothing to judge"
    ]

    def behind(result: Result) -> None:
        result.arrival_lag_s = 12.5

    assert broken(behind) == ["the harness dropped a workset 12.5 s late: not the load it states"]

    def piling_up(result: Result) -> None:
        for sample in result.samples:
            if sample.phase == "busy":
                sample.backlog["ready"] = int(sample.t_s // 60)

    assert broken(piling_up)[0].startswith("the backlog grew by 24.5 worksets while busy")

    def stuck(result: Result) -> None:
        result.stuck.append("ws-00417: still in_progress 150 s after it arrived (bound 120 s)")
        result.not_complete.append("ws-00417")
        result.latency_s[3] = 300.0
        result.samples[-1].backlog = {"in_progress": 1}
        result.exit_codes = [0, 1]
        result.outbox_left = 2

    assert broken(stuck) == [
        "the backlog is {'in_progress': 1} at the end, after the idle phase",
        "ws-00417: still in_progress 150 s after it arrived (bound 120 s)",
        "ws-00417: not complete at the end",
        "a workset took 300 s from arrival to complete (bound 120 s)",
        "2 notification(s) still in the outbox at the end",
        "a daemon did not stop cleanly on SIGTERM: exit codes [0, 1]",
    ]


def test_with_a_channel_down_the_backlog_s_cost_is_reported_and_the_rest_still_held() -> None:
    """A channel down all run: its backlog is claimed again every half to whole age, so calls grow with it by design;
    the idle and per-workset budgets are reported for it, not held. Health, growth, the work and the webhook's outbox
    still are."""
    result = healthy(down_channel=True)
    for sample in result.samples:
        sample.parked = sample.dropped * 3  # every event waits for the down channel
        if sample.phase == "idle":  # re-parks of the backlog: more than the idle budget
            t = sample.t_s - 1800
            calls = dict(sample.daemons[0].calls)
            calls["dynamodb.UpdateItem"] = 5 * t
            sample.daemons[0] = dataclasses.replace(sample.daemons[0], calls=calls)
    summary, violations = check(result, Bounds())
    assert violations == [], violations
    assert summary["down_channel"]["parked_max"] == 2700
    assert [v.split(" (")[0] for v in summary["down_channel"]["not_held"]] == [
        "d0: 1920 DynamoDB calls in 240 idle intervals"
    ]
    assert check(dataclasses.replace(result, down_channel=False), Bounds())[1] == summary["down_channel"]["not_held"]
    result.outbox_left = 4  # the webhook still waits for some: a working channel must not be held back
    result.exit_codes = [0, 1]
    assert check(result, Bounds())[1] == [
        "4 notification(s) still in the outbox at the end",
        "a daemon did not stop cleanly on SIGTERM: exit codes [0, 1]",
    ]
