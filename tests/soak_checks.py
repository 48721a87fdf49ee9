"""What the soak (``tests/soak.py``) records, and the checks it is held to: pure functions over the samples.

Kept apart from the run so that the checks can be tested on fabricated samples (``tests/test_soak.py``): a soak can
only be as good as its checker. Everything here is a function of a ``Result``; nothing reads a clock or a process.

The bounds (``Bounds``) and why they are what they are are in docs/performance.md, section *Soak*. Resource growth
is the rise of a least-squares line through the samples from the end of the warm-up to the end of the run, so one
noisy sample (a garbage collection, a step starting) neither hides nor fakes a trend. It must stay within a fixed
allowance (what a healthy process wanders by) plus a rate per 1 000 worksets that arrived after the warm-up (what a
leak of that size would add). Not checked: CPU (reported only; on a shared 2-core machine it measures the
neighbours as much as the daemon), and anything that grows only slower than the bounds over the run's length.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.leases import RETRYING_REREAD_S


@dataclass(frozen=True)
class Bounds:
    warmup_s: float = 300.0  # growth is measured from here to the end (at most a third of the busy phase)
    rss_mb: tuple[float, float] = (4.0, 4.0)  # (allowance, per 1 000 worksets after the warm-up)
    fds: tuple[float, float] = (6.0, 2.0)
    threads: tuple[float, float] = (6.0, 2.0)  # the allowance: asyncio's thread pool grows on demand (6 on 2 cores)
    calls_drift: float = 0.20  # the last third of the busy phase may cost at most this much more per workset
    idle_dynamodb: float = 3.0  # per scan interval and daemon (docs/performance.md), the queue gauges apart
    gauge_queries: tuple[int, int] = (4, 3)  # per refresh of the active states, and extra per finished refresh
    backlog_growth: float = 10.0  # worksets: the fitted rise of ready + in_progress + retrying while busy
    stuck_s: float = 120.0  # no workset may take longer than this from its arrival to complete
    settle_s: float = 60.0  # the idle budget is measured from this long after the last arrival (or a third of idle),
    # or later: from the first sample with nothing waiting and nothing to notify
    arrival_lag_s: float = 10.0  # a harness this far behind its schedule did not deliver the load it reports


@dataclass
class DaemonSample:
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float
    healthz: int  # HTTP status; 0: no answer
    health_reason: str = ""
    calls: dict[str, int] = field(default_factory=dict)  # "service.Operation" -> requests since it started


@dataclass
class Sample:
    t_s: float  # since the first arrival
    phase: str  # "busy" or "idle"
    dropped: int  # worksets put into S3 so far
    backlog: dict[str, int]  # ready, in_progress, retrying: read from the table
    load1: float
    daemons: list[DaemonSample]
    outbox: int = 0  # notifications pending (up to 100), for the channels that work: read from the table
    parked: int = 0  # with a channel down: every event still pending, most of them waiting for it only


@dataclass
class Result:
    minutes: float
    idle_minutes: float
    every_s: float
    arrival_s: float
    daemons: int
    seed: int
    watchdog_s: float
    interval_s: float
    queue_refresh_s: float
    finished_refresh_s: float
    heartbeat_s: float = 1.5  # [lease] heartbeat_s: the chores role's holder renews it that often
    date: str = ""
    machine: str = ""
    load_average: dict[str, list[float]] = field(default_factory=dict)  # "start"/"end": os.getloadavg()
    samples: list[Sample] = field(default_factory=list)
    pings: list[list[float]] = field(default_factory=list)  # per daemon: when each WATCHDOG=1 came (t_s)
    stopped_at_s: float = 0.0  # when SIGTERM was sent (t_s)
    arrival_lag_s: float = 0.0  # how late the harness dropped a workset, at worst (it must keep the schedule)
    exit_codes: list[int] = field(default_factory=list)
    died: list[str] = field(default_factory=list)  # daemons that exited while the run went on
    states: dict[str, int] = field(default_factory=dict)  # every workset's final state
    not_complete: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # seen not terminal longer than stuck_s after arriving
    latency_s: list[float] = field(default_factory=list)  # arrival to ``complete``, per workset
    step_runs: int = 0
    temporary_failures: int = 0  # step runs that exited 75
    outbox_left: int = 0  # for the channels that work
    down_channel: bool = False  # SNS refused all run: its backlog's cost is reported, not held to the idle budgets
    step_logs: bool = False  # the daemons wrote full step logs to S3 ([run] step_logs = "s3")
    parked_left: int = 0  # with a channel down: the events still waiting for it at the end
    webhook_deliveries: int = 0
    webhook_refused: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    workdir: str = ""


def check(result: Result, bounds: Bounds) -> tuple[dict[str, Any], list[str]]:
    """(the summary numbers, every violation) of a finished run."""
    summary: dict[str, Any] = {}
    violations = list(result.died)
    samples = result.samples
    busy_s = result.minutes * 60
    warmup_s = min(bounds.warmup_s, busy_s / 3)
    if len(samples) < 4:
        return summary, [*violations, f"only {len(samples)} samples: nothing to judge"]

    for t_s, d, sample in ((s.t_s, i, ds) for s in samples for i, ds in enumerate(s.daemons)):
        if sample.healthz != 200:
            violations.append(f"d{d}: /healthz {sample.healthz} at {t_s:.0f} s: {sample.health_reason}")
    summary["healthz"] = {
        "samples": sum(len(s.daemons) for s in samples),
        "not_200": sum(ds.healthz != 200 for s in samples for ds in s.daemons),
    }

    limit_s, gaps = result.watchdog_s / 2, []
    for d, pings in enumerate(result.pings):
        if not pings:
            violations.append(f"d{d}: no WATCHDOG=1 ever came")
            continue
        times = [*pings, max(result.stopped_at_s, pings[-1])]  # and from the last ping to the SIGTERM
        gap = max(b - a for a, b in itertools.pairwise(times))
        gaps.append(gap)
        if gap > limit_s:
            violations.append(f"d{d}: {gap:.1f} s without WATCHDOG=1 (limit: half the {result.watchdog_s:g} s period)")
    summary["watchdog"] = {"pings": [len(p) for p in result.pings], "max_gap_s": _r(max(gaps, default=0.0))}

    after = [s for s in samples if s.t_s >= warmup_s] or samples[-2:]
    late_worksets = samples[-1].dropped - after[0].dropped
    summary["warmup_s"] = warmup_s
    summary["worksets_after_warmup"] = late_worksets
    for name, (allowance, per_1000), unit in (
        ("rss_mb", bounds.rss_mb, "MB"),
        ("fds", bounds.fds, "fds"),
        ("threads", bounds.threads, "threads"),
    ):
        per_daemon = []
        for d in range(result.daemons):
            series = [float(getattr(s.daemons[d], name)) for s in samples]
            rise = _rise([s.t_s for s in after], [float(getattr(s.daemons[d], name)) for s in after])
            bound = allowance + per_1000 * late_worksets / 1000
            per_daemon.append(
                {
                    "start": _r(series[0]),
                    "after_warmup": _r(float(getattr(after[0].daemons[d], name))),
                    "end": _r(series[-1]),
                    "max": _r(max(series)),
                    "rise_after_warmup": _r(rise),
                    "bound": _r(bound),
                }
            )
            if rise > bound:
                violations.append(
                    f"d{d}: {name} rose {rise:.1f} {unit} after the warm-up over {late_worksets} worksets "
                    f"(bound {allowance:g} + {per_1000:g} per 1 000 = {bound:.1f})"
                )
        summary[name] = per_daemon

    summary["cpu"] = _cpu(result)
    # With a channel down all run, the events waiting for it are claimed again every half to whole age (at most
    # 15 minutes): a cost that grows with that backlog by design (docs/notifications.md). Measured and reported;
    # the budgets hold for a fleet whose channels work.
    held = [] if result.down_channel else violations
    summary["calls_per_workset"] = _calls_per_workset(result, bounds, held)
    summary["idle"] = _idle(result, bounds, held)
    if result.down_channel:
        summary["down_channel"] = {
            "parked_max": max((s.parked for s in samples), default=0),
            "parked_left": result.parked_left,
            "not_held": held,
        }
    summary["backlog"] = _backlog(result, bounds, warmup_s, violations)

    violations += result.stuck
    violations += [f"{ws}: not complete at the end" for ws in result.not_complete]
    slow = sorted(result.latency_s)
    if slow and slow[-1] > bounds.stuck_s:
        violations.append(f"a workset took {slow[-1]:.0f} s from arrival to complete (bound {bounds.stuck_s:g} s)")
    summary["latency_s"] = _percentiles(slow)
    if result.arrival_lag_s > bounds.arrival_lag_s:
        violations.append(f"the harness dropped a workset {result.arrival_lag_s:.1f} s late: not the load it states")
    summary["arrival_lag_s"] = result.arrival_lag_s
    if result.outbox_left:
        violations.append(f"{result.outbox_left} notification(s) still in the outbox at the end")
    if any(code != 0 for code in result.exit_codes):
        violations.append(f"a daemon did not stop cleanly on SIGTERM: exit codes {result.exit_codes}")
    loads = [s.load1 for s in samples]
    summary["load1"] = {"min": _r(min(loads)), "mean": _r(statistics.fmean(loads)), "max": _r(max(loads))}
    return summary, violations


def _calls_per_workset(result: Result, bounds: Bounds, violations: list[str]) -> dict[str, Any]:
    """AWS calls (both daemons) per arriving workset, in the first and the last third of the busy phase.

    All calls and DynamoDB's are held to ``calls_drift``; S3's are only reported: they swing between about 10 and 16
    per workset with the daemons' scan phases (whether both validate a new folder before either has registered it),
    whatever the table's size. S3 cost growing with the number of folders shows in the idle budget instead."""
    busy_s = result.minutes * 60
    first = _window(result.samples, 0, busy_s / 3)
    last = _window(result.samples, 2 * busy_s / 3, busy_s)
    out: dict[str, Any] = {}
    for service in ("all", "dynamodb", "s3"):
        rates = [
            (_calls(b, service) - _calls(a, service)) / (b.dropped - a.dropped) if b.dropped > a.dropped else math.nan
            for a, b in (first, last)
        ]
        drift = rates[1] / rates[0] - 1 if rates[0] else math.nan
        out[service] = {"first_third": _r(rates[0]), "last_third": _r(rates[1]), "drift": _r(drift)}
        if service != "s3" and not drift <= bounds.calls_drift:  # NaN (no worksets in a third) fails too
            violations.append(
                f"{service} AWS calls per workset went from {rates[0]:.2f} (first third) to {rates[1]:.2f} "
                f"(last third): {drift:+.0%}, bound +{bounds.calls_drift:.0%}"
            )
    return out


