"""One channel's send of one event, with bounded retries: exponential backoff with jitter, at least what the server
asked for (``retry_after_s``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import tenacity

from monitor import errors, logs
from monitor.model import Event, Workset
from monitor.notify.doorbell import Channel
from monitor.recorder import Delivery, Recorder

log = logs.get("monitor.notify")


class Sender:
    def __init__(
        self,
        recorder: Recorder,
        *,
        tries: int,
        backoff_s: float,
        max_wait_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._recorder = recorder
        self._tries = tries
        self._backoff_s = backoff_s
        self._max_wait_s = max_wait_s
        self._sleep = sleep

    async def __call__(self, channel: Channel, event: Event, ws: Workset | None) -> str | None:
        """The channel's outcome, "failed: ..." for a permanent refusal, None when it is worth another round (a
        temporary failure, or a failure nobody foresaw: a bug in a channel must not stop the notifier)."""
        try:
            async for attempt in tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(self._tries),
                wait=self._wait,
                retry=tenacity.retry_if_exception(lambda e: isinstance(e, errors.DeliveryError) and e.temporary),
                reraise=True,
                sleep=self._sleep,
            ):
                with attempt:
                    return await channel.send(event, ws)
        except errors.DeliveryError as exc:
            if exc.temporary:
                log.warning(
                    "notification failed for now; will retry",
                    channel=channel.name,
                    event_id=event.event_id,
                    error=str(exc),
                )
                self._recorder.notification(channel.name, Delivery.RETRY_LATER, None)
                return None
            log.error("notification refused", channel=channel.name, event_id=event.event_id, error=str(exc))
            return f"failed: {exc}"[:500]
        except Exception:
            log.exception("notification channel failed unexpectedly; will retry", channel=channel.name)
            self._recorder.notification(channel.name, Delivery.RETRY_LATER, None)
            return None
        return None  # unreachable: AsyncRetrying either returns or raises

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exponential = min(self._backoff_s * 2 ** (state.attempt_number - 1), self._max_wait_s)
        base = exponential / 2 + tenacity.wait_random(0, exponential / 2)(state)
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after_s", None)
        return float(max(base, min(asked, self._max_wait_s)) if asked else base)
