"""Prometheus metrics (DESIGN §10: the names are a contract), on an injected registry.

Everything is counted where it happens, so nothing in the daemon's core knows about Prometheus:

- ``Metrics`` is the daemon's ``recorder.Recorder``: the claimer, its holdings, the sweeper and the outbox call it at
  each claim, heartbeat, takeover and delivery;
- observations are pushed by hooks: botocore's event system for every AWS call (service, operation, outcome,
  retries; so the cost of every loop is visible), the engines for scans, steps and the queue refresh;
- only state is read at scrape time (``DaemonCollector``: each loop's last tick, the last reload); a scrape never
  calls AWS.

Label values are bounded: states, priorities, channels, loops, step names from the config, AWS operation names.
No workset id is ever a label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from monitor import __version__
from monitor.model import Priority, State, Stats, Workset
from monitor.ports import Store
from monitor.recorder import Claim, Delivery, Heartbeat, RoleChange
from monitor.states import Decision

P = "workset_monitor_"
AGE_STATES = (State.READY, State.IN_PROGRESS, State.RETRYING)
_SCAN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STEP_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
_DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Every metric of one daemon (or one test), registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.build_info = Gauge(
            P + "build_info", "Always 1; the version label says which build runs.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.worksets = Gauge(
            P + "worksets", "Worksets per state and priority, from the table.", ["state", "priority"], registry=r
        )
        self.oldest_age = Gauge(
            P + "oldest_age_seconds",
            "Time since the least recently changed workset in this state changed.",
            ["state"],
            registry=r,
        )
        self.queue_refresh = Gauge(
            P + "queue_refresh_timestamp_seconds", "When the queue gauges were last read from the table.", registry=r
        )
        self.transitions = Counter(
            P + "transitions", "State changes written by this process.", ["from_state", "to_state"], registry=r
        )
        self.scan_duration = Histogram(
            P + "scan_duration_seconds", "One discovery pass over every prefix.", buckets=_SCAN_BUCKETS, registry=r
        )
        self.step_duration = Histogram(
            P + "step_duration_seconds",
            "One pipeline step run, by outcome.",
            ["step", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.aws_requests = Counter(
            P + "aws_requests",
            "AWS API calls, by outcome (ok, client_error, throttled, server_error, unreachable).",
            ["service", "operation", "outcome"],
            registry=r,
        )
        self.aws_retries = Counter(
            P + "aws_retries", "Retries botocore made inside AWS calls.", ["service", "operation"], registry=r
        )
        self.aws_duration = Histogram(
            P + "aws_request_duration_seconds",
            "AWS API call time, retries included.",
            ["service", "operation"],
            registry=r,
        )
        self.delivery = Histogram(
            P + "notification_delivery_seconds",
            "From the commit of an event to its delivery on a channel.",
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.claims = Counter(P + "claims", "Claim attempts by result.", ["result"], registry=r)
        self.intake_paused = Gauge(
            P + "intake_paused",
            "1 while intake is paused fleet-wide (workset-monitor pause), as last read.",
            registry=r,
        )
        self.heartbeats = Counter(P + "heartbeats", "Heartbeats by result.", ["result"], registry=r)
        for claim in Claim:
            self.claims.labels(result=claim.value)
        for heartbeat in Heartbeat:
            self.heartbeats.labels(result=heartbeat.value)
        self.leases_lost = Counter(P + "leases_lost", "Leases this process lost while holding them.", registry=r)
        self.takeovers = Counter(
            P + "stale_leases_reclaimed", "Leases of dead holders this process's sweeper took over.", registry=r
        )
        self.role_held = Gauge(
            P + "role_held",
            "1 while this process holds the role (chores: the S3 scan, the sweep, the queue gauges), else 0.",
            ["role"],
            registry=r,
        )
        self.role_changes = Counter(
            P + "role_changes",
            "Roles this process took, took over from a silent holder, lost, or released.",
            ["role", "change"],
            registry=r,
        )
        for change in RoleChange:
            self.role_changes.labels(role="chores", change=change.value)
        self.role_held.labels(role="chores").set(0)
        self.step_log_writes = Counter(
            P + "step_log_writes",
            "Writes of full step logs to S3 ([run] step_logs) by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "failed"):
            self.step_log_writes.labels(outcome=outcome)
        self.notifications = Counter(
            P + "notifications",
            "Notification outcomes per channel (sent, skipped, failed, retry_later).",
            ["channel", "outcome"],
            registry=r,
        )

    # --- hooks ---------------------------------------------------------------------------------------------------

    def instrument(self, service: str, client: Any) -> Any:
        """Count and time every call ``client`` makes (a botocore event hook); returns the client."""
        events = client.meta.events

        def before(context: dict[str, Any], **_: Any) -> None:
            context["workset_monitor_started"] = time.perf_counter()

        def after(model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            status = int(parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))
            code = str(parsed.get("Error", {}).get("Code", ""))
            outcome = "ok" if status < 400 else _outcome(status, code)
            self._record(service, model.name, outcome, context, parsed.get("ResponseMetadata", {}))

        def failed(event_name: str, context: dict[str, Any], **_: Any) -> None:
            # botocore emits ``after-call-error.<service>.<Operation>`` with no model: no response came back.
            self._record(service, event_name.rsplit(".", 1)[-1], "unreachable", context, {})

        events.register(f"before-call.{service}", before)
        events.register(f"after-call.{service}", after)
        events.register(f"after-call-error.{service}", failed)
        return client

    def _record(
        self, service: str, operation: str, outcome: str, context: dict[str, Any], meta: Mapping[str, Any]
    ) -> None:
        self.aws_requests.labels(service=service, operation=operation, outcome=outcome).inc()
        retries = int(meta.get("RetryAttempts", 0) or 0)
        if retries:
            self.aws_retries.labels(service=service, operation=operation).inc(retries)
        started = context.get("workset_monitor_started")
        if started is not None:
            self.aws_duration.labels(service=service, operation=operation).observe(time.perf_counter() - started)

    def transition(self, from_state: State | None, to_state: State) -> None:
        self.transitions.labels(from_state=from_state.value if from_state else "none", to_state=to_state.value).inc()

    def errors_written(self) -> float:
        """How many transitions into ``error`` this process has written (for CloudWatch)."""
        return sum(
            sample.value
            for metric in self.transitions.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("to_state") == State.ERROR.value
        )

    def step(self, step: str, outcome: str, seconds: float) -> None:
        self.step_duration.labels(step=step, outcome=outcome).observe(seconds)

    def step_log_write(self, ok: bool) -> None:
        self.step_log_writes.labels(outcome="ok" if ok else "failed").inc()

    # --- recorder.Recorder -----------------------------------------------------------------------------------------

    def claim(self, result: Claim) -> None:
        self.claims.labels(result=result.value).inc()

    def heartbeat(self, result: Heartbeat) -> None:
        self.heartbeats.labels(result=result.value).inc()
        if result is Heartbeat.LOST:
            self.leases_lost.inc()

    def takeover(self) -> None:
        self.takeovers.inc()

    def role(self, change: RoleChange) -> None:
        self.role_changes.labels(role="chores", change=change.value).inc()

    def hold_role(self, held: Callable[[], bool]) -> None:
        """Read at every scrape: whether this process holds the chores role now (it lapses without a write)."""
        self.role_held.labels(role="chores").set_function(lambda: 1.0 if held() else 0.0)

    def notification(self, channel: str, outcome: Delivery, latency_s: float | None) -> None:
        self.notifications.labels(channel=channel, outcome=outcome.value).inc()
        if latency_s is not None:
            self.delivery.observe(latency_s)

    def totals(self) -> dict[str, dict[tuple[str, ...], float]]:
        """What CloudWatch publishes as counts: name -> label values -> total so far."""
        return {
            "leases_lost": _totals(self.leases_lost),
            "stale_leases_reclaimed": _totals(self.takeovers),
            "notifications": _totals(self.notifications),
            "error_transitions": {(): self.errors_written()},
        }

    def queue(self, stats: Stats, *, oldest_age_s: Mapping[State, float | None], now_s: float) -> None:
        for state in State:
            for priority in Priority:
                self.worksets.labels(state=state.value, priority=priority.value).set(stats.count(state, priority))
        for state in AGE_STATES:
            self.oldest_age.labels(state=state.value).set(oldest_age_s.get(state) or 0)
        self.queue_refresh.set(now_s)

    def forget_queue(self) -> None:
        """Export no queue gauges (this daemon does not count the queue now)."""
        self.worksets.clear()
        self.oldest_age.clear()

    def attach(self, *, ticks: Callable[[], Mapping[str, float]], reload: Callable[[], tuple[bool, float]]) -> None:
        """Read the daemon's state at every scrape: each loop's last good tick (loop -> wall-clock time) and its
        last configuration load (successful?, wall time of the last success)."""
        self.registry.register(DaemonCollector(ticks, reload))


class ObservedStore:
    """A store decorator counting every state change this process writes (``transitions_total``)."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def register(self, decision: Decision) -> bool:
        created = await self._store.register(decision)
        if created:
            self._metrics.transition(None, decision.after.state)
        return created

    async def commit(self, decision: Decision, **kwargs: Any) -> Workset:
        after = await self._store.commit(decision, **kwargs)
        if after.state is not decision.before.state:
            self._metrics.transition(decision.before.state, after.state)
        return after


