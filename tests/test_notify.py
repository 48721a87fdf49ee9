"""Notifications: SNS read back through an SQS subscription, Linear and webhook against a local HTTP server that fails
on demand, filters, and the outbox's at-least-once, never-twice bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from monitor import actions, errors
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.aws.sns import SnsChannel
from monitor.clock import FakeClock, SystemClock
from monitor.config import NotifyConfig, TableConfig
from monitor.leases import Claimer, Policy
from monitor.memory import MemoryStore
from monitor.model import FLEET_ID, Event, EventType, Priority, State, WorksetId
from monitor.notify import filters, linear, message, webhook
from monitor.notify.linear import LinearChannel, linear_issue_lookup
from monitor.notify.outbox import Channel, Doorbell, Outbox
from monitor.notify.webhook import WebhookChannel
from monitor.recorder import Tally
from monitor.states import Action, Context
from tests.conftest import REGION, run
from tests.fake_http import FakeServer, Reply, serve

ARN = f"arn:aws:sns:{REGION}:123456789012:workset-alerts"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    yield from serve()


class Rig:
    """A store whose new events go to an outbox, a fake clock, and a recording sleep for the retries."""

    def __init__(self, notify: dict[str, Any], store: Any = None) -> None:
        self.clock = FakeClock()
        self.notify = NotifyConfig.model_validate(notify)
        self.doorbell = Doorbell()
        self.store = store or MemoryStore(on_pending=self.doorbell.ring)
        self.waits: list[float] = []
        self.channels: list[Channel] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def outbox(self, owner: str = "host-a:1:0", **kw: Any) -> Outbox:
        return Outbox(
            self.store,
            self.clock,
            owner=owner,
            doorbell=self.doorbell,
            notify=self.notify,
            channels=self.channels,
            sleep=self.sleep,
            backoff_s=0.01,
            **kw,
        )

    def outbox_over(self, store: Any, channels: list[Any], *, owner: str = "host-a:1:0", **kw: Any) -> Outbox:
        """An outbox of this rig's doorbell and filters over ``store`` (a table wrapped to watch or slow it)."""
        return Outbox(
            store, self.clock, owner=owner, doorbell=self.doorbell, notify=self.notify, channels=channels, **kw
        )

    async def register(self, name: str, *, priority: Priority = Priority.URGENT, invalid: str | None = None) -> None:
        await actions.register(
            self.store,
            workset_id=WorksetId(name),
            bucket="lab-bucket",
            prefix=f"w/{name}/",
            priority=priority,
            ctx=self.context("scanner"),
            invalid_reason=invalid,
        )

    async def run_once(self, name: str, *, fail: str | None = None) -> None:
        """Claim the workset and complete it (or fail it permanently)."""
        [held] = await Claimer(self.store, self.clock, owner="host-a:1:0", policy=self.policy).claim(slots=1)
        assert held.workset_id == name
        if fail:
            await held.fail(fail, temporary=False)
        else:
            await held.complete()

    @property
    def policy(self) -> Policy:
        return Policy(notify=filters.wanted(self.notify))

    def context(self, actor: str) -> Context:
        """A decision's context under this rig's notification policy, as the daemon and the CLI make it."""
        return Context(now_ms=self.clock.now_ms(), actor=actor, notify=filters.wanted(self.notify))

    async def events(self, name: str) -> list[Event]:
        return await self.store.history(WorksetId(name))


def linear_cfg(server: FakeServer, **kw: Any) -> dict[str, Any]:
    return {
        "linear": {"api_key": "lin_api_secret123", "team_id": "team-1", "api_url": server.url, "timeout_s": 0.5, **kw}
    }


# --- SNS ---------------------------------------------------------------------------------------------------------


def sns_tapped_by_sqs() -> tuple[Any, Any, str, str]:
    """A topic with an SQS queue subscribed: what SNS published can be read back (clients, topic ARN, queue URL)."""
    sns, sqs = boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name="workset-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="tap")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return sns, sqs, topic, queue


def test_sns_publishes_a_filterable_message_read_back_through_sqs(mocked_aws: None) -> None:
    sns, sqs, topic, queue = sns_tapped_by_sqs()
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    schema.ensure_table(dynamodb, TableConfig(name="notify"))
    rig = Rig({"sns": {"topic_arn": topic}})
    rig.store = DynamoStore(dynamodb, "notify", on_pending=rig.doorbell.ring)
    rig.channels = [SnsChannel(sns, topic)]
    long_name = "ws-" + "x" * 120

    async def scenario() -> None:
        await rig.register(long_name, invalid="stage_samples.tsv line 3 column 5: R2_FQ missing\nsecond line")
        assert rig.doorbell.rung.is_set()
        assert await rig.outbox().deliver_pending() == 1
        [event] = await rig.events(long_name)
        assert (event.pending, event.notified) == (False, {"sns": "sent"})
        assert await rig.store.pending_events(limit=10) == []

    run(scenario())
    [received] = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    envelope = json.loads(received["Body"])
    assert len(envelope["Subject"]) <= 100 and "\n" not in envelope["Subject"]
    assert envelope["Subject"].startswith(f"[workset-monitor] {long_name[:40]}")
    assert {k: v["Value"] for k, v in envelope["MessageAttributes"].items()} == {
        "workset_id": long_name,
        "event_type": "invalid",
        "state": "error",
        "priority": "urgent",
    }
    body = envelope["Message"]
    for expected in (
        "event: invalid",
        "state: error",
        "priority: urgent",
        f"s3 uri: s3://lab-bucket/w/{long_name}/",
        "reason: stage_samples.tsv line 3 column 5",
        "event id:",
    ):
        assert expected in body


def test_a_fleet_pause_is_published_as_what_happened_and_why_with_no_workset_state(mocked_aws: None) -> None:
    sns, sqs, topic, queue = sns_tapped_by_sqs()
    reason = "kernel upgrade\non every head node " + "x" * 100
    event = Event(FLEET_ID, 7, EventType.PAUSED, 7, "operator:me@host", None, None, reason, priority=Priority.URGENT)
    assert run(SnsChannel(sns, topic).send(event, None)) == "sent"
    [received] = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    envelope = json.loads(received["Body"])
    assert envelope["Subject"].startswith("[workset-monitor] intake paused fleet-wide: kernel upgrade on every")
    assert len(envelope["Subject"]) == 100
    assert {k: v["Value"] for k, v in envelope["MessageAttributes"].items()} == {
        "workset_id": "#fleet",
        "event_type": "paused",
        "priority": "urgent",
    }
    assert "state:" not in envelope["Message"] and "by: operator:me@host" in envelope["Message"]