def _idle(result: Result, bounds: Bounds, violations: list[str]) -> dict[str, Any]:
    """Calls per scan interval and daemon once the fleet has nothing to do, against docs/performance.md's budget."""
    busy_s = result.minutes * 60
    settle_s = min(bounds.settle_s, result.idle_minutes * 60 / 3)
    idle = [s for s in result.samples if s.phase == "idle" and s.t_s >= busy_s + settle_s]
    while idle and (sum(idle[0].backlog.values()) or idle[0].outbox):
        idle.pop(0)  # still finishing work or delivering notifications: not idle yet
    if len(idle) < 2:
        if result.idle_minutes > 0:
            violations.append("the fleet was not idle for two samples in a row before the end: nothing to judge")
        return {}
    a, b = idle[0], idle[-1]
    window_s = b.t_s - a.t_s
    intervals = window_s / result.interval_s
    edge = math.floor(intervals) + 1  # a window of k intervals may catch one more tick of each loop at its edge
    active, finished = bounds.gauge_queries
    gauges = active * (math.floor(window_s / result.queue_refresh_s) + 1) + finished * (
        math.floor(window_s / result.finished_refresh_s) + 1
    )
    # and the claimer's read of `retrying` every RETRYING_REREAD_S whatever the counter says (docs/performance.md:
    # "at most one more read per 5 minutes"); a 300 s window can hold two
    gauges += math.floor(window_s / RETRYING_REREAD_S) + 1
    # and the chores role's renewal, one UpdateItem per heartbeat by whichever daemon holds it (issue 19)
    gauges += math.floor(window_s / result.heartbeat_s) + 1
    worksets = b.dropped
    s3_budget = math.ceil(worksets / 1000) + 1
    out: dict[str, Any] = {
        "from_s": a.t_s,
        "window_s": _r(window_s),
        "intervals": _r(intervals),
        "budget_per_interval": {"dynamodb": bounds.idle_dynamodb, "s3": s3_budget},
        "gauge_allowance": gauges,
        "per_daemon": [],
    }
    fleet_s3 = 0
    for d in range(result.daemons):
        # the presence writes are a budget of their own: one per presence interval (issue 18), not reads
        presence = _calls(b, PRESENCE_WRITE, d) - _calls(a, PRESENCE_WRITE, d)
        dynamodb = _calls(b, "dynamodb", d) - _calls(a, "dynamodb", d) - presence
        if presence > window_s / PRESENCE_INTERVAL_S + 1:
            violations.append(
                f"d{d}: {presence} presence writes in {window_s:.0f} s (one per {PRESENCE_INTERVAL_S:g} s)"
            )
        s3 = _calls(b, "s3", d) - _calls(a, "s3", d)
        fleet_s3 += s3
        out["per_daemon"].append(
            {"dynamodb_per_interval": _r(dynamodb / intervals), "s3_per_interval": _r(s3 / intervals)}
        )
        if dynamodb > bounds.idle_dynamodb * edge + gauges:
            violations.append(
                f"d{d}: {dynamodb} DynamoDB calls in {intervals:.0f} idle intervals ({dynamodb / intervals:.2f} each; "
                f"budget {bounds.idle_dynamodb:g} each + {gauges} for the queue gauges, the retrying re-reads and the "
                "role's renewals)"
            )
        if s3 > s3_budget * edge:
            violations.append(
                f"d{d}: {s3} S3 calls in {intervals:.0f} idle intervals ({s3 / intervals:.2f} each; "
                f"budget {s3_budget} at {worksets} worksets)"
            )
    # one daemon scans (the chores role), not every one: ceil(N / 1000) listings of the one prefix per interval
    fleet_budget = math.ceil(worksets / 1000)
    out["fleet_s3_per_interval"] = _r(fleet_s3 / intervals)
    if fleet_s3 > fleet_budget * edge:
        violations.append(
            f"the fleet made {fleet_s3} S3 calls in {intervals:.0f} idle intervals ({fleet_s3 / intervals:.2f} each; "
            f"budget {fleet_budget} for the whole fleet at {worksets} worksets)"
        )
    return out