class Publisher(Protocol):
    """Pushes metrics elsewhere (CloudWatch), from the last queue refresh and the daemon's counters."""

    async def publish(self, stats: Stats | None, counters: Mapping[str, Mapping[tuple[str, ...], float]]) -> None: ...


class DaemonCollector(Collector):
    def __init__(self, ticks: Callable[[], Mapping[str, float]], reload: Callable[[], tuple[bool, float]]) -> None:
        self._ticks, self._reload = ticks, reload

    def collect(self) -> Iterator[Any]:
        ticks = GaugeMetricFamily(
            P + "loop_last_success_timestamp_seconds",
            "When each loop last completed a tick (Unix time).",
            labels=["loop"],
        )
        for loop, at in sorted(self._ticks().items()):
            ticks.add_metric([loop], at)
        yield ticks
        ok, at = self._reload()
        yield GaugeMetricFamily(
            P + "config_last_reload_successful",
            "1 if the last configuration load (start or SIGHUP) succeeded.",
            value=1 if ok else 0,
        )
        yield GaugeMetricFamily(
            P + "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            value=at,
        )


def _outcome(status: int, code: str) -> str:
    if (
        status == 429
        or "Throttl" in code
        or code in ("ProvisionedThroughputExceededException", "SlowDown", "RequestLimitExceeded")
    ):
        return "throttled"
    return "server_error" if status >= 500 else "client_error"


def _totals(counter: Counter) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels.values()): sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