def test_sns_refusals_are_permanent_and_throttling_is_not(mocked_aws: None) -> None:
    channel = SnsChannel(boto3.client("sns", region_name=REGION), ARN)  # the topic does not exist
    event = Event(WorksetId("w"), 1, EventType.ERROR, 0, "a", None, State.ERROR)
    with pytest.raises(errors.DeliveryError) as caught:
        run(channel.send(event, None))
    assert not caught.value.temporary


def test_a_subject_never_exceeds_100_characters_or_one_line() -> None:
    event = Event(WorksetId("w" * 128), 1, EventType.LEASE_EXPIRED, 0, "a", None, State.RETRYING)
    assert len(message.subject(event)) == 100 and "\n" not in message.subject(event)


# --- Linear ------------------------------------------------------------------------------------------------------


def test_linear_makes_one_issue_per_workset_and_comments_after(server: FakeServer) -> None:
    rig = Rig({"events": ["invalid", "error", "complete", "retrying"], **linear_cfg(server)})
    rig.channels = [LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store))]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("ws-1")
        await rig.run_once("ws-1", fail="exit 2: reference missing")  # first problem: an issue
        await rig.register("ws-2", priority=Priority.LOW)
        await rig.run_once("ws-2")  # complete, never in trouble: no issue, no comment
        await rig.outbox().deliver_pending()
        await actions.act(rig.store, WorksetId("ws-1"), Action.RETRY, rig.context("op"))
        await rig.run_once("ws-1")  # complete after the fix: a comment on the same issue
        await rig.outbox().deliver_pending()
        assert [e.notified.get("linear") for e in await rig.events("ws-2") if e.type is EventType.COMPLETE] == [
            "skipped"
        ]

    run(scenario())
    calls = [r.json() for r in server.requests]
    assert len(calls) == 2
    create, comment = calls[0]["variables"]["input"], calls[1]["variables"]["input"]
    assert "issueCreate" in calls[0]["query"] and "commentCreate" in calls[1]["query"]
    assert create["id"] == linear.issue_id("team-1", "ws-1") == comment["issueId"]
    assert (create["teamId"], create["priority"]) == ("team-1", 1)
    assert "exit 2: reference missing" in create["description"] and "complete" in comment["body"]
    assert all(r.headers["authorization"] == "lin_api_secret123" for r in server.requests)


def test_linear_retries_429_and_500_honouring_the_reset_and_never_sends_twice(server: FakeServer) -> None:
    server.script = [
        Reply(429, {"errors": [{"message": "slow down"}]}, {"Retry-After": "7"}),
        Reply(500, {"errors": [{"message": "boom"}]}),
        Reply(200, {"data": {"issueCreate": {"success": True}}}),
    ]
    rig = Rig(linear_cfg(server))
    rig.channels = [LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store))]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="manifest missing")
        outbox = rig.outbox()
        assert await outbox.deliver_pending() == 1
        assert await outbox.deliver_pending() == 0  # nothing left: the success is not sent again

    run(scenario())
    assert len(server.requests) == 3
    assert rig.waits[0] >= 7  # waited at least what the 429 asked for
    ids = {r.json()["variables"]["input"]["id"] for r in server.requests}
    assert len(ids) == 1  # the same client-chosen id on every retry


def test_linear_timeouts_are_retried_and_a_duplicate_after_a_lost_response_counts_as_sent(server: FakeServer) -> None:
    server.script = [Reply(delay_s=1.0), Reply(200, {"errors": [{"message": "Entity already exists"}]})]
    rig = Rig(linear_cfg(server))
    rig.channels = [LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store))]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="manifest missing")
        assert await rig.outbox().deliver_pending() == 1
        [event] = await rig.events("ws-1")
        assert event.notified == {"linear": "sent"}

    run(scenario())


def test_a_rejected_linear_key_is_permanent_loud_and_not_retried(server: FakeServer, caplog: Any) -> None:
    server.default = Reply(401, {"errors": [{"message": "Authentication required"}]})
    rig = Rig(linear_cfg(server))
    rig.channels = [LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store))]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="manifest missing")
        assert await rig.outbox().deliver_pending() == 1
        [event] = await rig.events("ws-1")
        assert event.notified["linear"].startswith("failed: Linear refused the API key")
        assert "check notify.linear.api_key" in event.notified["linear"]

    run(scenario())
    assert len(server.requests) == 1
    assert "lin_api_secret123" not in caplog.text


def test_a_channel_down_for_good_is_given_up_after_the_rounds(server: FakeServer) -> None:
    server.default = Reply(503)
    rig = Rig(linear_cfg(server))
    rig.channels = [LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store))]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="manifest missing")
        outbox = rig.outbox(max_rounds=3, tries=2, hold_s=5)
        for rest_s in (5, 10, 20):  # each failed round doubles the channel's rest
            await outbox.deliver_pending()
            await outbox.wait_for_background()  # round 2 tries the resting channel in the background
            rig.clock.advance(2 * rest_s + 1)  # the rest and the event's spread after it run out
        [event] = await rig.events("ws-1")
        assert not event.pending and event.notified["linear"] == "failed: gave up after 3 rounds"

    run(scenario())
    assert len(server.requests) == 6


# --- webhook -----------------------------------------------------------------------------------------------------