def _backlog(result: Result, bounds: Bounds, warmup_s: float, violations: list[str]) -> dict[str, Any]:
    busy = [s for s in result.samples if s.phase == "busy" and s.t_s >= warmup_s]
    totals = [sum(s.backlog.values()) for s in result.samples]
    rise = _rise([s.t_s for s in busy], [float(sum(s.backlog.values())) for s in busy])
    if rise > bounds.backlog_growth:
        violations.append(f"the backlog grew by {rise:.1f} worksets while busy (bound {bounds.backlog_growth:g})")
    if totals[-1]:
        violations.append(f"the backlog is {result.samples[-1].backlog} at the end, after the idle phase")
    return {"max": max(totals), "end": totals[-1], "rise_while_busy": _r(rise)}


def _cpu(result: Result) -> dict[str, Any]:
    """Percent of one core per daemon, busy and idle; CPU milliseconds per workset (all daemons) in the first and the
    last third of the busy phase (reported, not checked: every scan parses the whole listing, which grows)."""
    busy_s, percent = result.minutes * 60, []
    for d in range(result.daemons):
        phases = {}
        for name, (start, end) in (("busy", (0, busy_s)), ("idle", (busy_s, math.inf))):
            a, b = _window(result.samples, start, end)
            span = b.t_s - a.t_s
            phases[name] = _r(100 * (b.daemons[d].cpu_s - a.daemons[d].cpu_s) / span) if span > 0 else math.nan
        percent.append(phases)
    per_workset = {}
    for name, (start, end) in (("first_third", (0, busy_s / 3)), ("last_third", (2 * busy_s / 3, busy_s))):
        a, b = _window(result.samples, start, end)
        cpu_s = sum(y.cpu_s - x.cpu_s for x, y in zip(a.daemons, b.daemons, strict=True))
        per_workset[name] = _r(1000 * cpu_s / (b.dropped - a.dropped)) if b.dropped > a.dropped else math.nan
    return {"percent_of_a_core": percent, "ms_per_workset": per_workset}


