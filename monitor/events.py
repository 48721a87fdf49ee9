"""Event mode: register a workset seconds after its ``daylily.ready`` lands, from S3 notifications through SQS.

Optional (``scan.sqs_queue_url``); the periodic scan stays as the backstop, so a lost or late notification costs at
most one scan interval. A message is deleted only once its workset is registered (or turned out to need nothing:
another object, another bucket, an already registered folder); if registering fails on a temporary error the
message stays, and SQS delivers it again after its visibility timeout. Keys arrive URL-encoded and are decoded.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass

from monitor import errors, legacy, logs
from monitor.loops import Loops, Seconds
from monitor.ports import Message, Queue
from monitor.scanner import Found, Scanner

log = logs.get("monitor.events")


@dataclass(frozen=True, slots=True)
class ReadyObject:
    bucket: str
    key: str


def ready_objects(body: str) -> list[ReadyObject]:
    """The ``daylily.ready`` objects an S3 notification (possibly wrapped by SNS) reports as created."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("Message"), str):  # delivered through an SNS topic
            data = json.loads(data["Message"])
    except (ValueError, TypeError):
        return []
    found = []
    for record in data.get("Records", []) if isinstance(data, dict) else []:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated"):
                continue
            bucket = record["s3"]["bucket"]["name"]
            key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError):
            continue
        if key.endswith("/" + legacy.READY):
            found.append(ReadyObject(bucket=bucket, key=key))
    return found


class ReadyListener:
    def __init__(self, queue: Queue, scanner: Scanner, *, bucket: str) -> None:
        """Matches keys against the scanner's prefixes (read at every message: a reload applies live)."""
        self._queue = queue
        self._scanner = scanner
        self._bucket = bucket
        self.handled = 0

    async def poll_once(self, *, wait_s: int = 20) -> int:
        """Receive one batch and handle it; returns how many messages were deleted."""
        deleted = 0
        for message in await self._queue.receive(wait_s=wait_s):
            if await self._handle(message):
                await self._queue.delete(message)
                deleted += 1
        self.handled += deleted
        return deleted

    async def _handle(self, message: Message) -> bool:
        for ready in ready_objects(message.body):
            folder = ready.key.removesuffix(legacy.READY)  # "<prefix><name>/"
            match = self._match(ready.bucket, folder)
            if match is None:
                continue
            prefix, name = match
            try:
                outcome = await self._scanner.register_if_new(prefix, name)
            except errors.MonitorError as exc:
                log.warning("notification not handled; SQS will deliver it again", key=ready.key, error=str(exc))
                return False
            if outcome is Found.ERROR:
                return False
            log.info("notification handled", workset_id=name, outcome=outcome)
        return True

    def _match(self, bucket: str, folder: str) -> tuple[str, str] | None:
        if bucket != self._bucket:
            return None
        for prefix in sorted(self._scanner.prefixes(), key=len, reverse=True):
            rest = folder[len(prefix) :] if folder.startswith(prefix) else None
            if rest and rest.count("/") == 1 and rest.endswith("/"):
                return prefix, rest[:-1]
        return None


async def listen_forever(listener: ReadyListener, loops: Loops, *, interval_s: Seconds, found: asyncio.Event) -> None:
    """The events engine: long-polls the queue back to back (each wait at most 20 s and at most one scan interval);
    sets ``found`` when a message was handled."""

    def wait_s() -> int:
        return min(20, int(interval_s()))

    async def tick() -> None:
        if await listener.poll_once(wait_s=wait_s()):
            found.set()

    await loops.poll("events", tick, every_s=lambda: 0.0, stale_after_s=lambda: 3 * wait_s() + 60)
