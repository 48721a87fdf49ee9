"""The workset store on DynamoDB (implements ``ports.Store``).

Every change is one ``TransactWriteItems``: an ``Update`` of the control item conditioned on the state and
version the caller read (plus the lease token for holder writes), and a ``Put`` of the audit event conditioned on
its sequence number being new. The update sets and removes exactly the attributes that changed, so it never
wipes an attribute another writer owns (a heartbeat's counter, say).

The ``state-priority-index`` only nominates; every decision is made by a conditional write on the base table.
All reads that return many items follow ``LastEvaluatedKey`` to the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import botocore.exceptions

from monitor import errors
from monitor.aws import clients, codec
from monitor.model import Event, Priority, State, Stats, Workset, WorksetId
from monitor.states import Decision

LIST_ORDER = (
    State.READY,
    State.IN_PROGRESS,
    State.RETRYING,
    State.ERROR,
    State.CANCELLED,
    State.COMPLETE,
    State.IGNORED,
)
_BATCH_GET_MAX = 100


class DynamoStore:
    def __init__(self, client: Any, table: str, *, page_size: int | None = None) -> None:
        self._client = client
        self._table = table
        self._page_size = page_size  # None: DynamoDB's own 1 MB pages; tests set it small to force paging

    # --- writes ----------------------------------------------------------------------------------------------

    async def register(self, decision: Decision) -> bool:
        items = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": codec.workset_item(decision.after),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            self._event_put(decision.event),
        ]
        try:
            await self._call("transact_write_items", what="registering", TransactItems=items)
        except botocore.exceptions.ClientError as exc:
            if _cancelled_by_condition(exc):
                return False
            raise clients.translate(exc, what=f"registering {decision.after.workset_id}") from exc
        return True

    async def commit(self, decision: Decision, *, fence_token: str | None = None) -> Workset:
        before, after = decision.before, decision.after
        update = _update_expression(codec.workset_fields(before), codec.workset_fields(after))
        condition = "#state = :expect_state AND #version = :expect_version"
        update["ExpressionAttributeNames"] |= {"#state": "state", "#version": "version"}
        update["ExpressionAttributeValues"] |= {
            ":expect_state": {"S": before.state.value},
            ":expect_version": {"N": str(before.version)},
        }
        if fence_token is not None:
            condition += " AND #lease_token = :fence_token"
            update["ExpressionAttributeNames"]["#lease_token"] = "lease_token"  # noqa: S105 - a name, not a secret
            update["ExpressionAttributeValues"][":fence_token"] = {"S": fence_token}
        control = {
            "Update": {
                "TableName": self._table,
                "Key": codec.control_key(before.workset_id),
                "ConditionExpression": condition,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                **update,
            }
        }
        try:
            await self._call(
                "transact_write_items",
                what="committing",
                TransactItems=[control, self._event_put(decision.event)],
            )
        except botocore.exceptions.ClientError as exc:
            if not _cancelled_by_condition(exc):
                raise clients.translate(exc, what=f"updating {before.workset_id}") from exc
            raise _conflict(exc, decision, fence_token) from exc
        return after

    def _event_put(self, event: Event) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": codec.event_item(event),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    # --- reads -----------------------------------------------------------------------------------------------

    async def get(self, workset_id: WorksetId) -> Workset | None:
        response = await self._call(
            "get_item",
            what=f"reading {workset_id}",
            TableName=self._table,
            Key=codec.control_key(workset_id),
            ConsistentRead=True,
        )
        item = response.get("Item")
        return codec.workset_from_item(item) if item else None

    async def history(self, workset_id: WorksetId) -> list[Event]:
        pages = self._pages(
            "query",
            what=f"reading the history of {workset_id}",
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :evt)",
            ExpressionAttributeValues={":pk": {"S": workset_id}, ":evt": {"S": codec.EVENT_SK_PREFIX}},
            ConsistentRead=True,
        )
        return [codec.event_from_item(item) async for item in pages]

    async def list(
        self, *, state: State | None = None, priority: Priority | None = None, limit: int | None = None
    ) -> list[Workset]:
        ids: list[WorksetId] = []
        for wanted in (state,) if state else LIST_ORDER:
            async for item in self._index(wanted, priority):
                ids.append(WorksetId(item["pk"]["S"]))
                if limit is not None and len(ids) >= limit:
                    break
            if limit is not None and len(ids) >= limit:
                break
        found = await self._batch_get(ids)
        # The index is eventually consistent: show what the table says now, and only what still matches.
        return [
            ws
            for ws in (found.get(i) for i in ids)
            if ws is not None and (state is None or ws.state is state) and (priority in (None, ws.priority))
        ]

    async def stats(self, *, now_ms: int) -> Stats:
        counts: dict[State, dict[Priority, int]] = {}
        by_rank = {p.rank: p for p in Priority}
        oldest_ready_ms: int | None = None
        for state in State:
            per = dict.fromkeys(Priority, 0)
            async for item in self._index(state, None, projection="gsi_sk"):
                rank, available_at, _ = item["gsi_sk"]["S"].split("#", 2)
                per[by_rank[int(rank)]] += 1
                if state is State.READY:
                    at = int(available_at)
                    oldest_ready_ms = at if oldest_ready_ms is None else min(oldest_ready_ms, at)
            counts[state] = per
        age = None if oldest_ready_ms is None else max(now_ms - oldest_ready_ms, 0) / 1000
        return Stats(counts=counts, oldest_ready_age_s=age)

    def _index(
        self, state: State, priority: Priority | None, *, projection: str | None = None
    ) -> AsyncIterator[codec.Item]:
        condition = "#state = :state"
        values: dict[str, Any] = {":state": {"S": state.value}}
        if priority is not None:
            condition += " AND begins_with(gsi_sk, :rank)"
            values[":rank"] = {"S": f"{priority.rank}#"}
        extra = {"ProjectionExpression": projection} if projection else {}
        return self._pages(
            "query",
            what=f"listing {state.value} worksets",
            TableName=self._table,
            IndexName=codec.GSI_NAME,
            KeyConditionExpression=condition,
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=values,
            **extra,
        )

    async def _batch_get(self, ids: Sequence[WorksetId]) -> dict[WorksetId, Workset]:
        found: dict[WorksetId, Workset] = {}
        for start in range(0, len(ids), _BATCH_GET_MAX):
            keys = [codec.control_key(i) for i in dict.fromkeys(ids[start : start + _BATCH_GET_MAX])]
            request = {self._table: {"Keys": keys, "ConsistentRead": True}}
            delay_s = 0.05
            while request:
                response = await self._call("batch_get_item", what="reading worksets", RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    ws = codec.workset_from_item(item)
                    found[ws.workset_id] = ws
                request = response.get("UnprocessedKeys") or {}
                if request:  # throttled: DynamoDB asks us to come back for the rest
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 2.0)
        return found

    async def _pages(self, operation: str, *, what: str, **kwargs: Any) -> AsyncIterator[codec.Item]:
        if self._page_size is not None:
            kwargs["Limit"] = self._page_size
        while True:
            response = await self._call(operation, what=what, **kwargs)
            for item in response.get("Items", []):
                yield item
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    async def _call(self, operation: str, *, what: str, **kwargs: Any) -> Any:
        """One AWS call off the event loop; ClientErrors propagate for the caller to inspect."""
        try:
            return await clients.call(getattr(self._client, operation), **kwargs)
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) == "ResourceNotFoundException":
                raise errors.NotFound(f"table {self._table} does not exist (run `workset-monitor init`)") from exc
            raise
        except botocore.exceptions.BotoCoreError as exc:
            raise clients.translate(exc, what=what) from exc


def _update_expression(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """SET what changed or appeared, REMOVE what disappeared; names and values are always placeholders."""
    sets, removes = [], []
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
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


def _reasons(exc: botocore.exceptions.ClientError) -> list[dict[str, Any]]:
    return list(exc.response.get("CancellationReasons", []))


def _cancelled_by_condition(exc: botocore.exceptions.ClientError) -> bool:
    if clients.error_code(exc) != "TransactionCanceledException":
        return False
    return any(r.get("Code") == "ConditionalCheckFailed" for r in _reasons(exc))


def _conflict(exc: botocore.exceptions.ClientError, decision: Decision, fence_token: str | None) -> errors.Conflict:
    ws_id = decision.before.workset_id
    old = (_reasons(exc) or [{}])[0].get("Item")
    if old is None:
        return errors.Conflict(f"{ws_id} does not exist or changed concurrently")
    current = codec.workset_from_item(old)
    if fence_token is not None and (current.lease is None or current.lease.token != fence_token):
        return errors.LeaseLost(f"{ws_id}: our lease is gone (now {current.state.value}, epoch {current.epoch})")
    return errors.Conflict(
        f"{ws_id} changed concurrently: expected {decision.before.state.value} v{decision.before.version}, "
        f"found {current.state.value} v{current.version}"
    )
