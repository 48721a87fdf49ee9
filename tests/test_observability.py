"""Metrics, the side port, the alerting kit (checked by promtool) and CloudWatch."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor import config, errors
from monitor.aws import schema
from monitor.aws.cloudwatch import CloudWatchPublisher
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Source
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.metrics import Metrics, ObservedStore
from monitor.model import Priority, State, Stats, WorksetId
from monitor.notify.outbox import Doorbell, Outbox
from monitor.notify.webhook import WebhookChannel
from monitor.sideport import SidePort
from monitor.steps import Runner
from monitor.supervisor import Services, Supervisor
from tests.conftest import REGION, ROOT, register, run, supervising
from tests.fake_http import FakeServer, serve
from tests.lab import BUCKET, Lab

DEPLOY = ROOT / "deploy"
CONTRACT = [
    "workset_monitor_worksets",
    "workset_monitor_transitions_total",
    "workset_monitor_claims_total",
    "workset_monitor_heartbeats_total",
    "workset_monitor_leases_lost_total",
    "workset_monitor_stale_leases_reclaimed_total",
    "workset_monitor_scan_duration_seconds",
    "workset_monitor_aws_requests_total",
    "workset_monitor_aws_request_duration_seconds",
    "workset_monitor_notifications_total",
    "workset_monitor_notification_delivery_seconds",
    "workset_monitor_step_duration_seconds",
    "workset_monitor_loop_last_success_timestamp_seconds",
    "workset_monitor_config_last_reload_successful",
    "workset_monitor_build_info",
]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make tools` installs Debian's prometheus package"
    return path


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry exposes (or would, once observed): counters' _total, histograms' parts."""
    names = set()
    for family in registry.collect():
        names |= (
            {
                family.name,
                f"{family.name}_total",
                f"{family.name}_bucket",
                f"{family.name}_sum",
                f"{family.name}_count",
                f"{family.name}_info",
            }
            if family.type in ("counter", "histogram", "info")
            else {family.name}
        )
        names |= {s.name for s in family.samples}
    return names


@pytest.fixture
def hook() -> Iterator[FakeServer]:
    yield from serve()


class Held(S3Source):
    """S3 whose listings can be held: while ``hold`` is set, a listing does not return."""

    hold = False
    held = False

    async def folders(self, prefix: str) -> list[str]:
        while self.hold:
            self.held = True
            await asyncio.sleep(0.05)
        return await super().folders(prefix)


class Ahead(SystemClock):
    """The system clock, moved ``ahead_s`` forward by the test."""

    ahead_s = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.ahead_s


