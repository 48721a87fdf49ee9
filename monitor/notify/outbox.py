"""At-least-once delivery of notifications from the outbox.

An event some channel wants is written *with* its transition, marked pending (``states.decide`` decides, by the
context's ``notify``; the ``outbox-index`` holds them), so a notification can only be lost together with the change
it reports. This loop delivers the pending events that are due, oldest first:

1. **Claim** the event (a conditional write; the claim lasts ``hold_s`` and makes the event due only once it has run
   out), so two daemons never both send it.
2. For each configured channel not yet recorded on the event: skip it if its filters say so, else send it, with
   bounded retries (exponential backoff with jitter, at least what the server asked for); record the channel's
   outcome on the event right away, so a crash never re-sends what was delivered. The channels are sent to side by
   side, each from worker threads of its own and within three quarters of the claim. A send still busy after
   ``PATIENCE_S`` goes on beside the pass (the event waits for it; the pass and newer events do not). A failure
   nobody foresaw (a bug in a channel) counts as a temporary one: logged with its stack, never fatal to the loop.
3. **Finish**: out of the outbox once every channel has an outcome. A channel that was tried and failed for now
   counts a round: the event is due again ``hold_s`` later, up to ``max_rounds`` rounds, then the channel is
   recorded as failed (and logged as an error). A channel is never given up untried.

One channel down never holds back the others. A channel that failed for now *rests*: the events owed to it are
delivered to the other channels and wait for it (no round counted). After the rest one event *probes* it, beside the
pass; success ends the rest, failure doubles it (``hold_s``, 2 x, 4 x ... up to ``REST_MAX_S``). An event owed only
to resting channels is *parked* without being read or sent: its claim lasts to the end of the rest plus half to all
of its age (by its id; at most REST_MAX_S), so a backlog owed to a channel that stays down costs a handful of claims
per event per hour, comes due spread out rather than all at once, and never stands in front of new events in the
due order. When a probe finds the channel back, the events parked here are taken up at once (our claim on them
lets us); any other waiting event is delivered within its age (REST_MAX_S at most) after the rest.
The events of a pass are delivered ``EVENTS_AT_ONCE`` at a time as a stream (a freed slot takes the next due event
at once; each daemon starts at a different place in a batch), an event committed during a pass is taken at the next
free slot, a daemon busy with its own events still reads the outbox once an interval, an event left unclaimed for
two intervals goes before newer ones (a dead daemon's events do not wait behind a busy one's), and a table error on
one event leaves the others alone; the events waiting out a retry are not due, so the outbox query never returns
them in place of newer ones.

A crash between commit and delivery loses nothing: the event is still pending and is delivered after the restart,
with the same event id. Delivery never blocks or fails a state transition: it runs beside them (the ``notifier``
engine, ``deliver_forever``, calls ``deliver_pending``), woken by ``ring`` as soon as one is committed here, and
polling for events committed elsewhere (the CLI, other daemons). A pass is bounded in time (``budget_s``, and each
event's delivery by the claim on it), so a hung channel delays notifications but never stalls the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence

from monitor import errors, logs
from monitor.clock import Clock
from monitor.config import NotifyConfig
from monitor.loops import Loops, Seconds
from monitor.model import Event, Workset
from monitor.notify import filters
from monitor.notify.doorbell import FRESH_KEPT, Channel, Doorbell
from monitor.notify.passes import Handled, Pass, Reads
from monitor.notify.rests import Rests
from monitor.notify.sending import Sender
from monitor.ports import Store
from monitor.recorder import Delivery, Recorder, Tally

log = logs.get("monitor.notify")

__all__ = ["Channel", "Doorbell", "Outbox", "deliver_forever"]  # Channel, Doorbell: re-exported from notify.doorbell

EVENTS_AT_ONCE = 4  # delivered side by side in a pass (each a claim, a read, its channels' sends and records)
PATIENCE_S = 1.0  # a channel's send still busy after this goes on beside the pass; its event waits for it
UNPARK_MARGIN_S = 1.0  # a parked event is taken up early only if our claim on it lasts this much longer
PARKED_KEPT = FRESH_KEPT  # events parked here that are taken up at once when a channel comes back


class Outbox:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        doorbell: Doorbell,
        notify: NotifyConfig,
        channels: Sequence[Channel],
        hold_s: float = 60.0,
        max_rounds: int = 8,
        tries: int = 4,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        batch: int = 25,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        recorder: Recorder | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._owner = owner
        self._doorbell = doorbell
        self._notify = notify  # which channel wants which event (states.decide chose what enters the outbox)
        self._channels = list(channels)
        self._hold_ms = round(hold_s * 1000)
        self._send_s = hold_s * 3 / 4  # each channel's sending, retries included; the rest is for the writes
        self._rests = Rests(clock, hold_s=hold_s)  # the channels that failed for now
        self._background: set[asyncio.Future[object]] = (
            set()
        )  # sends (and their bookkeeping) going on beside the passes
        self._started: collections.OrderedDict[str, None] = collections.OrderedDict()  # by the latest passes
        # parked here and untouched since: (event, claim end on our monotonic clock, the channels it waits for)
        self._parked: dict[str, tuple[Event, float, frozenset[str]]] = {}
        self._claimed_at_ms: dict[str, int] = {}  # event id -> when a pass claimed it (the log: how long it waited)
        self._reads = Reads()  # when the outbox was last read, by any pass
        self._max_rounds = max_rounds
        self._batch = batch
        self._recorder = recorder or Tally()
        self._send = Sender(self._recorder, tries=tries, backoff_s=backoff_s, max_wait_s=max_wait_s, sleep=sleep)

    @property
    def notify(self) -> NotifyConfig:
        return self._notify

    @property
    def doorbell(self) -> Doorbell:
        return self._doorbell

    def reconfigure(self, notify: NotifyConfig, channels: Sequence[Channel]) -> None:
        self._notify, self._channels = notify, list(channels)

    async def flush(self, *, timeout_s: float) -> None:
        """Deliver what is pending now, within ``timeout_s`` (at shutdown)."""

        async def everything() -> None:
            await self.deliver_pending()
            await self.wait_for_background()

        try:
            await asyncio.wait_for(everything(), timeout=timeout_s)
        except TimeoutError:
            log.warning("outbox not fully flushed at shutdown; the next daemon start delivers the rest")
        except errors.MonitorError as exc:
            log.warning("outbox flush failed; the next daemon start delivers the rest", error=str(exc))
        finally:
            await self.stop_background()

    async def deliver_pending(self, *, budget_s: float | None = None) -> int:
        """One pass over the pending events; returns how many left the outbox. With ``budget_s``, the pass starts no
        event after that long (the loop calls again at once), so it ends in bounded time even when a channel hangs:
        at most the budget plus the deliveries then under way, none of which outlasts its claim (``hold_s``).

        Events are delivered ``EVENTS_AT_ONCE`` at a time as a stream: a slot freed by one event takes the next one
        at once, so one slow delivery (a throttled call, a refused send and its retry) holds back only itself. The
        next one is an event committed here, if any (the doorbell: taken without reading it back), else the next due
        one read from the outbox; but an event left unclaimed for two ``budget_s`` goes first, and a pass kept busy by
        our own commits reads the outbox afresh once per ``budget_s`` (see ``_Pass``)."""
        finished = 0
        ends_at = None if budget_s is None else self._clock.monotonic() + budget_s
        work = Pass(
            self._store,
            self._clock,
            self._doorbell,
            batch=self._batch,
            start=zlib.crc32(self._owner.encode()),
            recent=self._started,
            reads=self._reads,
            read_every_s=budget_s,
            sendable=lambda event: self._parked_for_ms(event) is None,
        )
        running: dict[asyncio.Task[Handled], str] = {}  # delivery -> event id
        try:
            while True:
                past_budget = ends_at is not None and self._clock.monotonic() >= ends_at
                while not past_budget and len(running) < EVENTS_AT_ONCE and (event := await work.next()) is not None:
                    running[asyncio.create_task(self._deliver_within_claim(event))] = event.event_id
                if not running:
                    return finished
                await self._first_done(running, bell=len(running) < EVENTS_AT_ONCE and not past_budget)
                for task in [task for task in running if task.done()]:
                    outcome = task.result()
                    finished += outcome is Handled.DONE
                    work.ended(running.pop(task), outcome)
        finally:  # cancelled (shutdown) or failed: the deliveries under way go on beside, for the flush to wait for
            for task in running:
                if not task.done():
                    self._in_background(task)

    async def _first_done(self, running: Mapping[asyncio.Task[Handled], str], *, bell: bool) -> None:
        """Until a delivery ends or, with ``bell`` (a slot is free), an event is committed here."""
        rung = asyncio.ensure_future(self._doorbell.rung.wait()) if bell else None
        try:
            await asyncio.wait([*running, *([rung] if rung else [])], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if rung is not None:
                rung.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rung

    async def _deliver_within_claim(self, event: Event) -> Handled:
        """``deliver``, abandoned when the claim on the event runs out: past it another daemon may claim the event and
        send it too, and a hung channel must not hold the loop. What was recorded stays; the rest is retried. A
        table error on one event (a claim, a record) leaves that event for a later pass, not the others."""
        try:
            return await asyncio.wait_for(self.deliver(event), timeout=self._hold_ms / 1000)
        except TimeoutError:
            log.warning("delivery outlasted its claim; will retry", event_id=event.event_id)
            return Handled.LATER
        except errors.MonitorError as exc:
            if not exc.temporary:
                raise
            log.warning("delivery failed for now; will retry", event_id=event.event_id, error=str(exc))
            return Handled.LATER
        finally:
            self._claimed_at_ms.pop(event.event_id, None)

    async def deliver(self, event: Event) -> Handled:
        """Deliver one event to every channel that should have it; how it was handled.
        A resting channel (one that failed for now less than ``hold_s`` ago) is not tried: the event waits for it."""
        self._parked.pop(event.event_id, None)  # taken up: no longer ours to hand back when a channel returns
        park_ms = self._parked_for_ms(event)
        hold_ms = self._hold_ms if park_ms is None else park_ms
        if not await self._store.claim_event(event, owner=self._owner, now_ms=self._clock.now_ms(), hold_ms=hold_ms):
            return Handled.BUSY
        if park_ms is not None:  # owed only to resting channels: no read, no send; back after the rest
            self._park(event, park_ms)
            return Handled.LATER
        self._claimed_at_ms[event.event_id] = self._clock.now_ms()
        ws = await self._workset(event)
        wanted = filters.channels(self.notify)
        owed: list[Channel] = []
        outcomes: dict[str, str] = {}  # recorded with the event's next write
        waiting = False  # a channel sat this event out (resting, or being tried by another event)
        beside = False  # a send for this event goes on beside the pass (a probe, or a slow one)
        for channel in self._channels:
            if channel.name in event.notified:
                continue
            config = wanted.get(channel.name)
            if config is None or not filters.wants(self.notify, config, event):
                outcomes[channel.name] = "skipped"
            elif (turn := self._rests.turn(channel.name)) == "wait":
                waiting = True
            elif turn == "probe":  # in the background: the event waits for its outcome
                self._start_probe(channel, event, ws)
                waiting = beside = True
            else:
                owed.append(channel)
        # Side by side, each within the claim: a channel slow to fail (or hung) delays none of the others. One still
        # busy after PATIENCE_S goes on in the background, and the event waits for it: the pass, and every newer
        # event, does not. Each outcome is recorded as soon as it is known, so a crash never re-sends it: with
        # several sends, on its own; a single send's with the event's next write, which follows it at once.
        alone = len(owed) == 1
        sends = {
            asyncio.create_task(self._send_and_record(channel, event, ws, record=not alone)): channel.name
            for channel in owed
        }
        done, slow = await asyncio.wait(sends, timeout=PATIENCE_S) if sends else (set(), set())
        for task in slow:  # slow is not down: the other events still send to it (a failure makes it rest)
            self._in_background(self._settle_later(task, sends[task], event, record=alone))
        waiting |= bool(slow)
        beside |= bool(slow)
        failed = [sends[task] for task in done if task.result() is None]
        if alone:
            outcomes |= {sends[task]: outcome for task in done if (outcome := task.result()) is not None}
        if failed and event.delivery_attempts + 1 < self._max_rounds:  # a round
            await self._finish(event, retry_at_ms=self._clock.now_ms() + self._hold_ms, outcomes=outcomes)
            return Handled.LATER
        for name in failed:  # its last round: a channel is given up only after it was tried and failed
            log.error("notification given up", channel=name, event_id=event.event_id)
            outcomes[name] = f"failed: gave up after {self._max_rounds} rounds"
        if waiting:  # no round counted: the claim runs out and the event is due again
            event.notified.update(outcomes)  # what it still waits for decides its park
            if not beside and (park_ms := self._parked_for_ms(event)) is not None:  # left to resting channels only
                now_ms = self._clock.now_ms()  # back after the rest, not in a wave of re-claims a claim from now
                if await self._store.claim_event(
                    event, owner=self._owner, now_ms=now_ms, hold_ms=park_ms, outcomes=outcomes
                ):
                    self._park(event, park_ms)
                    self._noted(event, outcomes)
                    return Handled.LATER
            for name, outcome in outcomes.items():  # not parked: the outcomes on their own
                await self._record(event, name, outcome)
            return Handled.LATER
        await self._finish(event, outcomes=outcomes)
        return Handled.DONE

    async def _finish(self, event: Event, *, retry_at_ms: int | None = None, outcomes: dict[str, str]) -> None:
        await self._store.finish_event(event, retry_at_ms=retry_at_ms, outcomes=outcomes)
        self._noted(event, outcomes)

    async def _workset(self, event: Event) -> Workset | None:
        """``event``'s workset for its location, the one thing channels show of it: the doorbell's copy (the
        committer's, or one read before) when there is one, else read once."""
        if (known := self._doorbell.worksets.get(event.workset_id)) is not None:
            return known
        try:
            ws = await self._store.get(event.workset_id)
        except errors.CorruptItem as exc:
            log.error("workset unreadable; notifying without its details", event_id=event.event_id, error=str(exc))
            return None
        if ws is not None:
            self._doorbell.remember(ws)
        return ws

    def _parked_for_ms(self, event: Event) -> int | None:
        return self._rests.parked_for_ms(event, self._owed(event))

    def _owed(self, event: Event) -> list[str]:
        """The channels ``event`` still waits for."""
        wanted = filters.channels(self.notify)
        return [
            name
            for name in (channel.name for channel in self._channels)
            if name not in event.notified and name in wanted and filters.wants(self.notify, wanted[name], event)
        ]

    def _start_probe(self, channel: Channel, event: Event, ws: Workset | None) -> None:
        """Try a resting channel again with ``event``, beside the pass: a channel that takes seconds to fail must not
        hold back the batch, and with it every newer event. The event has been handed back until ``hold_s`` from
        now, longer than the probe may take, so nobody sends it meanwhile; the outcome is on it by then."""
        self._in_background(self._settle_later(self._send_and_record(channel, event, ws), channel.name, event))

    def _in_background(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_later(
        self, send: Awaitable[str | None], channel: str, event: Event, *, record: bool = False
    ) -> None:
        """The end of a send that went on beside the pass (``record``: its outcome is not recorded yet). A failure
        counts the event's round, as in the pass; on its last round the channel is given up, and the event leaves
        the outbox once every channel has an outcome."""
        try:
            if (outcome := await send) is not None:
                if record:
                    await self._record(event, channel, outcome)
                return
            if event.delivery_attempts + 1 < self._max_rounds:
                await self._store.finish_event(event, retry_at_ms=self._clock.now_ms() + self._hold_ms)
                return
            log.error("notification given up", channel=channel, event_id=event.event_id)
            await self._record(event, channel, f"failed: gave up after {self._max_rounds} rounds")
            if all(name in event.notified for name in filters.channels(self.notify)):
                await self._store.finish_event(event)
        except errors.MonitorError as exc:  # what was recorded stays; the event is due again once its claim ends
            log.warning("delivery failed for now; will retry", event_id=event.event_id, error=str(exc))

    async def wait_for_background(self) -> None:
        """Until the sends going on beside the passes have ended (each within three quarters of a claim)."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def stop_background(self) -> None:
        """Abandon the sends going on beside the passes (at shutdown): their events are retried, as after a crash."""
        for probe in list(self._background):
            probe.cancel()
        await self.wait_for_background()

    async def _send_and_record(
        self, channel: Channel, event: Event, ws: Workset | None, *, record: bool = True
    ) -> str | None:
        """``_send`` within the channels' share of the claim (None past it), its outcome recorded at once (unless
        not ``record``: the caller writes it)."""
        try:
            outcome = await asyncio.wait_for(self._send(channel, event, ws), timeout=self._send_s)
        except TimeoutError:
            log.warning(
                "notification channel did not finish within its share of the claim; will retry",
                channel=channel.name,
                event_id=event.event_id,
                seconds=self._send_s,
            )
            self._recorder.notification(channel.name, Delivery.RETRY_LATER, None)
            outcome = None
        finally:
            self._rests.probed(channel.name)
        if outcome is None:
            self._rests.rest(channel.name)
            return None
        if self._rests.back(channel.name):
            log.info("notification channel back", channel=channel.name, parked_here=len(self._parked))
            self._unpark(channel.name)
        if record:
            await self._record(event, channel.name, outcome)
        return outcome

    def _park(self, event: Event, park_ms: int) -> None:
        if len(self._parked) < PARKED_KEPT:
            self._parked[event.event_id] = (
                event,
                self._clock.monotonic() + park_ms / 1000,
                frozenset(self._owed(event)),
            )

    def _unpark(self, channel: str) -> None:
        """``channel`` is back: the events parked here waiting for it go to the front (our claim on them lets us take
        them before it ends; one another daemon took since is "busy" and skipped). Those parked for other channels
        only, and those beyond PARKED_KEPT, wait for their park."""
        now = self._clock.monotonic()
        waiting = {key: entry for key, entry in self._parked.items() if channel in entry[2]}
        self._parked = {key: entry for key, entry in self._parked.items() if key not in waiting}
        # Only while our claim lasts: once it has run out, another daemon may have delivered it, unknown to our copy.
        handed = [event for event, until, _ in waiting.values() if until - now > UNPARK_MARGIN_S]
        for event in handed:
            self._started.pop(event.event_id, None)  # started before, parked since: this copy is current
        self._doorbell.fresh.extend(handed)
        self._doorbell.ring()

    async def _record(self, event: Event, channel: str, outcome: str) -> None:
        await self._store.record_delivery(event, channel, outcome)
        self._noted(event, {channel: outcome})

    def _noted(self, event: Event, outcomes: Mapping[str, str]) -> None:
        """After ``outcomes`` were written: our copy of the event (so a later round does not send them again), the
        metrics and the log."""
        for channel, outcome in outcomes.items():
            event.notified[channel] = outcome
            latency = max(self._clock.now_ms() - event.at_ms, 0) / 1000 if outcome == "sent" else None
            kind = Delivery(outcome) if outcome in (Delivery.SENT, Delivery.SKIPPED) else Delivery.FAILED
            self._recorder.notification(channel, kind, latency)
            if outcome == "sent":  # latency: since the commit; waited: of it, before this daemon claimed the event
                claimed_ms = self._claimed_at_ms.get(event.event_id)
                waited = None if claimed_ms is None else max(claimed_ms - event.at_ms, 0) / 1000
                log.info(
                    "notification sent", channel=channel, event_id=event.event_id, latency_s=latency, waited_s=waited
                )


async def deliver_forever(outbox: Outbox, loops: Loops, *, interval_s: Seconds, claim_s: Seconds) -> None:
    """The notifier engine: a delivery pass every ``interval_s()``, and at once when an event is committed here. A pass
    stops taking events after ``interval_s()``; one event's delivery never outlasts its claim (``claim_s()``)."""
    await loops.poll(
        "notifier",
        lambda: outbox.deliver_pending(budget_s=interval_s()),
        every_s=interval_s,
        stale_after_s=lambda: 3 * interval_s() + 60 + claim_s(),
        wake=outbox.doorbell.rung,
    )
