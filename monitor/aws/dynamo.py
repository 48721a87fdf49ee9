"""The workset store on DynamoDB (implements ``ports.Store``).

Every change is one ``TransactWriteItems``: an ``Update`` of the control item conditioned on the state and
version the caller read (plus the lease token for holder writes), and a ``Put`` of the audit event conditioned on
its sequence number being new. The update sets and removes exactly the attributes that changed, so it never
wipes an attribute another writer owns (a heartbeat's counter, say).

The ``state-priority-index`` only nominates; every decision is made by a conditional write on the base table.
All reads that return many items follow ``LastEvaluatedKey`` to the end.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import heapq
from collections.abc import AsyncGenerator, Collection, Sequence
from typing import Any

import botocore.exceptions

from monitor import errors, logs
from monitor.aws import clients, codec
from monitor.aws.outbox_rows import OutboxRows
from monitor.aws.table_io import (
    _BATCH_GET_MAX,
    _CANCELLED,
    _cancelled_by_condition,
    _conflict,
    _reasons,
    _update_expression,
)
from monitor.model import (
    FINISHED_STATES,
    Due,
    Event,
    Fleet,
    Pause,
    Presence,
    Priority,
    Role,
    State,
    Stats,
    Workset,
    WorksetId,
)
from monitor.selection import LIST_ORDER, Position
from monitor.states import Decision, due, gsi_sort_key

log = logs.get("monitor.store")


def _counted_on(after: Workset, before: Workset, cap: int | None) -> Workset:
    """``after`` with the fleet control item that counts it: a claim without a cap picks its shard, with a cap the
    counter item (the cap's condition is on it); leaving in_progress clears it."""
    if after.state is State.IN_PROGRESS and before.state is not State.IN_PROGRESS:
        return dataclasses.replace(after, fleet_slot=None if cap is not None else codec.fleet_shard(after.workset_id))
    if after.state is not State.IN_PROGRESS and after.fleet_slot is not None:
        return dataclasses.replace(after, fleet_slot=None)
    return after


def _same_but_layout(item: codec.Item, before: Workset, counted: bool) -> bool:
    """Whether a refused write's item is the finished workset it expected, stored in the other layout."""
    return (
        before.state in FINISHED_STATES
        and item.get("state", {}).get("S") == before.state.value
        and item.get("version", {}).get("N") == str(before.version)
        and ("done_pk" in item) != counted
    )


_FROM = {state: set(LIST_ORDER[i:]) for i, state in enumerate(LIST_ORDER)}  # a state and those after it


class DynamoStore(OutboxRows):
    """The store; its plumbing is ``TableIO``'s, its outbox rows ``OutboxRows``'."""

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
            *self._done_updates(None, decision.after),
        ]
        try:
            await self._call("transact_write_items", what="registering", inspect=_CANCELLED, TransactItems=items)
        except botocore.exceptions.ClientError as exc:
            if _cancelled_by_condition(exc):
                return False
            raise clients.translate(exc, what=f"registering {decision.after.workset_id}") from exc
        self._rang(decision.event, decision.after)
        return True

    async def commit(
        self,
        decision: Decision,
        *,
        fence_token: str | None = None,
        expect_heartbeats: int | None = None,
        fleet_cap: int | None = None,
    ) -> Workset:
        return await self._commit(
            decision, fence_token=fence_token, expect_heartbeats=expect_heartbeats, fleet_cap=fleet_cap
        )

    async def _commit(
        self,
        decision: Decision,
        *,
        fence_token: str | None,
        expect_heartbeats: int | None,
        fleet_cap: int | None,
        stored_counted: bool | None = None,
    ) -> Workset:
        before = decision.before
        after = _counted_on(decision.after, before, fleet_cap)
        # A finished workset is stored in one of two layouts (``codec``); the write says which it expects, and
        # learns the other from the item if it was wrong (one written before the finished index, or moved by init).
        was_counted = codec.counted(before) if stored_counted is None else stored_counted
        old = codec.workset_fields(before, in_finished_index=was_counted)
        if before.state is State.IN_PROGRESS and after.state is not State.IN_PROGRESS:
            old[codec.FLEET_SLOT] = -1  # remove it whatever our copy says (one read from the index does not show it)
        update = _update_expression(old, codec.workset_fields(after))
        names, values = update["ExpressionAttributeNames"], update["ExpressionAttributeValues"]
        condition = "#state = :expect_state AND #version = :expect_version"
        names |= {"#state": "state", "#version": "version"}
        values |= {":expect_state": {"S": before.state.value}, ":expect_version": {"N": str(before.version)}}
        if before.state in FINISHED_STATES:
            condition += f" AND attribute_{'' if was_counted else 'not_'}exists(#done_pk)"
            names["#done_pk"] = "done_pk"
        if fence_token is not None:
            condition += " AND #lease_token = :fence_token"
            names["#lease_token"] = "lease_token"  # noqa: S105 - an attribute name, not a secret
            values[":fence_token"] = {"S": fence_token}
        if expect_heartbeats is not None:
            condition += " AND #hb_count = :expect_hb"
            names["#hb_count"] = "hb_count"
            values[":expect_hb"] = {"N": str(expect_heartbeats)}
        control = {
            "Update": {
                "TableName": self._table,
                "Key": codec.control_key(before.workset_id),
                "ConditionExpression": condition,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                **update,
            }
        }
        items = [control, self._event_put(decision.event)]
        fleet = self._fleet_update(before, after, fleet_cap)
        if fleet is not None:
            items.append(fleet)
        items += self._done_updates(before if was_counted else None, after)
        try:
            await self._call("transact_write_items", what="committing", inspect=_CANCELLED, TransactItems=items)
        except botocore.exceptions.ClientError as exc:
            if not _cancelled_by_condition(exc):
                raise clients.translate(exc, what=f"updating {before.workset_id}") from exc
            reasons = _reasons(exc)
            stored = reasons[0].get("Item") if reasons else None
            if stored_counted is None and stored is not None and _same_but_layout(stored, before, was_counted):
                finished_at = stored.get("finished_at_ms", {}).get("N")
                again = dataclasses.replace(
                    decision,
                    before=dataclasses.replace(before, finished_at_ms=int(finished_at) if finished_at else None),
                )
                return await self._commit(
                    again,
                    fence_token=fence_token,
                    expect_heartbeats=expect_heartbeats,
                    fleet_cap=fleet_cap,
                    stored_counted=not was_counted,
                )
            if len(reasons) > 2 and reasons[2].get("Code") == "ConditionalCheckFailed":
                paused = codec.pause_from_item(reasons[2].get("Item") or {}, table=self._table)
                if paused is not None:
                    raise errors.Paused(f"intake is paused fleet-wide: {paused.reason}") from exc
                raise errors.FleetFull(
                    f"the fleet already runs {fleet_cap} worksets (run.max_fleet_concurrent)"
                ) from exc
            raise _conflict(exc, decision, fence_token, table=self._table) from exc
        self._rang(decision.event, after)
        return after

    def _done_updates(self, before: Workset | None, after: Workset) -> list[dict[str, Any]]:
        """The finished counters' share of a write: -1 on the counter ``before`` was counted in (when it was), +1 on
        the one ``after`` is counted in (when it is); nothing when both are the same counter."""
        old = codec.done_counter_sk(before) if before is not None else None
        new = codec.done_counter_sk(after) if codec.counted(after) else None
        if old == new:
            return []
        return [codec.counter_add(self._table, sk, delta) for sk, delta in ((old, -1), (new, 1)) if sk is not None]

    def _rang(self, event: Event, ws: Workset) -> None:
        if event.pending and self._on_pending is not None:
            self._on_pending(event, ws)

    def _fleet_update(self, before: Workset, after: Workset, cap: int | None) -> dict[str, Any] | None:
        """Keep the fleet's counts exact: ``running`` +1 entering in_progress (capped), -1 leaving it, on the item
        the workset is counted on (its ``fleet_slot``); ``retry_seq`` +1 entering retrying (which only happens on
        leaving in_progress, so it costs no extra item)."""
        entering = after.state is State.IN_PROGRESS and before.state is not State.IN_PROGRESS
        leaving = before.state is State.IN_PROGRESS and after.state is not State.IN_PROGRESS
        retrying = after.state is State.RETRYING and before.state is not State.RETRYING
        adds, values = [], {}
        if entering or leaving:
            adds.append("running :delta")
            values[":delta"] = {"N": "1" if entering else "-1"}
        if retrying:
            adds.append("retry_seq :one")
            values[":one"] = {"N": "1"}
        if not adds:
            return None
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": codec.fleet_slot_key(after.fleet_slot if entering else before.fleet_slot),
            "UpdateExpression": "ADD " + ", ".join(adds),
            "ExpressionAttributeValues": values,
        }
        if entering:  # a claim: not while intake is paused, and within the fleet cap; the item says which refused
            condition = "attribute_not_exists(paused_at_ms)"
            if cap is not None:
                condition += " AND (attribute_not_exists(running) OR running < :cap)"
                update["ExpressionAttributeValues"][":cap"] = {"N": str(cap)}
            update["ConditionExpression"] = condition
            update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return {"Update": update}

    async def heartbeat(
        self, workset_id: WorksetId, *, token: str, now_ms: int, expires_at_ms: int, step: str | None = None
    ) -> int | None:
        values: dict[str, Any] = {
            ":now": {"N": str(now_ms)},
            ":expires": {"N": str(expires_at_ms)},
            ":one": {"N": "1"},
            ":token": {"S": token},
            ":in_progress": {"S": State.IN_PROGRESS.value},
        }
        update = "SET heartbeat_at_ms = :now, lease_expires_at_ms = :expires"
        if step is not None:
            update += ", current_step = :step"
            values[":step"] = {"S": step}
        update += " ADD hb_count :one" + ("" if step is not None else " REMOVE current_step")
        try:
            response = await self._call(
                "update_item",
                what=f"heartbeating {workset_id}",
                inspect=("ConditionalCheckFailedException",),
                TableName=self._table,
                Key=codec.control_key(workset_id),
                UpdateExpression=update,
                ConditionExpression="lease_token = :token AND #state = :in_progress",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW",
            )
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise clients.translate(exc, what=f"heartbeating {workset_id}") from exc
        return int(response["Attributes"]["hb_count"]["N"])

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
        return codec.workset_from_item(item, table=self._table) if item else None

    async def event(self, workset_id: WorksetId, seq: int) -> Event | None:
        response = await self._call(
            "get_item",
            what=f"reading event {seq} of {workset_id}",
            TableName=self._table,
            Key={"pk": {"S": workset_id}, "sk": {"S": codec.event_sk(seq)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return codec.event_from_item(item, table=self._table) if item else None

    async def due(self, *, now_ms: int, limit: int, retrying: bool = True) -> Due:
        """Claimable worksets whose time has come, in claim order; read from the index (may be stale)."""
        ready, _, _ = await self._due_in(State.READY, now_ms=now_ms, limit=limit)
        if not retrying:
            return Due(ready)
        waiting, next_ms, known = await self._due_in(State.RETRYING, now_ms=now_ms, limit=limit)
        merged = list(heapq.merge(ready, waiting, key=gsi_sort_key))[:limit]
        return Due(merged, retrying_read=True, next_retry_ms=next_ms, next_retry_known=known)

    async def _due_in(self, state: State, *, now_ms: int, limit: int) -> tuple[list[Workset], int | None, bool]:
        """Due items of one state; when the earliest of the others becomes due; whether every priority was read.

        A ready workset is due unless scheduled for later (``states.due``): any other one's available_at only orders
        the queue, and may be ahead of our clock when the host that wrote it (an operator's) runs fast; scheduled
        ones are skipped, not a reason to stop reading. A retrying one is due once its backoff has passed.

        Within a priority the index is sorted by available_at, so the first item that is not yet due ends that
        priority: the next query starts at the next priority instead of reading on."""
        found: list[Workset] = []
        next_ms: int | None = None
        rank = 0
        while rank < len(Priority) and len(found) < limit:
            pages = self._pages(
                "query",
                what=f"finding due {state.value} worksets",
                limit=max(limit, 10),
                TableName=self._table,
                IndexName=codec.GSI_NAME,
                KeyConditionExpression="#state = :state AND gsi_sk >= :from",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":state": {"S": state.value}, ":from": {"S": f"{rank}#"}},
            )
            next_rank = len(Priority)
            async with contextlib.aclosing(pages):
                async for item in pages:
                    ws = self._readable(codec.workset_from_item, item)
                    if ws is None:
                        continue
                    if state is State.READY and not due(ws, now_ms):
                        continue  # scheduled for later: the ready ones behind it may be due (their clocks differ)
                    if state is State.RETRYING and ws.available_at_ms > now_ms:
                        next_rank = ws.priority.rank + 1
                        next_ms = ws.available_at_ms if next_ms is None else min(next_ms, ws.available_at_ms)
                        break
                    found.append(ws)
                    if len(found) >= limit:
                        break
            rank = next_rank
        return found, next_ms, rank >= len(Priority) and len(found) < limit

    async def running(self) -> list[Workset]:
        """Every in_progress workset, read consistently from the table (the sweeper's view)."""
        ids = [WorksetId(item["pk"]["S"]) async for item in self._index(State.IN_PROGRESS, None, projection="pk")]
        found = await self._batch_get(ids)
        return [ws for ws in (found.get(i) for i in ids) if ws is not None and ws.state is State.IN_PROGRESS]

    async def fleet(self) -> Fleet:
        low, high = codec.FLEET_CONTROL_RANGE
        response = await self._call(
            "query",
            what="reading the fleet counter",
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues={":pk": codec.FLEET_KEY["pk"], ":low": {"S": low}, ":high": {"S": high}},
            ConsistentRead=True,
        )
        return codec.fleet_from_items(response.get("Items", []), table=self._table)

    async def take_chores(self, *, token: str, owner: str, now_ms: int, expect: Role | None) -> None:
        if expect is None:
            condition, values = "attribute_not_exists(#token)", {}
        else:
            condition = "#token = :old AND hb_count = :hb"
            values = {":old": {"S": expect.token}, ":hb": {"N": str(expect.hb_count)}}
        await self._role_write(
            "taking the chores role",
            UpdateExpression="SET #token = :token, #owner = :owner, hb_count = :zero, since_ms = :now, "
            "renewed_at_ms = :now",
            ConditionExpression=condition,
            ExpressionAttributeNames={"#token": "token", "#owner": "owner"},
            ExpressionAttributeValues={
                ":token": {"S": token},
                ":owner": {"S": owner},
                ":zero": {"N": "0"},
                ":now": {"N": str(now_ms)},
                **values,
            },
        )

    async def renew_chores(self, *, token: str, now_ms: int) -> None:
        await self._role_write(
            "renewing the chores role",
            UpdateExpression="SET renewed_at_ms = :now ADD hb_count :one",
            ConditionExpression="#token = :token",
            ExpressionAttributeNames={"#token": "token"},
            ExpressionAttributeValues={":token": {"S": token}, ":now": {"N": str(now_ms)}, ":one": {"N": "1"}},
        )

    async def release_chores(self, *, token: str) -> None:
        try:
            await self._call(
                "delete_item",
                what="releasing the chores role",
                inspect=("ConditionalCheckFailedException",),
                TableName=self._table,
                Key=codec.CHORES_KEY,
                ConditionExpression="#token = :token",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={":token": {"S": token}},
            )
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) != "ConditionalCheckFailedException":
                raise clients.translate(exc, what="releasing the chores role") from exc

    async def _role_write(self, what: str, **update: Any) -> None:
        """One conditional UpdateItem of the role item; ``Conflict`` when its condition fails."""
        try:
            await self._call(
                "update_item",
                what=what,
                inspect=("ConditionalCheckFailedException",),
                TableName=self._table,
                Key=codec.CHORES_KEY,
                **update,
            )
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) == "ConditionalCheckFailedException":
                raise errors.Conflict(f"{what}: the role is not as this daemon last saw it") from exc
            raise clients.translate(exc, what=what) from exc

    async def pause(self, *, reason: str, by: str, now_ms: int, event: Event) -> Pause | None:
        """Pause intake fleet-wide and record ``event`` (its ``paused`` event, in the outbox if a channel wants it)
        in one transaction; the pause already in force (unchanged, nothing written) if there is one, else None."""
        done = await self._fleet_event(
            "SET paused_at_ms = :at, paused_by = :by, paused_reason = :reason",
            {":at": {"N": str(now_ms)}, ":by": {"S": by}, ":reason": {"S": reason}},
            condition=("attribute_not_exists(paused_at_ms)", {}),
            event=event,
            what="pausing intake",
        )
        return None if done else (await self.fleet()).paused

    async def resume(self, *, event: Event) -> Pause | None:
        """End the pause and record ``event`` in one transaction; the pause it ended, or None if intake was not
        paused (then nothing is written). One consistent read of the pause first: a transaction returns no old
        values."""
        paused = (await self.fleet()).paused
        if paused is None:
            return None
        done = await self._fleet_event(
            "REMOVE paused_at_ms, paused_by, paused_reason",
            {},
            condition=("paused_at_ms = :at", {":at": {"N": str(paused.at_ms)}}),
            event=event,
            what="resuming intake",
        )
        return paused if done else None

    async def _fleet_event(
        self, change: str, values: codec.Item, *, condition: tuple[str, codec.Item], event: Event, what: str
    ) -> bool:
        """Apply ``change`` to every fleet control item that claims write (the counter and its shards: each claim's
        own transaction sees it), the counter's under ``condition``, with ``event`` beside them; False if that
        condition failed (nothing written)."""
        expression, condition_values = condition
        items: list[dict[str, Any]] = []
        for key in codec.FLEET_CONTROL_KEYS:
            update: dict[str, Any] = {"TableName": self._table, "Key": key, "UpdateExpression": change}
            used = values
            if key == codec.FLEET_KEY:
                update["ConditionExpression"] = expression
                used = values | condition_values
            if used:
                update["ExpressionAttributeValues"] = used
            items.append({"Update": update})
        items.append(self._event_put(event))
        try:
            await self._call("transact_write_items", what=what, inspect=_CANCELLED, TransactItems=items)
        except botocore.exceptions.ClientError as exc:
            if not _cancelled_by_condition(exc):
                raise clients.translate(exc, what=what) from exc
            if _reasons(exc)[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise errors.Conflict(f"{what}: another fleet event has the same time; try again") from exc
        return True

    async def put_presence(self, presence: Presence) -> None:
        await self._call(
            "put_item", what="writing this daemon's presence", TableName=self._table, Item=codec.presence_item(presence)
        )

    async def delete_presence(self, owner: str) -> None:
        await self._call(
            "delete_item", what="removing a presence item", TableName=self._table, Key=codec.presence_key(owner)
        )

    async def presences(self) -> builtins.list[Presence]:
        found: builtins.list[Presence] = []
        async for item in self._pages(
            "query",
            what="listing the daemons' presence",
            TableName=self._table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": codec.PRESENCE_PK}},
            ConsistentRead=True,
        ):
            if (presence := self._readable(codec.presence_from_item, item)) is not None:
                found.append(presence)
        return found

    async def identity(self) -> str:
        table = (await self._call("describe_table", what="describing the table", TableName=self._table))["Table"]
        created = table.get("CreationDateTime")  # and TableId, unique to each table DynamoDB ever created
        return (
            f"{table.get('TableArn', self._table)} {table.get('TableId', '')} {created.isoformat() if created else ''}"
        )

    async def locations(self, workset_ids: Sequence[WorksetId] | None = None) -> dict[WorksetId, str]:
        """``bucket/prefix`` per workset: from the index for all of them (keys and two attributes, every page), or
        one consistent BatchGetItem per 100 given ids."""
        found: dict[WorksetId, str] = {}
        if workset_ids is None:
            done = await self._done_counts()
            for state in LIST_ORDER:
                async for item in self._entries(
                    state,
                    None,
                    projection="pk, sk, #bucket, #prefix",
                    names={"#bucket": "bucket", "#prefix": "prefix"},
                    done=done,
                ):
                    if (where := self._readable(codec.location, item)) is not None:
                        found[WorksetId(item["pk"]["S"])] = where
            return found
        for ws in (await self._batch_get(workset_ids)).values():
            found[ws.workset_id] = f"{ws.bucket}/{ws.prefix}"
        return found

    async def history(self, workset_id: WorksetId) -> list[Event]:
        pages = self._pages(
            "query",
            what=f"reading the history of {workset_id}",
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :evt)",
            ExpressionAttributeValues={":pk": {"S": workset_id}, ":evt": {"S": codec.EVENT_SK_PREFIX}},
            ConsistentRead=True,
        )
        return [e async for item in pages if (e := self._readable(codec.event_from_item, item)) is not None]

    async def list(
        self, *, state: State | None = None, priority: Priority | None = None, limit: int | None = None
    ) -> list[Workset]:
        ids: list[WorksetId] = []
        done = await self._done_counts() if state is None or state in FINISHED_STATES else {}
        for wanted in (state,) if state else LIST_ORDER:
            pages = self._entries(wanted, priority, projection="pk", done=done)
            async with contextlib.aclosing(pages):
                async for item in pages:
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

    async def pages(
        self,
        *,
        state: State | None = None,
        priority: Priority | None = None,
        after: Position | None = None,
        size: int = _BATCH_GET_MAX,
    ) -> AsyncGenerator[builtins.list[tuple[Position, Workset]], None]:
        order = [s for s in ((state,) if state else LIST_ORDER) if after is None or s in _FROM[after.state]]
        done = await self._done_counts() if any(s in FINISHED_STATES for s in order) else {}
        for wanted in order:
            start = after.sort_key if after is not None and wanted is after.state else None
            keys: builtins.list[tuple[WorksetId, str]] = []
            entries = self._entries(wanted, priority, projection="pk, gsi_sk", after=start, done=done)
            async with contextlib.aclosing(entries):
                async for item in entries:
                    sort_key = codec.listing_key(item)
                    if start is not None and sort_key <= start:
                        continue
                    keys.append((WorksetId(item["pk"]["S"]), sort_key))
                    if len(keys) == size:
                        yield await self._page(wanted, priority, keys)
                        keys = []
            if keys:
                yield await self._page(wanted, priority, keys)

    async def _page(
        self, state: State, priority: Priority | None, keys: builtins.list[tuple[WorksetId, str]]
    ) -> builtins.list[tuple[Position, Workset]]:
        """The worksets of one page of index entries, as the table has them now, if they still match."""
        found = await self._batch_get([workset_id for workset_id, _ in keys])
        return [
            (Position.at(state, sort_key), ws)
            for workset_id, sort_key in keys
            if (ws := found.get(workset_id)) is not None and ws.state is state and priority in (None, ws.priority)
        ]

    async def stats(self, *, now_ms: int, states: Collection[State] | None = None) -> Stats:
        counts: dict[State, dict[Priority, int]] = {}
        by_rank = {p.rank: p for p in Priority}
        oldest_ready_ms: int | None = None
        stalest: dict[State, int] = {}
        wanted = [s for s in State if states is None or s in states]
        finished = await self._done_counts() if any(s in FINISHED_STATES for s in wanted) else {}
        for state in wanted:
            per = dict.fromkeys(Priority, 0)
            for (counted_state, _, priority), n in finished.items():
                if counted_state is state:
                    per[priority] += n
            # a finished one written before the finished index is still in the state index: counted from there
            async for item in self._index(state, None, projection="pk, sk, gsi_sk, updated_at_ms"):
                if (entry := self._readable(codec.index_entry, item)) is None:
                    continue
                rank, available_at, updated = entry
                per[by_rank[rank]] += 1
                if state is State.READY:
                    oldest_ready_ms = available_at if oldest_ready_ms is None else min(oldest_ready_ms, available_at)
                updated = now_ms if updated is None else updated
                stalest[state] = min(stalest.get(state, updated), updated)
            counts[state] = per
        age = None if oldest_ready_ms is None else max(now_ms - oldest_ready_ms, 0) / 1000
        ages = {state: max(now_ms - at, 0) / 1000 for state, at in stalest.items()}
        return Stats(counts=counts, oldest_ready_age_s=age, oldest_change_age_s=ages)
