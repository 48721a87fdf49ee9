"""Which configured channels want which events: ``[notify] events`` and ``min_priority``, overridden per channel."""

from __future__ import annotations

import functools
from collections.abc import Callable

from monitor.config import ChannelFilter, NotifyConfig
from monitor.model import Event, EventType


def channels(cfg: NotifyConfig) -> dict[str, ChannelFilter]:
    """The configured channels by name, in delivery order."""
    found = {"sns": cfg.sns, "linear": cfg.linear, "webhook": cfg.webhook}
    return {name: channel for name, channel in found.items() if channel is not None}


def wants(cfg: NotifyConfig, channel: ChannelFilter, event: Event) -> bool:
    if event.type is EventType.TEST:
        return True
    events = channel.events if channel.events is not None else cfg.events
    minimum = channel.min_priority or cfg.min_priority
    return event.type in events and event.priority.at_least(minimum)


def anyone_wants(cfg: NotifyConfig, event: Event) -> bool:
    """Whether the event goes into the outbox at all."""
    return any(wants(cfg, channel, event) for channel in channels(cfg).values())


def wanted(cfg: NotifyConfig) -> Callable[[Event], bool]:
    """A decision context's notification policy (``states.Context.notify``): whether some channel wants the event."""
    return functools.partial(anyone_wants, cfg)