def _window(samples: Sequence[Sample], start_s: float, end_s: float) -> tuple[Sample, Sample]:
    """The first and the last sample inside [start_s, end_s] (the nearest ones if none is inside)."""
    inside = [s for s in samples if start_s - 1e-6 <= s.t_s <= end_s + 1e-6]
    if not inside:
        nearest = min(samples, key=lambda s: abs(s.t_s - start_s))
        return nearest, nearest
    return inside[0], inside[-1]


PRESENCE_WRITE = "dynamodb.PutItem"  # only the presence item is written with a plain PutItem by a daemon
PRESENCE_INTERVAL_S = 30.0  # the default [run] presence_interval_s, which the soak keeps


def _calls(sample: Sample, service: str, daemon: int | None = None) -> int:
    chosen = sample.daemons if daemon is None else [sample.daemons[daemon]]
    return sum(
        n
        for ds in chosen
        for op, n in ds.calls.items()
        if service == "all" or op == service or (op.startswith(service + ".") and "." not in service)
    )


def _rise(xs: Sequence[float], ys: Sequence[float]) -> float:
    """How much a least-squares line through the points rises from the first x to the last."""
    if len(xs) < 2 or xs[-1] == xs[0]:
        return 0.0
    slope = statistics.linear_regression(xs, ys).slope
    return slope * (xs[-1] - xs[0])


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return _r(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])

    return {"p50": at(0.5), "p95": at(0.95), "max": _r(ordered[-1]), "count": len(ordered)}


def _r(value: float) -> float:
    return round(value, 2)


def load(data: dict[str, Any]) -> Result:
    """A ``Result`` from its JSON form (``--json``), to check it again (``--recheck``) or draw it."""
    fields = {f.name for f in dataclasses.fields(Result)}
    result = Result(**{k: v for k, v in data.items() if k in fields})
    result.samples = [
        Sample(**{**s, "daemons": [DaemonSample(**d) for d in s["daemons"]]})  # type: ignore[arg-type]
        for s in data["samples"]
    ]
    return result