@pytest.fixture
def daemon(mocked_aws: None, tmp_path: Path, hook: FakeServer) -> Any:
    """An in-process supervisor with metrics, its side port and a webhook, against S3 and DynamoDB on moto."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="obs"))
    metrics = Metrics(CollectorRegistry())
    metrics.instrument("dynamodb", dynamodb)
    metrics.instrument("s3", s3)
    path = tmp_path / "c.toml"
    path.write_text(
        f'[table]\nname = "obs"\n[scan]\nbucket = "{BUCKET}"\nprefixes = ["w/"]\ninterval_s = 0.3\n'
        "[lease]\nduration_s = 4\nheartbeat_s = 1\nsweep_interval_s = 0.5\ngrace_s = 1\n"
        f'[metrics]\nport = 0\nqueue_refresh_s = 0.3\nfinished_refresh_s = 0.3\n[notify.webhook]\nurl = "{hook.url}"\n'
        '[[pipeline.steps]]\nname = "main"\n'
        f'command = ["{sys.executable}", "-c", "print(1)"]\n'
    )
    settings = config.load(path, {}).settings
    clock = Ahead()
    doorbell = Doorbell()
    store = ObservedStore(DynamoStore(dynamodb, "obs", on_pending=doorbell.ring), metrics)
    outbox = Outbox(
        store,
        SystemClock(),
        owner="h:1:0",
        doorbell=doorbell,
        notify=settings.notify,
        channels=[WebhookChannel(settings.notify.webhook)],
        recorder=metrics,  # as `run` builds it
    )  # type: ignore[arg-type]
    runner = Runner(clock, base_env=dict(os.environ), observe=lambda s, r: metrics.step(s, r.outcome.value, r.seconds))
    services = Services(
        store=store,
        source=Held(s3, BUCKET),
        clock=clock,
        runner=runner,
        owner="h:1:0",
        metrics=metrics,
        reload=lambda: config.load(path, {}),
        outbox=outbox,
        channels=lambda notify: [WebhookChannel(notify.webhook)],  # as `run` builds them again on a reload
    )
    return Supervisor(settings, services), Lab(s3), metrics, store


async def until(check: Any, timeout_s: float = 20) -> Any:
    for _ in range(int(timeout_s / 0.05)):
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_the_exposition_has_every_contract_metric_and_passes_promtool(daemon: Any, hook: FakeServer) -> None:
    sup, lab, _, _ = daemon
    lab.workset("ws-1", prefix="w/")
    lab.workset("ws-2", prefix="w/", files={"stage_samples.tsv": b""})

    async def scenario() -> tuple[str, int, str, int, str]:
        task = asyncio.create_task(sup.run())
        await until(lambda: sup.side_port is not None and sup.intake.endings.get("complete") == 1)
        await until(lambda: sup.ready()[0] and hook.requests)
        await asyncio.sleep(0.5)  # one more queue refresh after the completion
        host, port = sup.side_port.address
        exposition = await asyncio.to_thread(get, f"http://{host}:{port}/metrics")
        health = await asyncio.to_thread(get, f"http://{host}:{port}/healthz")
        ready = await asyncio.to_thread(get, f"http://{host}:{port}/readyz")
        sup.request_stop()
        assert await task == 0
        return exposition[1], health[0], health[1], ready[0], ready[1]

    text, health_code, health_body, ready_code, _ = run(scenario())
    assert (health_code, json.loads(health_body)["status"], ready_code) == (200, "ok", 200)
    for name in CONTRACT:
        assert re.search(rf"^{name}(_count)?[{{ ]", text, re.M), f"{name} has no sample in the exposition"
    assert 'workset_monitor_worksets{priority="normal",state="complete"} 1.0' in text
    assert 'workset_monitor_worksets{priority="normal",state="error"} 1.0' in text
    assert 'workset_monitor_transitions_total{from_state="in_progress",to_state="complete"} 1.0' in text
    assert 'workset_monitor_claims_total{result="won"} 1.0' in text
    assert 'workset_monitor_notifications_total{channel="webhook",outcome="sent"}' in text
    assert 'workset_monitor_step_duration_seconds_count{outcome="done",step="main"} 1.0' in text
    assert re.search(
        r'workset_monitor_aws_requests_total\{operation="TransactWriteItems",outcome="ok",'
        r'service="dynamodb"\} [1-9]',
        text,
    )
    assert "process_resident_memory_bytes" in text and "python_info" in text
    assert "ws-1" not in text and "ws-2" not in text, "no workset id may ever be a label"
    checked = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_writer_in_the_daemon_sends_what_a_channel_wants(daemon: Any, hook: FakeServer) -> None:
    """Each of the daemon's writers decides its event's notification by the live [notify] filters: registration and
    validation (scanner), the claim (claimer), completion (the holding), a dead holder's expiry (sweeper). Here the
    filters are widened by a reload before the daemon starts; the webhook must hear of every wanted event once."""
    from monitor.leases import Claimer, Policy
    from monitor.model import EventType

    sup, lab, _, store = daemon
    wanted = [EventType.REGISTERED, EventType.INVALID, EventType.STARTED, EventType.COMPLETE, EventType.LEASE_EXPIRED]
    sup.reloader.apply(
        sup.settings.model_copy(update={"notify": sup.settings.notify.model_copy(update={"events": wanted})})
    )
    lab.workset("ws-ok", prefix="w/")
    lab.workset("ws-bad", prefix="w/", files={"stage_samples.tsv": b""})
    register(store, "ws-dead", prefix="w/elsewhere/")  # held by a daemon that died at once (not by the scanner)
    run(Claimer(store, SystemClock(), owner="gone:1:0", policy=Policy()).claim(slots=1))

    def heard() -> set[tuple[str, str]]:
        return {(r.json()["event"]["workset"], r.json()["event"]["event"]) for r in hook.requests}

    expected = {
        ("ws-ok", "registered"),
        ("ws-ok", "started"),
        ("ws-ok", "complete"),
        ("ws-bad", "invalid"),
        ("ws-dead", "lease_expired"),  # then retrying, a minute later (retry_backoff_base_s)
    }

    async def scenario() -> None:
        async with supervising(sup):
            await until(lambda: heard() >= expected, timeout_s=30)

    run(scenario())
    assert heard() == expected
    assert len(hook.requests) == len(expected)  # each once


def test_heartbeat_and_lost_lease_counters_move_when_heartbeats_and_losses_happen(daemon: Any) -> None:
    """The LeaseLosses alert and the dashboard read these two: a running step's heartbeats count as ok, and an
    operator's cancel, seen by the holder at its next heartbeat, counts as a lost lease."""
    from monitor import actions
    from monitor.states import Action, Context

    sup, lab, metrics, store = daemon
    long_step = sup.settings.pipeline.steps[0].model_copy(
        update={"command": [sys.executable, "-c", "import time; time.sleep(30)"]}
    )
    sup.reloader.apply(
        sup.settings.model_copy(update={"pipeline": sup.settings.pipeline.model_copy(update={"steps": [long_step]})})
    )
    lab.workset("ws-1", prefix="w/")

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(f"workset_monitor_{name}", labels) or 0.0

    async def scenario() -> tuple[float, float, float]:
        task = asyncio.create_task(sup.run())
        await until(lambda: sup.intake.drivers)
        await until(lambda: sample("heartbeats_total", result="ok") >= 2, timeout_s=10)  # heartbeat_s = 1
        lost_before = sample("leases_lost_total")
        ctx = Context(now_ms=sup.services.clock.now_ms(), actor="operator:test", reason="wrong samples")
        await actions.act(store, WorksetId("ws-1"), Action.CANCEL, ctx)
        await until(lambda: not sup.intake.drivers, timeout_s=10)
        sup.request_stop()
        assert await task == 0
        return lost_before, sample("leases_lost_total"), sample("heartbeats_total", result="lost")

    lost_before, lost_after, heartbeats_lost = run(scenario())
    assert (lost_before, lost_after, heartbeats_lost) == (0, 1, 1)
    assert sup.intake.endings == {"lost": 1}


