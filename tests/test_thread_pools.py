"""DynamoDB calls have worker threads of their own: a saturated default thread pool (slow S3 validation, say)
cannot hold a heartbeat back until its holder fences itself."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from monitor import actions, config
from monitor.app import App
from monitor.aws import schema
from monitor.clock import SystemClock
from monitor.config import TableConfig
from monitor.leases import Claimer, Policy
from monitor.model import Priority, WorksetId
from monitor.states import Context
from tests.conftest import REGION, run

BLOCKERS = 40  # more than asyncio's default pool ever has threads (32)


@contextlib.asynccontextmanager
async def default_pool_saturated() -> AsyncIterator[None]:
    """Every thread of asyncio's default pool blocked (slow S3 validation, say) while the body runs."""
    release = threading.Event()
    blockers = [asyncio.ensure_future(asyncio.to_thread(release.wait, 30)) for _ in range(BLOCKERS)]
    try:
        await asyncio.sleep(0.2)  # every default worker thread is busy now
        yield
    finally:
        release.set()
        await asyncio.gather(*blockers)


def test_a_heartbeat_completes_while_the_default_thread_pool_is_saturated(mocked_aws: None, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[aws]\nregion = "{REGION}"\n[table]\nname = "pools"\n')
    app = App(loaded=config.load(path, {}), args=argparse.Namespace(), clock=SystemClock())
    schema.ensure_table(app.clients.get("dynamodb"), TableConfig(name="pools"))
    store = app.make_store()

    async def scenario() -> None:
        clock = SystemClock()
        await actions.register(
            store,
            workset_id=WorksetId("ws-1"),
            bucket="b",
            prefix="w/ws-1/",
            priority=Priority.NORMAL,
            ctx=Context(now_ms=clock.now_ms(), actor="t"),
        )
        claimer = Claimer(store, clock, owner="host-a:1:0", policy=Policy(), rng=random.Random(0))
        [held] = await claimer.claim(slots=1)
        async with default_pool_saturated():
            assert await asyncio.wait_for(held.heartbeat_once(), timeout=2)

    try:
        run(scenario())
    finally:
        app.close()


def test_each_notification_channel_has_worker_threads_of_its_own(tmp_path: Path) -> None:
    """Seen in the chaos run with SNS down: every publish held a default-pool thread for seconds (botocore's retries),
    and the webhook's posts queued behind them until their claims ran out. A channel's sends run in its own threads:
    another channel, or anything else, filling asyncio's default pool cannot hold them back."""
    from monitor.model import Event, EventType, State
    from tests.fake_http import FakeServer

    server = FakeServer().start()
    path = tmp_path / "c.toml"
    path.write_text(f'[aws]\nregion = "{REGION}"\n[notify.webhook]\nurl = "{server.url}"\n')
    app = App(loaded=config.load(path, {}), args=argparse.Namespace(), clock=SystemClock())
    [webhook] = app.channels(app.settings.notify, store=None)  # type: ignore[arg-type]
    event = Event(WorksetId("ws-1"), 1, EventType.COMPLETE, 0, "t", State.IN_PROGRESS, State.COMPLETE)

    async def scenario() -> None:
        async with default_pool_saturated():
            assert await asyncio.wait_for(webhook.send(event, None), timeout=2) == "sent"

    try:
        run(scenario())
    finally:
        app.close()
        server.stop()
