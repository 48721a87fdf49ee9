"""What the daemon works with, built by the CLI (``run``) or a test from the configuration: the runner
(``supervisor``) turns it into engines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.clock import Clock
from monitor.config import Loaded, NotifyConfig
from monitor.known_folders import KnownFolders
from monitor.metrics import Metrics, Publisher
from monitor.notify.outbox import Channel, Outbox
from monitor.ports import Queue, Source, Store
from monitor.steps import Runner
from monitor.systemd import Notifier


@dataclass
class Services:
    """What the daemon works with; built by the CLI (or a test) from the configuration."""

    store: Store
    source: Source
    clock: Clock
    runner: Runner
    owner: str
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    queue: Queue | None = None
    reload: Callable[[], Loaded] | None = None  # reads and validates the config file again
    outbox: Outbox | None = None  # notification delivery
    channels: Callable[[NotifyConfig], list[Channel]] | None = None  # rebuilds the channels on reload
    metrics: Metrics | None = None  # Prometheus; served on the side port
    cloudwatch: Publisher | None = None  # optional, for sites without Prometheus
    known_folders: KnownFolders | None = None  # the scanner's memory between restarts ([run] state_dir)