def test_the_webhook_posts_slack_text_and_fields_and_signs_them(server: FakeServer) -> None:
    server.script = [Reply(500)]
    rig = Rig({"webhook": {"url": server.url, "secret": "s3cr3t"}})
    rig.channels = [WebhookChannel(rig.notify.webhook)]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="manifest missing")
        assert await rig.outbox().deliver_pending() == 1

    run(scenario())
    assert len(server.requests) == 2  # a 500, then the retry
    request = server.requests[-1]
    data = request.json()
    assert data["text"].startswith("*ws-1* invalid (urgent, attempt 0): manifest missing")
    assert data["event"]["event_id"] == "ws-1#1" == request.headers["x-workset-monitor-event-id"]
    assert webhook.verify(request.body, request.headers["x-workset-monitor-signature"], "s3cr3t")
    assert not webhook.verify(request.body + b" ", request.headers["x-workset-monitor-signature"], "s3cr3t")
    assert not webhook.verify(request.body, request.headers["x-workset-monitor-signature"], "wrong")


# --- filters and the outbox ----------------------------------------------------------------------------------------


def test_filters_per_channel_and_priority(server: FakeServer) -> None:
    config = {
        "events": ["invalid", "complete"],
        "min_priority": "normal",
        "webhook": {"url": server.url, "events": ["complete"]},
        **linear_cfg(server, min_priority="urgent"),
    }
    rig = Rig(config)
    rig.channels = [
        LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store)),  # type: ignore[arg-type]
        WebhookChannel(rig.notify.webhook),
    ]  # type: ignore[arg-type]

    async def scenario() -> None:
        await rig.register("low", priority=Priority.LOW, invalid="bad")  # below min_priority everywhere
        await rig.register("normal", priority=Priority.NORMAL, invalid="bad")  # linear: urgent only; webhook: complete
        await rig.register("fine", priority=Priority.URGENT)  # a registration: nobody wants it
        await rig.register("urgent", priority=Priority.URGENT, invalid="bad")  # linear wants it, the webhook not
        outbox = rig.outbox(recorder=(tally := Tally()))
        assert await outbox.deliver_pending() == 1
        for name in ("low", "normal", "fine"):
            [event] = await rig.events(name)
            assert not event.pending and event.notified == {}, name  # never entered the outbox
        [urgent] = await rig.events("urgent")
        assert urgent.notified == {"linear": "sent", "webhook": "skipped"}
        assert tally.notifications == {("linear", "sent"): 1, ("webhook", "skipped"): 1}

    run(scenario())
    assert len(server.requests) == 1 and "issueCreate" in server.requests[0].json()["query"]


def test_two_daemons_never_both_send_an_event(server: FakeServer) -> None:
    rig = Rig({"webhook": {"url": server.url}})
    rig.channels = [WebhookChannel(rig.notify.webhook)]  # type: ignore[arg-type]

    async def scenario() -> None:
        for i in range(10):
            await rig.register(f"ws-{i}", invalid="bad")
        a, b = rig.outbox("host-a:1:0"), rig.outbox("host-b:2:0")
        pending = await rig.store.pending_events(limit=100)
        for event in pending:  # both see every pending event and race for each
            await a.deliver(event)
            await b.deliver(event)
        assert await rig.store.pending_events(limit=100) == []

    run(scenario())
    ids = [r.headers["x-workset-monitor-event-id"] for r in server.requests]
    assert len(ids) == 10 == len(set(ids))


def test_an_outbox_forgets_the_events_another_daemon_delivered(server: FakeServer) -> None:
    """Found while soaking two daemons (make soak): an event found busy (another daemon held its claim) was remembered
    by this daemon for the rest of its life, since only its own delivery ever forgot it; one entry per event. Outboxes
    now remember nothing per event: an event under someone's claim is not due until the claim runs out."""
    rig = Rig({"webhook": {"url": server.url}})
    rig.channels = [WebhookChannel(rig.notify.webhook)]  # type: ignore[arg-type]

    async def scenario() -> None:
        a, b = rig.outbox("host-a:1:0", hold_s=10), rig.outbox("host-b:2:0", hold_s=10)
        for i in range(20):
            await rig.register(f"ws-{i}", invalid="bad")
            [event] = await rig.store.pending_events(limit=1)
            now_ms = rig.clock.now_ms()
            assert await rig.store.claim_event(event, owner="host-a:1:0", now_ms=now_ms, hold_ms=10_000)
            assert await b.deliver_pending() == 0  # a is delivering it: busy, b leaves it alone for the claim
            assert await a.deliver(event) == "done"
            rig.clock.advance(11)
        assert await b.deliver_pending() == 0

    run(scenario())
    assert len(server.requests) == 20


def test_a_crash_mid_delivery_resends_only_what_was_not_recorded(server: FakeServer) -> None:
    rig = Rig({"webhook": {"url": server.url}, **linear_cfg(server)})
    rig.channels = [
        LinearChannel(rig.notify.linear, has_issue=linear_issue_lookup(rig.store)),  # type: ignore[arg-type]
        WebhookChannel(rig.notify.webhook),
    ]  # type: ignore[arg-type]

    class Crash(Exception):
        pass

    async def scenario() -> None:
        await rig.register("ws-1", invalid="bad")
        first = rig.outbox("host-a:1:0", hold_s=30)
        original = rig.store.finish_event

        async def die(*args: Any, **kwargs: Any) -> None:
            raise Crash  # both channels sent and recorded, then the process dies before finishing

        rig.store.finish_event = die  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await first.deliver_pending()
        rig.store.finish_event = original  # type: ignore[method-assign]
        rig.clock.advance(31)  # the dead daemon's claim runs out
        assert await rig.outbox("host-b:2:0").deliver_pending() == 1

    run(scenario())
    assert len(server.requests) == 2  # one to Linear, one to the webhook: nothing sent twice


