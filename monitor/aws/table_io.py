"""The plumbing of the DynamoDB store: one call off the event loop with our errors, pages followed to the end,
batched reads, index queries, corrupt items left out (logged once each), and the condition/update helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import botocore.exceptions

from monitor import errors, logs
from monitor.aws import clients, codec
from monitor.model import FINISHED_STATES, FLEET_ID, Event, Priority, State, Workset, WorksetId
from monitor.states import FINISHED_RANK, Decision

_BATCH_GET_MAX = 100
_CANCELLED = ("TransactionCanceledException",)
T = TypeVar("T")
log = logs.get("monitor.store")


class TableIO:
    def __init__(
        self,
        client: Any,
        table: str,
        *,
        page_size: int | None = None,
        on_pending: Callable[[Event, Workset], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._client = client
        self._executor = executor  # the table's own worker threads (clients.Clients.table_executor); None: asyncio's
        self._table = table
        self._page_size = page_size  # None: DynamoDB's own 1 MB pages; tests set it small to force paging
        self._on_pending = on_pending  # called with the event and its workset after writing a pending event
        self._corrupt: set[str] = set()  # keys of the corrupt items reported

    def _index(
        self,
        state: State,
        priority: Priority | None,
        *,
        projection: str | None = None,
        names: dict[str, str] | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[codec.Item, None]:
        """The index entries of ``state`` (of ``priority``), in index order; past the sort key ``after`` if given
        (with a priority too, the entries up to it are read and left to the caller to skip)."""
        condition = "#state = :state"
        values: dict[str, Any] = {":state": {"S": state.value}}
        if priority is not None:
            condition += " AND begins_with(gsi_sk, :rank)"
            values[":rank"] = {"S": f"{priority.rank}#"}
        elif after is not None:
            condition += " AND gsi_sk > :after"
            values[":after"] = {"S": after}
        extra: dict[str, Any] = {"ProjectionExpression": projection} if projection else {}
        return self._pages(
            "query",
            what=f"listing {state.value} worksets",
            TableName=self._table,
            IndexName=codec.GSI_NAME,
            KeyConditionExpression=condition,
            ExpressionAttributeNames={"#state": "state", **(names or {})},
            ExpressionAttributeValues=values,
            **extra,
        )

    async def _entries(
        self,
        state: State,
        priority: Priority | None,
        *,
        projection: str | None = None,
        names: dict[str, str] | None = None,
        after: str | None = None,
        done: dict[tuple[State, str, Priority], int] | None = None,
    ) -> AsyncGenerator[codec.Item, None]:
        """A state's entries in listing order (``codec.listing_key``): the state index's, then for a finished state
        the finished index's, month by month (the months the counters know: ``done``, or read now), each in the
        order they finished."""
        finished_after = after is not None and after.startswith(FINISHED_RANK)
        if not finished_after:
            async for item in self._index(state, priority, projection=projection, names=names, after=after):
                yield item
        if state not in FINISHED_STATES:
            return
        start_month = codec.finished_month(int(after.split("#")[1])) if after and finished_after else ""
        done = await self._done_counts() if done is None else done
        months = sorted({month for (s, month, _) in done if s is state and month >= start_month})
        for month in months:
            condition, values = "done_pk = :part", {":part": {"S": codec.finished_partition(state, month)}}
            if after is not None and finished_after and month == start_month:
                condition += " AND done_sk > :after"
                values[":after"] = {"S": after}
            extra: dict[str, Any] = {"ExpressionAttributeNames": {"#priority": "priority"}}
            if priority is not None:
                extra["FilterExpression"] = "#priority = :priority"
                values[":priority"] = {"S": priority.value}
            async for item in self._pages(
                "query",
                what=f"listing {state.value} worksets of {month}",
                TableName=self._table,
                IndexName=codec.FINISHED_GSI,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                **(extra if priority is not None else {}),
            ):
                yield item

    async def _done_counts(self) -> dict[tuple[State, str, Priority], int]:
        """The finished worksets by (state, month, priority), from their counters (``codec``): one Query of a few
        items, however many worksets finished."""
        counts: dict[tuple[State, str, Priority], int] = {}
        pages = self._pages(
            "query",
            what="counting finished worksets",
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :done)",
            ExpressionAttributeValues={":pk": {"S": FLEET_ID}, ":done": {"S": codec.DONE_PREFIX}},
            ConsistentRead=True,
        )
        async for item in pages:
            if (counted := self._readable(codec.done_count, item)) is not None:
                key, n = counted
                counts[key] = counts.get(key, 0) + n
        return counts

    async def _batch_get(self, ids: Sequence[WorksetId]) -> dict[WorksetId, Workset]:
        found: dict[WorksetId, Workset] = {}
        for start in range(0, len(ids), _BATCH_GET_MAX):
            keys = [codec.control_key(i) for i in dict.fromkeys(ids[start : start + _BATCH_GET_MAX])]
            request = {self._table: {"Keys": keys, "ConsistentRead": True}}
            delay_s = 0.05
            while request:
                response = await self._call("batch_get_item", what="reading worksets", RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    if (ws := self._readable(codec.workset_from_item, item)) is not None:
                        found[ws.workset_id] = ws
                request = response.get("UnprocessedKeys") or {}
                if request:  # throttled: DynamoDB asks us to come back for the rest
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 2.0)
        return found

    def _readable(self, decode: Callable[..., T], item: codec.Item) -> T | None:
        """``decode(item)``, or None when the item is corrupt: a listing leaves it out (logged once per item)."""
        try:
            return decode(item, table=self._table)
        except errors.CorruptItem as exc:
            if exc.key not in self._corrupt:
                self._corrupt.add(exc.key)
                log.error("corrupt item left out; repair or delete it", error=str(exc))
            return None

    async def _pages(
        self, operation: str, *, what: str, limit: int | None = None, **kwargs: Any
    ) -> AsyncGenerator[codec.Item, None]:
        page = self._page_size if limit is None else min(limit, self._page_size or limit)
        if page is not None:
            kwargs["Limit"] = page
        while True:
            response = await self._call(operation, what=what, **kwargs)
            for item in response.get("Items", []):
                yield item
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    async def _call(self, operation: str, *, what: str, inspect: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """One AWS call off the event loop. Errors become ours, except ClientErrors whose code is in ``inspect``:
        those propagate for the caller to look into (condition failures)."""
        try:
            return await clients.call(getattr(self._client, operation), executor=self._executor, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = clients.error_code(exc)
            if code in inspect:
                raise
            if code == "ResourceNotFoundException":
                raise errors.NotFound(f"table {self._table} does not exist (run `workset-monitor init`)") from exc
            raise clients.translate(exc, what=what) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise clients.translate(exc, what=what) from exc


def _update_expression(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """SET what changed or appeared, REMOVE what disappeared (set to None, or gone from ``new``); names and values are
    always placeholders."""
    sets, removes = [], []
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    new = new | dict.fromkeys(old.keys() - new.keys())
    for index, (name, value) in enumerate(new.items()):
        if value == old.get(name):
            continue
        names[f"#a{index}"] = name
        if value is None:
            removes.append(f"#a{index}")
        else:
            sets.append(f"#a{index} = :v{index}")
            values[f":v{index}"] = codec.encode(value)
    parts = []
    if sets:
        parts.append("SET " + ", ".join(sets))
    if removes:
        parts.append("REMOVE " + ", ".join(removes))
    return {
        "UpdateExpression": " ".join(parts),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def _outcome_updates(outcomes: Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, Any], str]:
    """Channel outcomes as parts of an update (``record_delivery``'s attributes): names, values, and the ``SET``
    clauses, each after a comma."""
    names = {f"#o{i}": f"notify_{channel}" for i, channel in enumerate(outcomes or {})}
    values = {f":o{i}": {"S": outcome} for i, outcome in enumerate((outcomes or {}).values())}
    return names, values, "".join(f", #o{i} = :o{i}" for i in range(len(names)))


def _reasons(exc: botocore.exceptions.ClientError) -> list[dict[str, Any]]:
    return list(exc.response.get("CancellationReasons", []))


def _cancelled_by_condition(exc: botocore.exceptions.ClientError) -> bool:
    if clients.error_code(exc) != "TransactionCanceledException":
        return False
    return any(r.get("Code") == "ConditionalCheckFailed" for r in _reasons(exc))


def _conflict(
    exc: botocore.exceptions.ClientError, decision: Decision, fence_token: str | None, *, table: str
) -> errors.Conflict:
    ws_id = decision.before.workset_id
    old = (_reasons(exc) or [{}])[0].get("Item")
    if old is None:
        return errors.Conflict(f"{ws_id} does not exist or changed concurrently")
    current = codec.workset_from_item(old, table=table)
    if fence_token is not None and (current.lease is None or current.lease.token != fence_token):
        return errors.LeaseLost(f"{ws_id}: our lease is gone (now {current.state.value}, epoch {current.epoch})")
    return errors.Conflict(
        f"{ws_id} changed concurrently: expected {decision.before.state.value} v{decision.before.version}, "
        f"found {current.state.value} v{current.version}"
    )
