"""The notification outbox's rows on DynamoDB: pending events by due time (``outbox-index``), claims on them, and
each channel's recorded outcome. Part of ``DynamoStore``."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import botocore.exceptions

from monitor.aws import codec
from monitor.aws.table_io import TableIO, _outcome_updates
from monitor.model import Event


class OutboxRows(TableIO):
    async def pending_events(self, *, limit: int, due_by_ms: int | None = None) -> list[Event]:
        condition, values = "outbox = :pending", {":pending": {"S": codec.OUTBOX_PENDING}}
        if due_by_ms is not None:
            condition += " AND outbox_sk < :due"
            values[":due"] = {"S": codec.outbox_due_bound(due_by_ms)}
        pages = self._pages(
            "query",
            what="reading the notification outbox",
            limit=limit,
            TableName=self._table,
            IndexName=codec.OUTBOX_GSI,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
        )
        found: list[Event] = []
        async with contextlib.aclosing(pages):
            async for item in pages:  # a second page only when a corrupt event was left out of the first
                if (event := self._readable(codec.event_from_item, item)) is not None:
                    found.append(event)
                if len(found) >= limit:
                    break
        return found

    async def claim_event(
        self, event: Event, *, owner: str, now_ms: int, hold_ms: int, outcomes: Mapping[str, str] | None = None
    ) -> bool:
        until_ms = now_ms + hold_ms
        names, values, recorded = _outcome_updates(outcomes)
        extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
        try:
            await self._call(
                "update_item",
                what=f"claiming the delivery of {event.event_id}",
                inspect=("ConditionalCheckFailedException",),
                TableName=self._table,
                Key=codec.event_key(event.workset_id, event.seq),
                UpdateExpression="SET claimed_by = :me, claim_until_ms = :until, outbox_sk = :due" + recorded,
                ConditionExpression="outbox = :pending AND (attribute_not_exists(claim_until_ms) "
                "OR claim_until_ms <= :now OR claimed_by = :me)",
                ExpressionAttributeValues={
                    ":me": {"S": owner},
                    ":until": {"N": str(until_ms)},
                    ":due": {"S": codec.outbox_sort_key(event, due_ms=until_ms)},
                    ":now": {"N": str(now_ms)},
                    ":pending": {"S": codec.OUTBOX_PENDING},
                    **values,
                },
                **extra,
            )
        except botocore.exceptions.ClientError:
            return False
        return True

    async def record_delivery(self, event: Event, channel: str, outcome: str) -> None:
        await self._call(
            "update_item",
            what=f"recording the delivery of {event.event_id}",
            TableName=self._table,
            Key=codec.event_key(event.workset_id, event.seq),
            UpdateExpression="SET #outcome = :outcome",
            ExpressionAttributeNames={"#outcome": f"notify_{channel}"},
            ExpressionAttributeValues={":outcome": {"S": outcome}},
        )

    async def finish_event(
        self, event: Event, *, retry_at_ms: int | None = None, outcomes: Mapping[str, str] | None = None
    ) -> None:
        """Leave the outbox, or (``retry_at_ms``) count a failed round and wait until then for the next; with
        ``outcomes``, recorded in the same write."""
        names, values, recorded = _outcome_updates(outcomes)
        if retry_at_ms is None:
            update = (f"SET {recorded.removeprefix(', ')} " if recorded else "") + (
                "REMOVE claimed_by, claim_until_ms, outbox, outbox_sk"
            )
        else:
            update = (
                f"SET claim_until_ms = :retry, outbox_sk = :due{recorded} REMOVE claimed_by ADD notify_attempts :one"
            )
            values |= {
                ":retry": {"N": str(retry_at_ms)},
                ":due": {"S": codec.outbox_sort_key(event, due_ms=retry_at_ms)},
                ":one": {"N": "1"},
            }
        extra: dict[str, Any] = {}
        if names:
            extra["ExpressionAttributeNames"] = names
        if values:
            extra["ExpressionAttributeValues"] = values
        await self._call(
            "update_item",
            what=f"finishing the delivery of {event.event_id}",
            TableName=self._table,
            Key=codec.event_key(event.workset_id, event.seq),
            UpdateExpression=update,
            **extra,
        )