def test_notify_test_reports_every_channel(server: FakeServer, tmp_path: Any, capsys: Any) -> None:
    from monitor import cli

    server.script = [
        Reply(200, {"data": {"issueCreate": {"success": True}}}),
        Reply(500),
        Reply(500),
        Reply(500),
        Reply(500),
    ]
    path = tmp_path / "c.toml"
    path.write_text(
        f'[notify.webhook]\nurl = "{server.url}"\ntimeout_s = 1\n[notify.linear]\nteam_id = "t"\n'
        f'api_key = "lin_api_x"\napi_url = "{server.url}"\n'
    )
    assert cli.main(["--config", str(path), "notify-test", "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert results["linear"] == "sent" and results["webhook"].startswith("FAILED: HTTP 500")
    empty = tmp_path / "none.toml"
    empty.write_text("")
    assert cli.main(["--config", str(empty), "notify-test"]) == 1
    assert "no notification channel is configured" in capsys.readouterr().err


def test_retry_after_and_rate_limit_reset_headers() -> None:
    import time as _time

    from monitor.notify.http import retry_after

    assert retry_after({"Retry-After": "12"}) == 12
    assert 29 <= (retry_after({"retry-after": _http_date(_time.time() + 30)}) or 0) <= 31
    assert 9 <= (retry_after({"X-RateLimit-Requests-Reset": str(int((_time.time() + 10) * 1000))}) or 0) <= 11
    assert 9 <= (retry_after({"x-ratelimit-requests-reset": str(int(_time.time() + 10))}) or 0) <= 11
    assert retry_after({}) is None


def _http_date(epoch: float) -> str:
    import email.utils

    return email.utils.formatdate(epoch, usegmt=True)


class FakeChannel:
    """A channel that records when it delivered each event, or is down (every send a temporary failure)."""

    def __init__(self, name: str, clock: FakeClock, *, down: bool = False) -> None:
        self.name, self._clock, self.down = name, clock, down
        self.sent: dict[str, int] = {}  # event id -> when (ms)
        self.tries = 0

    async def send(self, event: Event, ws: Any) -> str:
        self.tries += 1
        if self.down:
            raise errors.DeliveryError("HTTP 503", temporary=True)
        self.sent[event.event_id] = self._clock.now_ms()
        return "sent"


@pytest.fixture(params=["memory", "dynamodb"])
def outbox_rig(request: pytest.FixtureRequest) -> Rig:
    """A Rig with SNS and a webhook configured, on either store."""
    rig = Rig({"sns": {"topic_arn": ARN}, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    if request.param == "dynamodb":
        client = request.getfixturevalue("dynamodb")
        schema.ensure_table(client, TableConfig(name="notify"))
        rig.store = DynamoStore(client, "notify", on_pending=rig.doorbell.ring)
    return rig


def test_one_channel_down_never_holds_back_the_others(outbox_rig: Rig) -> None:
    """Issue 14.5: with the webhook down and SNS up, 11 of 30 events reached SNS within 60 s, the rest after ~450 s:
    every event spent the webhook's retries before the next was sent, and the 25 oldest, waiting out their retry,
    were all a pass ever read. Each event must reach SNS within two delivery intervals (the notifier's poll)."""
    rig, interval_s = outbox_rig, 10.0
    webhook_ = FakeChannel("webhook", rig.clock, down=True)
    sns = FakeChannel("sns", rig.clock)

    async def sleep(seconds: float) -> None:
        await rig.clock.sleep(seconds)  # the channel retries' backoff takes (fake) time

    outbox = Outbox(
        rig.store,
        rig.clock,
        owner="host-a:1:0",
        doorbell=rig.doorbell,
        notify=rig.notify,
        channels=[webhook_, sns],
        sleep=sleep,
    )

    async def scenario() -> None:
        for i in range(30):
            await rig.register(f"ws-{i:02d}", invalid="bad")
            rig.clock.advance(0.1)
        committed_ms = rig.clock.now_ms()
        for _ in range(3):  # the notifier loop: a pass at most every interval
            started = rig.clock.monotonic()
            await outbox.deliver_pending(budget_s=interval_s)
            rig.clock.advance(max(interval_s - (rig.clock.monotonic() - started), 0))
        late = {
            e: (at - committed_ms) / 1000 for e, at in sns.sent.items() if at - committed_ms > 2 * interval_s * 1000
        }
        assert (len(sns.sent), late) == (30, {})
        assert len(await rig.store.pending_events(limit=100)) == 30  # the webhook still owes every one of them
        assert webhook_.tries >= 4  # it was tried, with retries, not written off

    run(scenario())


def test_an_event_waiting_out_a_retry_is_not_due_for_any_daemon(outbox_rig: Rig) -> None:
    """A round that leaves an event to a failing channel holds it back fleet-wide for ``hold_s``: another daemon
    neither reads it as due nor spends the channel's retries on it again at once."""
    rig = outbox_rig
    webhook_ = FakeChannel("webhook", rig.clock, down=True)
    rig.channels = [webhook_, FakeChannel("sns", rig.clock)]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="bad")
        a, b = rig.outbox("host-a:1:0", hold_s=30), rig.outbox("host-b:2:0", hold_s=30)
        assert await a.deliver_pending() == 0
        tries = webhook_.tries
        assert await b.deliver_pending() == 0
        assert webhook_.tries == tries
        rig.clock.advance(30)
        webhook_.down = False
        assert await b.deliver_pending() == 1
        [event] = await rig.events("ws-1")
        assert (event.notified, event.delivery_attempts) == ({"webhook": "sent", "sns": "sent"}, 1)

    run(scenario())


def test_a_corrupt_event_or_workset_never_stops_the_outbox(dynamodb: Any) -> None:
    """Issue 14.7: a corrupt item met by the outbox (an event of an unknown type; a workset with a fraction) raised
    out of the delivery pass, every pass: the notifier died and took the daemon with it."""
    schema.ensure_table(dynamodb, TableConfig(name="notify"))
    rig = Rig({"sns": {"topic_arn": ARN}})
    rig.store = DynamoStore(dynamodb, "notify", on_pending=rig.doorbell.ring)
    sns = FakeChannel("sns", rig.clock)
    rig.channels = [sns]

    async def scenario() -> None:
        for name in ("bad-event", "bad-workset", "good"):
            await rig.register(name, invalid="bad")
        dynamodb.update_item(
            TableName="notify",
            Key=codec.event_key("bad-event", 1),
            UpdateExpression="SET #type = :v",
            ExpressionAttributeNames={"#type": "type"},
            ExpressionAttributeValues={":v": {"S": "exploded"}},
        )
        dynamodb.update_item(
            TableName="notify",
            Key=codec.control_key("bad-workset"),
            UpdateExpression="SET attempts = :v",
            ExpressionAttributeValues={":v": {"N": "0.5"}},
        )
        rig.doorbell.fresh.clear()  # registered by another process: this daemon reads them from the table
        assert await rig.outbox().deliver_pending() == 2
        assert await rig.outbox().deliver_pending() == 0

    run(scenario())
    assert sorted(sns.sent) == ["bad-workset#1", "good#1"]


def test_an_sns_reply_that_cannot_be_parsed_is_a_failure_for_now() -> None:
    """Seen in the chaos run: a 503 whose body is not XML made botocore raise ResponseParserError, which is not a
    BotoCoreError; it escaped the channel and the notifier, and the daemon exited 1."""
    import botocore.parsers

    class Unparseable:
        def publish(self, **_: Any) -> None:
            raise botocore.parsers.ResponseParserError("Unable to parse response (syntax error), invalid XML received")

    event = Event(WorksetId("w"), 1, EventType.ERROR, 0, "a", None, State.ERROR)
    with pytest.raises(errors.DeliveryError) as caught:
        run(SnsChannel(Unparseable(), ARN).send(event, None))
    assert caught.value.temporary and "could not be parsed" in str(caught.value)


class SlowChannel(FakeChannel):
    """Down, and slow to say so: each send takes ``seconds`` of real time (botocore's own retries on a 503)."""

    def __init__(self, name: str, clock: FakeClock, *, seconds: float) -> None:
        super().__init__(name, clock, down=True)
        self.seconds = seconds
        self.ended = 0

    async def send(self, event: Event, ws: Any) -> str:
        self.tries += 1
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.ended += 1
        raise errors.DeliveryError("HTTP 503", temporary=True)


def test_a_delivery_under_way_when_the_daemon_stops_is_finished_by_the_flush_not_abandoned() -> None:
    """Shutdown cancels the notifier loop in the middle of a pass, then flushes the outbox. The deliveries the pass
    had started were left running on their own (leaked tasks): the flush found their events claimed by us and
    returned, and the process exited under them, a webhook already told but its outcome never recorded, so the event
    was sent again after the restart. A pass that is cancelled hands its deliveries to the flush."""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook", "events": ["invalid"]}})
    gate = asyncio.Event()

    class Webhook(FakeChannel):
        answering = 0

        async def send(self, event: Event, ws: Any) -> str:
            self.answering += 1
            await gate.wait()  # the server takes its time to answer
            return await super().send(event, ws)

    webhook_ = Webhook("webhook", rig.clock)
    rig.channels = [webhook_]

    async def scenario() -> tuple[list[Event], int]:
        await rig.register("ws-1", invalid="bad")
        outbox = rig.outbox()
        loop = asyncio.create_task(outbox.deliver_pending())  # the notifier loop's pass
        while not webhook_.answering:
            await asyncio.sleep(0.01)
        loop.cancel()  # shutdown: the root tasks are cancelled...
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        asyncio.get_running_loop().call_later(0.2, gate.set)
        await outbox.flush(timeout_s=5)  # ...then the outbox is flushed
        return await rig.store.pending_events(limit=10), webhook_.answering

    pending, sends = run(scenario())  # run() also fails on a task left running
    assert (pending, sends) == ([], 1)


def test_a_channel_slow_to_fail_never_starves_the_channels_after_it() -> None:
    """Seen in the chaos run: SNS down took longer to fail than the claim on the event lasted, so every delivery was
    cut off before the webhook's turn, and no round was counted: the webhook never got anything. Channels are sent
    to side by side, each within the claim."""
    rig = Rig({"sns": {"topic_arn": ARN}, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    sns, webhook_ = SlowChannel("sns", rig.clock, seconds=5), FakeChannel("webhook", rig.clock)
    rig.channels = [sns, webhook_]  # SNS first, as configured channels are ordered

    async def scenario() -> None:
        for i in range(3):
            await rig.register(f"ws-{i}", invalid="bad")
        outbox = rig.outbox(hold_s=0.4)
        await outbox.deliver_pending(budget_s=5)
        assert sorted(webhook_.sent) == ["ws-0#1", "ws-1#1", "ws-2#1"]
        pending = await rig.store.pending_events(limit=10)
        assert [(e.notified, e.delivery_attempts) for e in pending] == [({"webhook": "sent"}, 1)] * 3
        assert sns.tries == 3  # each event tried it at once, side by side; cut off by the claim, none retried it

    run(scenario())


def test_a_channel_that_raises_something_unexpected_is_retried_later_and_the_loop_lives() -> None:
    class Broken(FakeChannel):
        async def send(self, event: Event, ws: Any) -> str:
            self.tries += 1
            raise KeyError("a bug in a channel")

    rig = Rig({"sns": {"topic_arn": ARN}, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    webhook_ = FakeChannel("webhook", rig.clock)
    rig.channels = [Broken("sns", rig.clock), webhook_]

    async def scenario() -> None:
        await rig.register("ws-1", invalid="bad")
        assert await rig.outbox().deliver_pending() == 0
        [event] = await rig.store.pending_events(limit=10)
        assert (event.notified, list(webhook_.sent)) == ({"webhook": "sent"}, ["ws-1#1"])

    run(scenario())


def test_a_channel_that_failed_rests_for_a_claim_and_its_probe_holds_back_no_other_event() -> None:
    """Seen in the chaos run: each pass of the notifier tried SNS (down, 3 s to fail) again on its first event, and
    every event waited for that: webhook latencies grew to 80 s. A channel that failed rests for ``hold_s`` (its
    events are delivered elsewhere and wait for it); after that one event probes it while the others go on."""
    rig = Rig({"sns": {"topic_arn": ARN}, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    sns = SlowChannel("sns", rig.clock, seconds=0.2)  # four tries fail within PATIENCE_S: in the pass
    probed_at: list[int] = []  # webhook sends made while an SNS probe was still under way

    class Webhook(FakeChannel):
        async def send(self, event: Event, ws: Any) -> str:
            probed_at.append(sns.tries - sns.ended)
            return await super().send(event, ws)

    webhook_ = Webhook("webhook", rig.clock)
    rig.channels = [sns, webhook_]

    async def scenario() -> None:
        outbox = rig.outbox(hold_s=10)
        for i in range(3):  # three notifier passes, new events before each
            await rig.register(f"ws-{i}a", invalid="bad")
            await outbox.deliver_pending(budget_s=5)
        assert (sns.tries, len(webhook_.sent)) == (4, 3)  # one event's four tries, then resting
        rig.clock.advance(10)
        probed_at.clear()
        for i in range(4):
            await rig.register(f"ws-{i}b", invalid="bad")
        await outbox.deliver_pending(budget_s=5)
        assert len(webhook_.sent) == 7 and probed_at == [1, 1, 1, 1]  # all delivered while the probe was under way
        await asyncio.wait_for(outbox.wait_for_background(), timeout=5)
        assert sns.tries == 8  # one probe (four tries) for the 3 waiting and 4 new events

    run(scenario())


def test_a_table_error_on_one_event_leaves_the_others_to_their_pass() -> None:
    """Seen in the chaos run: one record write answered HTTP 500 failed the whole pass ("loop tick failed"), and
    every event behind it waited for the notifier's next tick. (A single channel's outcome is recorded with the
    event's finish.)"""
    from tests.faults import StoreSpy

    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    webhook_ = FakeChannel("webhook", rig.clock)
    rig.channels = [webhook_]

    async def scenario() -> None:
        for name in ("ws-1", "ws-2", "ws-3"):
            await rig.register(name, invalid="bad")
        spy = StoreSpy(rig.store)
        spy.fail_before["finish_event"] = 1
        outbox = rig.outbox_over(spy, rig.channels)
        assert await outbox.deliver_pending() == 2
        assert len(webhook_.sent) == 3  # the failed record is retried later (at least once: the event id says so)

    run(scenario())


class BusyTable:
    """A store whose every call takes ``seconds`` of (fake) time: a table that answers ~50 calls/s to this daemon."""

    def __init__(self, store: Any, clock: FakeClock, *, seconds: float = 0.02) -> None:
        self._store, self._clock, self._seconds = store, clock, seconds
        self.calls: list[tuple[float, str, Any]] = []  # (monotonic, method, first argument)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((self._clock.monotonic(), name, args[0] if args else None))
            self._clock.advance(self._seconds)
            return await target(*args, **kwargs)

        return call


def test_a_backlog_owed_to_a_down_channel_costs_less_and_less_and_never_delays_a_new_event() -> None:
    """Seen in the 300-workset chaos run (SNS down all run): 678 of 1 104 webhook deliveries came later than 2 s,
    the worst 58 s. Every event owed to SNS was claimed again (and its workset read) each time its claim ran out,
    and those re-claims came first in due order: at 1 000 waiting events the notifier spent its passes on them and
    new events queued behind. An event owed only to resting channels is parked until the rest ends (the rest doubles
    while the channel stays down), so the backlog costs one claim per rest and new events go first."""
    rig = Rig({"sns": {"topic_arn": ARN}, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    sns, webhook_ = FakeChannel("sns", rig.clock, down=True), FakeChannel("webhook", rig.clock)
    interval_s, hold_s = 1.0, 10.0
    table = BusyTable(rig.store, rig.clock)
    outbox = rig.outbox_over(table, [sns, webhook_], hold_s=hold_s, tries=1)  # SNS fails at once: the table costs time
    committed: dict[str, int] = {}  # event id -> commit time (ms)

    async def commit(name: str) -> None:
        await rig.register(name, invalid="bad")
        committed[f"{name}#1"] = rig.clock.now_ms()

    async def scenario() -> None:
        async def tick() -> None:  # the notifier loop: a pass at most every interval
            started = rig.clock.monotonic()
            await outbox.deliver_pending(budget_s=interval_s)
            await outbox.wait_for_background()
            rig.clock.advance(max(interval_s - (rig.clock.monotonic() - started), 0))

        for i in range(300):  # the backlog: delivered to the webhook (that takes a while), owed to SNS
            await commit(f"old-{i:03d}")
        for _ in range(100):
            if len(webhook_.sent) == 300:
                break
            await tick()
        assert len(webhook_.sent) == 300
        for _ in range(30):  # the backlog took longer than a rest to meet: its first re-parking comes due at once
            await tick()
        begin = rig.clock.monotonic()
        end, new = begin + 600, 0
        while rig.clock.monotonic() < end:  # ten minutes, a new event every 3 s
            if rig.clock.monotonic() >= begin + 3 * new:
                await commit(f"new-{new:03d}")
                new += 1
            await tick()
        latency_s = {e: (webhook_.sent.get(e, 10**15) - at) / 1000 for e, at in committed.items() if "new-" in e}
        late = {e: seconds for e, seconds in latency_s.items() if seconds > 2 * interval_s}
        assert (len(latency_s), late) == (new, {})
        recent = [e for at, call, e in table.calls if at > end - 300 and call == "claim_event"]
        backlog = [e for e in recent if "old-" in e.event_id]
        assert len(backlog) < 1.5 * 300  # in the last five minutes, once or twice each (it was every claim: 30 times)

    run(scenario())


def test_a_slow_delivery_holds_back_only_itself_and_a_new_event_goes_at_once() -> None:
    """Seen in the 300-workset chaos run: late events had waited a median 3.9 s before their daemon even claimed them,
    then took 0.2 s to deliver. A pass delivered a batch 4 at a time and read the next batch only once the whole
    batch was done, so one slow event (a throttled call, a refused send and its retry) held back every event
    committed meanwhile. Now a freed slot takes the next due event at once, and an event committed during the pass
    (the doorbell) is read as soon as a slot is free."""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    rig.clock = SystemClock()  # type: ignore[assignment]
    sent_at: dict[str, float] = {}

    class Webhook(FakeChannel):
        async def send(self, event: Event, ws: Any) -> str:
            if event.workset_id == "slow":
                await asyncio.sleep(0.8)  # within PATIENCE_S: its delivery waits for it
            sent_at[event.event_id] = time.monotonic()
            return "sent"

    rig.channels = [Webhook("webhook", rig.clock)]  # type: ignore[arg-type]

    async def scenario() -> None:
        for name in ("slow", "a", "b", "c"):
            await rig.register(name, invalid="bad")
        outbox = rig.outbox()
        rig.doorbell.rung.clear()
        delivering = asyncio.create_task(outbox.deliver_pending(budget_s=5))
        await asyncio.sleep(0.1)  # a, b and c are delivered; the slow one holds a slot
        await rig.register("new", invalid="bad")
        committed = time.monotonic()
        assert await delivering == 5
        assert sent_at["new#1"] - committed < 0.4, "waited for the slow one"  # it was 0.7 s: the slow one's end

    run(scenario())


def test_an_older_event_from_the_table_goes_before_newer_ones_committed_here() -> None:
    """Seen in the 300-workset chaos run: events whose committing daemon was killed just after the commit (or whose
    claim's answer was lost, so no doorbell rang) waited 8-13 s in the table while the other daemons, busy with their
    own new events, took those first: a pass read the outbox only once its doorbell was empty. Now a pass busy with
    its own events still reads the outbox once an interval, and an event left unclaimed for two intervals goes
    before newer ones."""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    order: list[str] = []

    class Recording(FakeChannel):
        async def send(self, event: Event, ws: Any) -> str:
            order.append(event.event_id)
            return await super().send(event, ws)

    rig.channels = [Recording("webhook", rig.clock)]

    async def scenario() -> None:
        await rig.register("orphan", invalid="bad")
        rig.doorbell.fresh.clear()  # committed by a daemon killed since: this one's doorbell never heard of it
        rig.clock.advance(2.5)
        for i in range(12):  # this daemon's own, committed since
            await rig.register(f"new-{i:02d}", invalid="bad")
        assert await rig.outbox().deliver_pending(budget_s=1.0) == 13
        assert order[0] == "orphan#1", order  # it was 13th: after every event committed here
        assert order[1:] == [f"new-{i:02d}#1" for i in range(12)]

    run(scenario())


def test_a_pass_without_a_budget_reads_the_outbox_once_not_once_per_event() -> None:
    """Found in review: a pass without a budget (``run --once``, the flush at shutdown) took "a read every 0 s" to
    mean a fresh outbox read before every event committed here: 12 events, 12 queries. It reads when the doorbell
    is empty."""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    webhook_ = FakeChannel("webhook", rig.clock)
    table = BusyTable(rig.store, rig.clock, seconds=0)
    outbox = rig.outbox_over(table, [webhook_])

    async def scenario() -> None:
        for i in range(12):
            await rig.register(f"ws-{i:02d}", invalid="bad")
        assert await outbox.deliver_pending() == 12
        reads = [call for _, call, _ in table.calls if call == "pending_events"]
        assert len(reads) <= 2, len(reads)

    run(scenario())


def test_a_parked_event_come_due_never_goes_before_a_new_one() -> None:
    """An event left unclaimed for two intervals goes before this daemon's newer ones, but not one that only a
    resting channel still waits for: it would only be parked again. (A first version put the SNS backlog's re-parks
    in front of every new event in the chaos run: 105 late.)"""
    rig = Rig({"sns": {"topic_arn": ARN}, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    sns, webhook_ = FakeChannel("sns", rig.clock, down=True), FakeChannel("webhook", rig.clock)
    table = BusyTable(rig.store, rig.clock, seconds=0)
    outbox = rig.outbox_over(table, [sns, webhook_], hold_s=10, tries=1)

    async def scenario() -> None:
        await rig.register("first", invalid="bad")
        await outbox.deliver_pending()  # SNS fails: it rests 10 s
        for i in range(8):  # delivered to the webhook elsewhere, owed to SNS only, due
            await rig.register(f"old-{i}", invalid="bad")
            [event] = [e for e in await rig.events(WorksetId(f"old-{i}"))]
            await rig.store.record_delivery(event, "webhook", "sent")
        rig.doorbell.fresh.clear()
        rig.clock.advance(3)
        for i in range(4):
            await rig.register(f"new-{i}", invalid="bad")
        table.calls.clear()
        await outbox.deliver_pending(budget_s=1.0)
        claimed = [str(e.workset_id) for _, call, e in table.calls if call == "claim_event"]
        assert claimed[:4] == [f"new-{i}" for i in range(4)], claimed
        assert sorted(webhook_.sent) == ["first#1"] + [f"new-{i}#1" for i in range(4)]

    run(scenario())


def test_an_event_committed_here_is_delivered_without_reading_its_workset_back(outbox_rig: Rig) -> None:
    """A delivery read the event's workset before sending, for its location (all the channels show of it, and it
    never changes): one GetItem per event on every delivery's path, 65-300 ms each under the chaos run's load. The
    committing daemon now hands the workset to its outbox with the event; an event committed elsewhere reads it
    once per workset."""
    rig = outbox_rig
    where: dict[str, str | None] = {}

    class Webhook(FakeChannel):
        async def send(self, event: Event, ws: Any) -> str:
            where[event.event_id] = ws.s3_uri if ws else None
            return await super().send(event, ws)

    table = BusyTable(rig.store, rig.clock, seconds=0)
    outbox = rig.outbox_over(table, [Webhook("webhook", rig.clock)])

    async def scenario() -> None:
        await rig.register("here", invalid="bad")
        assert await outbox.deliver_pending() == 1
        await rig.register("elsewhere", invalid="bad")
        rig.doorbell.fresh.clear()  # committed by another daemon: this one heard nothing of it
        rig.doorbell.worksets.clear()
        assert await outbox.deliver_pending() == 1
        reads = [str(arg) for _, call, arg in table.calls if call == "get"]
        assert reads == ["elsewhere"]  # it was ["here", "elsewhere"]
        assert where == {"here#1": "s3://lab-bucket/w/here/", "elsewhere#1": "s3://lab-bucket/w/elsewhere/"}

    run(scenario())


def test_a_single_send_is_recorded_with_the_events_next_write(outbox_rig: Rig) -> None:
    """A delivery wrote the channel's outcome, then finished the event (or parked it for a resting channel): two
    writes after the send, where one does. A single send's outcome now goes with the event's next write, which
    follows the send at once as the record did (so a crash re-sends no more than before); several sends side by
    side still record each as it ends."""
    rig = outbox_rig
    sns, webhook_ = FakeChannel("sns", rig.clock), FakeChannel("webhook", rig.clock)
    table = BusyTable(rig.store, rig.clock, seconds=0)
    outbox = rig.outbox_over(table, [webhook_], hold_s=10)

    async def scenario() -> None:
        await rig.register("one", invalid="bad")
        assert await outbox.deliver_pending() == 1
        writes = [call for _, call, _ in table.calls if call in ("claim_event", "record_delivery", "finish_event")]
        assert writes == ["claim_event", "finish_event"]  # it was claim, record, finish
        [event] = await rig.events(WorksetId("one"))
        assert (event.pending, event.notified) == (False, {"webhook": "sent"})

        # SNS down and resting: the webhook's outcome goes with the event's park
        sns.down = True
        outbox2 = rig.outbox_over(table, [sns, webhook_], hold_s=10, tries=1)
        await rig.register("two", invalid="bad")
        await outbox2.deliver_pending()  # both sent side by side: SNS fails and rests, the webhook is recorded
        await rig.register("three", invalid="bad")
        table.calls.clear()
        await outbox2.deliver_pending()
        writes = [call for _, call, _ in table.calls if call in ("claim_event", "record_delivery", "finish_event")]
        assert writes == ["claim_event", "claim_event"]  # it was claim, record, claim (the park)
        [event] = await rig.events(WorksetId("three"))
        assert (event.pending, event.notified) == (True, {"webhook": "sent"})
        assert sorted(webhook_.sent) == ["one#1", "three#1", "two#1"]

    run(scenario())


def test_when_a_channel_comes_back_what_this_daemon_parked_for_it_goes_at_once() -> None:
    """Seen in the chaos run: the webhook, slow once, rested 5 s; the events it missed were parked until the rest's end
    plus a spread, and reached it 11-12 s after their commit although the probe had found it back at 9 s. The daemon
    knows what it parked: when a probe finds the channel back, it takes those events up at once (its claim on them
    lets it), instead of leaving each to the end of its park."""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    webhook_ = FakeChannel("webhook", rig.clock, down=True)
    rig.channels = [webhook_]

    async def scenario() -> None:
        outbox = rig.outbox(hold_s=10, tries=1)
        await rig.register("first", invalid="bad")
        await outbox.deliver_pending()  # fails: the webhook rests 10 s
        for i in range(5):
            await rig.register(f"ws-{i}", invalid="bad")
            await outbox.deliver_pending()  # parked: nothing to send while the webhook rests
            rig.clock.advance(1)
        webhook_.down = False
        rig.clock.advance(6)  # past the rest and the first event's retry; the parked ones have 4 s or more to go
        await outbox.deliver_pending()  # the first event probes: the webhook is back
        await outbox.wait_for_background()
        await outbox.deliver_pending()
        assert sorted(webhook_.sent) == ["first#1"] + [f"ws-{i}#1" for i in range(5)]

    run(scenario())


def test_an_event_that_probed_a_channel_back_is_not_handed_back_again(dynamodb: Any) -> None:
    """Seen in the chaos run (duplicates 4 -> 34): an event parked here that later probed the channel itself was still
    on the list of parked events, so the probe's success handed back our old copy of it and it was sent again.
    (On DynamoDB: each read is a copy of its own, as in a daemon.)"""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    schema.ensure_table(dynamodb, TableConfig(name="notify"))
    rig.store = DynamoStore(dynamodb, "notify", on_pending=rig.doorbell.ring)
    webhook_ = FakeChannel("webhook", rig.clock, down=True)
    rig.channels = [webhook_]
    sends: list[str] = []
    real_send = webhook_.send

    async def send(event: Event, ws: Any) -> str:
        sends.append(event.event_id)
        return await real_send(event, ws)

    webhook_.send = send  # type: ignore[method-assign]

    async def scenario() -> None:
        outbox = rig.outbox(hold_s=10, tries=1, max_rounds=1)
        await rig.register("first", invalid="bad")
        await outbox.deliver_pending()  # fails, given up at once: the webhook rests 10 s
        await rig.register("parked", invalid="bad")
        await outbox.deliver_pending()  # parked: the webhook is resting
        webhook_.down = False
        rig.clock.advance(60)
        for _ in range(3):
            await outbox.deliver_pending()  # the parked event is due: it probes the webhook, which is back
            await outbox.wait_for_background()
        assert sends.count("parked#1") == 1, sends

    run(scenario())


def test_an_event_committed_here_is_started_once_though_the_outbox_read_shows_it_too(dynamodb: Any) -> None:
    """Seen in the chaos run (34 duplicates, most sent twice by one daemon 0.1 s apart): an event committed while the
    pass read the outbox came both from the read and from the doorbell, and was started from each; our own claim let
    the second through."""
    rig = Rig({"webhook": {"url": "http://127.0.0.1:9/hook"}})
    schema.ensure_table(dynamodb, TableConfig(name="notify"))
    rig.store = DynamoStore(dynamodb, "notify", on_pending=rig.doorbell.ring)
    webhook_ = FakeChannel("webhook", rig.clock)
    rig.channels = [webhook_]

    class SlowReads:  # the outbox read is answered after a commit that happened while it was on its way
        def __getattr__(self, name: str) -> Any:
            return getattr(rig.store, name)

        async def pending_events(self, **kwargs: Any) -> list[Event]:
            await asyncio.sleep(0.2)
            return list(await rig.store.pending_events(**kwargs))

    async def scenario() -> None:
        await rig.register("older", invalid="bad")
        rig.doorbell.fresh.clear()  # committed by another daemon
        # a daemon that starts a two-event batch at its second event ("older"; "new#1" sorts first), as half do
        owner = next(f"host-{i}:1:0" for i in range(100) if zlib.crc32(f"host-{i}:1:0".encode()) % 2 == 1)
        outbox = rig.outbox_over(SlowReads(), rig.channels, owner=owner)
        delivering = asyncio.create_task(outbox.deliver_pending())
        await asyncio.sleep(0.05)
        await rig.register("new", invalid="bad")  # during the read: in the read's answer and at the doorbell
        assert await delivering == 2
        assert webhook_.tries == 2

    run(scenario())