def test_healthz_names_a_stalled_loop(daemon: Any) -> None:
    sup, _, _, _ = daemon
    source, clock = sup.services.source, sup.services.clock
    source.hold = True  # the scanner's next listing does not return...

    def healthz() -> tuple[int, dict[str, str]]:
        assert sup.side_port is not None
        host, port = sup.side_port.address
        code, body = get(f"http://{host}:{port}/healthz")
        return code, json.loads(body)

    async def scenario() -> tuple[tuple[int, dict[str, str]], int]:
        async with supervising(sup):
            await until(lambda: sup.side_port is not None and source.held)
            clock.ahead_s = 3600  # ...for an hour, while the other loops go on ticking
            await asyncio.sleep(1)
            stalled = await asyncio.to_thread(healthz)
            source.hold = False
            await until(lambda: sup.loops.silent_s("scanner") < 60)
            return stalled, (await asyncio.to_thread(healthz))[0]

    (code, body), again = run(scenario())
    assert code == 503 and body["status"] == "failing" and "loop scanner has not completed a tick" in body["reason"]
    assert again == 200


def test_the_side_port_is_read_only_and_says_so() -> None:
    port = SidePort(CollectorRegistry(), health=lambda: (True, ""), ready=lambda: (False, "the table has not answered"))
    port.start("127.0.0.1", 0)
    try:
        host, number = port.address
        request = urllib.request.Request(f"http://{host}:{number}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 405
        caught.value.close()
        assert get(f"http://{host}:{number}/admin")[0] == 404
        code, body = get(f"http://{host}:{number}/readyz")
        assert code == 503 and "has not answered" in body
        with pytest.raises(errors.MonitorError, match=r"cannot serve metrics on 127.0.0.1:\d+"):
            SidePort(CollectorRegistry(), health=lambda: (True, ""), ready=lambda: (True, "")).start(host, number)
    finally:
        port.stop()


def test_aws_calls_are_counted_by_outcome_and_timed(mocked_aws: None) -> None:
    metrics = Metrics(CollectorRegistry(), process=False)
    client = metrics.instrument("dynamodb", boto3.client("dynamodb", region_name=REGION))
    schema.ensure_table(client, TableConfig(name="counted"))
    store = DynamoStore(client, "counted")
    run(store.get(WorksetId("nobody")))
    with pytest.raises(errors.NotFound):
        run(DynamoStore(client, "missing-table").get(WorksetId("x")))
    value = metrics.registry.get_sample_value
    assert (
        value("workset_monitor_aws_requests_total", {"service": "dynamodb", "operation": "GetItem", "outcome": "ok"})
        == 1
    )
    assert (
        value(
            "workset_monitor_aws_requests_total",
            {"service": "dynamodb", "operation": "GetItem", "outcome": "client_error"},
        )
        == 1
    )
    assert (
        value("workset_monitor_aws_request_duration_seconds_count", {"service": "dynamodb", "operation": "CreateTable"})
        == 1
    )


def test_an_unreachable_endpoint_is_counted_and_raised_as_unavailable() -> None:
    """No response at all (connection refused): botocore's error hook has no model; the count must still work."""
    metrics = Metrics(CollectorRegistry(), process=False)
    client = metrics.instrument(
        "dynamodb",
        boto3.client(
            "dynamodb",
            region_name=REGION,
            endpoint_url="http://127.0.0.1:9",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
        ),
    )
    with pytest.raises(errors.AwsUnavailable):
        run(DynamoStore(client, "anywhere").get(WorksetId("x")))
    labels = {"service": "dynamodb", "operation": "GetItem", "outcome": "unreachable"}
    assert metrics.registry.get_sample_value("workset_monitor_aws_requests_total", labels) == 1


def test_cloudwatch_gets_queue_depth_and_error_counts_in_batches(mocked_aws: None) -> None:
    client = boto3.client("cloudwatch", region_name=REGION)
    publisher = CloudWatchPublisher(client, "Genomics/WorksetMonitor")
    stats = Stats(counts={State.READY: dict.fromkeys(Priority, 2)})
    counters = {
        "leases_lost": {(): 1.0},
        "notifications": {("sns", "failed"): 2.0, ("sns", "sent"): 9.0},
        "error_transitions": {(): 4.0},
    }
    run(publisher.publish(stats, counters))
    run(publisher.publish(stats, {**counters, "error_transitions": {(): 5.0}}))  # one more error since
    names = {m["MetricName"] for m in client.list_metrics(Namespace="Genomics/WorksetMonitor")["Metrics"]}
    assert {"Worksets", "ErrorTransitions", "LeasesLost", "NotificationFailures"} <= names
    assert publisher.published == 2 * (len(State) + 4)

    def total(name: str) -> float:
        points = client.get_metric_statistics(
            Namespace="Genomics/WorksetMonitor",
            MetricName=name,
            StartTime="2000-01-01T00:00:00Z",
            EndTime="2100-01-01T00:00:00Z",
            Period=3600 * 24 * 365,
            Statistics=["Sum"],
        )["Datapoints"]
        return sum(p["Sum"] for p in points)

    assert (total("ErrorTransitions"), total("NotificationFailures")) == (5.0, 2.0)  # deltas, not running totals


# --- the alerting kit ----------------------------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            [tool("promtool"), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _alerts() -> list[dict[str, Any]]:
    import yaml  # moto's dependency; tests only

    return [
        rule
        for group in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]


def test_every_alert_is_documented_and_has_a_runbook_section() -> None:
    text = (ROOT / "docs/operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}
    tested = (DEPLOY / "prometheus/alerts_test.yml").read_text()
    alerts = _alerts()
    assert len(alerts) >= 9
    for rule in alerts:
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, f"{rule['alert']}: no section #{anchor}"
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"


def test_every_metric_the_alerts_and_dashboard_use_exists(daemon: Any) -> None:
    _, _, metrics, _ = daemon
    dashboard = json.loads((DEPLOY / "grafana/workset-monitor.json").read_text())
    expressions = [rule["expr"] for rule in _alerts()]
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b((?:workset_monitor|process)_[a-z_]+)", expr)}
    exposed = sample_names(metrics.registry)  # the supervisor's collector is on it since the fixture made it
    assert len(used) >= 15 and not used - exposed, f"used but never exposed: {sorted(used - exposed)}"
    assert len(dashboard["panels"]) >= 10


def test_generate_latest_is_what_the_port_serves() -> None:
    registry = CollectorRegistry()
    Metrics(registry, process=False)
    assert b"workset_monitor_build_info{version=" in generate_latest(registry)
