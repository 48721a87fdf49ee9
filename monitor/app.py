"""The composition of one command: settings, AWS clients, the store and what hangs on it, built lazily so that
``--help`` and config errors never touch AWS. Only this module, ``commands`` and ``demo`` build concrete adapters."""

from __future__ import annotations

import argparse
import getpass
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from monitor import config, errors, render, step_logs, terminal
from monitor.aws import clients
from monitor.aws.dynamo import DynamoStore
from monitor.aws.s3 import S3Logs, S3Source
from monitor.aws.sns import SnsChannel
from monitor.clock import Clock
from monitor.metrics import Metrics, ObservedStore
from monitor.model import Event, Workset
from monitor.notify import filters
from monitor.notify.linear import LinearChannel, linear_issue_lookup
from monitor.notify.outbox import EVENTS_AT_ONCE, Channel
from monitor.notify.webhook import WebhookChannel
from monitor.ports import Store
from monitor.sentinels import SentinelMirror
from monitor.states import Backoff, Context

PROG = "workset-monitor"


@dataclass
class App:
    """What a command needs, built lazily so that `--help` and config errors never touch AWS."""

    loaded: config.Loaded
    args: argparse.Namespace
    clock: Clock
    metrics: Metrics | None = None  # only the daemon serves metrics
    _channel_pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict, init=False, repr=False)

    @property
    def settings(self) -> config.Settings:
        return self.loaded.settings

    @cached_property
    def clients(self) -> clients.Clients:
        return clients.Clients(self.settings.aws, instrument=self.metrics.instrument if self.metrics else None)

    @cached_property
    def store(self) -> Store:
        """The store for operator commands: the events they cause that some channel wants (``context``) go to the
        outbox for a daemon to deliver."""
        return self.make_store()

    def make_store(self, *, on_pending: Callable[[Event, Workset], None] | None = None) -> Store:
        store: Store = DynamoStore(
            self.clients.get("dynamodb"),
            self.settings.table.name,
            on_pending=on_pending,
            executor=self.clients.table_executor,
        )
        if self.settings.scan.write_sentinels and self.settings.scan.bucket:
            store = SentinelMirror(store, self.source)
        if self.metrics is not None:
            store = ObservedStore(store, self.metrics)
        return store

    def close(self) -> None:
        """Release what the command built (the AWS clients' and the channels' worker threads)."""
        if "clients" in self.__dict__:
            self.clients.close()
        for pool in self._channel_pools.values():
            pool.shutdown(wait=True, cancel_futures=True)

    def channels(self, notify: config.NotifyConfig, store: Store) -> list[Channel]:
        """The configured notification channels, in delivery order. Each sends from worker threads of its own, kept
        across reloads: one slow to fail (SNS's retries take seconds) cannot queue the others' sends behind it."""
        found: list[Channel] = []
        if notify.sns is not None:
            found.append(SnsChannel(self.clients.get("sns"), notify.sns.topic_arn, executor=self._pool("sns")))
        if notify.linear is not None:
            found.append(
                LinearChannel(notify.linear, has_issue=linear_issue_lookup(store), executor=self._pool("linear"))
            )
        if notify.webhook is not None:
            found.append(WebhookChannel(notify.webhook, executor=self._pool("webhook")))
        return found

    def _pool(self, channel: str) -> ThreadPoolExecutor:
        if channel not in self._channel_pools:
            self._channel_pools[channel] = ThreadPoolExecutor(
                max_workers=EVENTS_AT_ONCE, thread_name_prefix=f"notify-{channel}"
            )
        return self._channel_pools[channel]

    @cached_property
    def source(self) -> S3Source:
        if not self.settings.scan.bucket:
            raise errors.ConfigError(f"this command needs [scan] bucket (or ${config.ENV_PREFIX}SCAN__BUCKET)")
        return S3Source(self.clients.get("s3"), self.settings.scan.bucket)

    @cached_property
    def log_store(self) -> S3Logs:
        """Where full step logs are (``[run] step_logs``), in whichever bucket a workset lives."""
        return S3Logs(self.clients.get("s3"))

    def step_logs(self) -> step_logs.Opener | None:
        """How a step run's full log is started, or None when ``[run] step_logs`` is off."""
        if self.settings.run.step_logs == "off":
            return None
        return step_logs.opener(self.log_store, wrote=self.metrics.step_log_write if self.metrics else lambda ok: None)

    def context(self, default_reason: str) -> Context:
        run = self.settings.run
        return Context(
            now_ms=self.clock.now_ms(),
            actor=operator_identity(),
            reason=getattr(self.args, "reason", None) or default_reason,
            max_attempts=run.max_attempts,
            backoff=Backoff(base_s=run.retry_backoff_base_s, cap_s=run.retry_backoff_max_s),
            notify=filters.wanted(self.settings.notify),
        )

    def emit(self, data: Any, text: str) -> None:
        print(render.to_json(data) if self.args.json else terminal.lines_for_terminal(text))


def operator_identity() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with a numeric user)
        user = "uid-unknown"
    return f"operator:{user}@{socket.gethostname()}"
