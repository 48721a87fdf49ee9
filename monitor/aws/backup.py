"""``export`` and ``import``: the whole table as JSON lines, for backups, restores and moves between tables.

The first line is a header (format, version, table, time); every other line is one item in DynamoDB's own JSON
(``{"item": {"pk": {"S": ...}, ...}}``), so nothing is lost or converted. Import validates the whole file before it
writes anything, then writes idempotently: an event is only added if missing; a workset only if missing or older
(lower ``version``) than the one in the file, unless ``force``. The fleet counter and the finished counters are never
copied nor set: each workset is written in one transaction with the counters' changes (+1 when it enters in_progress,
-1 when it leaves it; +1 on the finished counter it is counted in, -1 on the one the copy it replaces was counted in),
conditioned on the version read, exactly as daemons write theirs, so the counters stay exact while daemons work the
same table. Its retry sequence is advanced, so that running daemons read the retrying worksets again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import botocore.exceptions

from monitor import errors
from monitor.aws import clients, codec
from monitor.model import Event, EventType, State

FORMAT, VERSION = "workset-monitor-export", 1
_TRIES = 5  # reads and conditional writes of one workset that a daemon keeps changing meanwhile


@dataclass
class ImportReport:
    worksets_written: int = 0
    worksets_kept: int = 0  # the table's copy was as new or newer
    events_written: int = 0
    events_kept: int = 0
    in_progress: int = 0


def export(client: Any, table: str, out: TextIO, *, now_iso: str) -> int:
    """Write every item of ``table`` to ``out``; returns how many items."""
    out.write(json.dumps({"format": FORMAT, "version": VERSION, "table": table, "exported_at": now_iso}) + "\n")
    count = 0
    for item in _scan(client, table):
        if item["pk"]["S"] == codec.PRESENCE_PK:  # a running daemon's, rewritten every interval: not data
            continue
        out.write(json.dumps({"item": item}, sort_keys=True) + "\n")
        count += 1
    return count


def read(lines: Iterable[str], *, source: str) -> list[dict[str, Any]]:
    """Parse and check an export completely; a problem is one error naming the file and line."""
    items = []
    header = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise errors.InvalidInput(f"{source} line {number}: not JSON ({exc.msg})") from None
        if number == 1:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise errors.InvalidInput(f"{source} line 1: not a workset-monitor export (no header)")
            if data.get("version") != VERSION:
                raise errors.InvalidInput(f"{source} line 1: export format version {data.get('version')} unsupported")
            header = True
            continue
        item = data.get("item") if isinstance(data, dict) else None
        if not isinstance(item, dict) or "S" not in item.get("pk", {}) or "S" not in item.get("sk", {}):
            raise errors.InvalidInput(f'{source} line {number}: expected {{"item": {{"pk": ..., "sk": ...}}}}')
        try:
            if item["sk"]["S"] == codec.CONTROL_SK:
                codec.workset_from_item(item, table=source)
            elif item["sk"]["S"].startswith(codec.EVENT_SK_PREFIX):
                codec.event_from_item(item, table=source)
        except errors.CorruptItem as exc:
            problem = f"attribute {exc.attribute} {exc.problem}"
            raise errors.InvalidInput(f"{source} line {number}: not a valid workset or event ({problem})") from None
        items.append(item)
    if not header:
        raise errors.InvalidInput(f"{source}: empty: not a workset-monitor export (no header line)")
    return items


def load(
    client: Any,
    table: str,
    items: list[dict[str, Any]],
    *,
    force: bool = False,
    actor: str = "operator",
    source: str = "an export",
    now_ms: int | None = None,
) -> ImportReport:
    """Write ``items`` (``read``'s); with ``force``, a workset whose table copy is as new or newer is replaced by the
    file's all the same, as a new version on top of the table's, recorded by an ``imported`` event (``actor``,
    ``source``): the version never goes back, so the trail stays contiguous and the workset can be acted on."""
    report = ImportReport()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    for item in items:
        sk = item["sk"]["S"]
        if sk == codec.FLEET_COUNTER_SK or sk.startswith((codec.DONE_PREFIX, codec.FLEET_SHARD_PREFIX)):
            continue  # the table's own counters move with each workset written (below)
        if sk == codec.CONTROL_SK:
            written = _put_workset(client, table, item, force=force, audit=(actor, source, now_ms))
            report.worksets_written += written
            report.worksets_kept += not written
            continue
        condition = {} if force else {"ConditionExpression": "attribute_not_exists(pk)"}
        try:
            client.put_item(TableName=table, Item=item, **condition)
            written = True
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) != "ConditionalCheckFailedException":
                raise clients.translate(exc, what=f"importing into {table}") from exc
            written = False
        report.events_written += written
        report.events_kept += not written
    if report.worksets_written:  # running daemons read the retrying worksets again
        _call(
            client.update_item,
            table,
            Key=codec.FLEET_KEY,
            UpdateExpression="ADD retry_seq :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    low, high = codec.FLEET_CONTROL_RANGE
    control = _call(
        client.query,
        table,
        KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
        ExpressionAttributeValues={":pk": codec.FLEET_KEY["pk"], ":low": {"S": low}, ":high": {"S": high}},
        ConsistentRead=True,
    )
    report.in_progress = codec.fleet_from_items(control.get("Items", []), table=table).running
    return report


def _put_workset(client: Any, table: str, item: dict[str, Any], *, force: bool, audit: tuple[str, str, int]) -> bool:
    """Write one workset unless the table's copy is as new (with ``force``: whatever it is, as a new version on top
    of the table's, with an ``imported`` event), in one transaction with the fleet counts' change, as every
    transition is: the counter stays exact while daemons work the table. A daemon's write in between fails the
    condition on the version read, and the workset is read and decided again."""
    key = {"pk": item["pk"], "sk": item["sk"]}
    for _ in range(_TRIES):
        old = _call(client.get_item, table, Key=key, ConsistentRead=True).get("Item")
        writes: list[dict[str, Any]] = []
        written = item
        if old is not None and int(old["version"]["N"]) >= int(item["version"]["N"]):
            if not force:
                return False
            written, event = _on_top(item, old, audit)
            events = {"TableName": table, "Item": event, "ConditionExpression": "attribute_not_exists(pk)"}
            writes.append({"Put": events})
        put: dict[str, Any] = {"TableName": table, "Item": written, "ConditionExpression": "attribute_not_exists(pk)"}
        if old is not None:
            put |= {
                "ConditionExpression": "#version = :seen",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":seen": old["version"]},
            }
        writes.insert(0, {"Put": put})
        running_on = (_running_on(old), _running_on(written))
        if running_on[0] != running_on[1]:
            for counted_on, delta in zip(running_on, (-1, 1), strict=True):
                if counted_on is not None:
                    fleet = {"TableName": table, "Key": counted_on, "UpdateExpression": "ADD running :delta"}
                    writes.append({"Update": fleet | {"ExpressionAttributeValues": {":delta": {"N": str(delta)}}}})
        counted_in = (_counter(old, table), _counter(written, table))
        if counted_in[0] != counted_in[1]:
            writes += [codec.counter_add(table, sk, d) for sk, d in zip(counted_in, (-1, 1), strict=True) if sk]
        try:
            client.transact_write_items(TransactItems=writes)
            return True
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) != "TransactionCanceledException":
                raise clients.translate(exc, what=f"importing into {table}") from exc
    raise errors.Conflict(f"{item['pk']['S']} kept changing while it was imported; run the import again")


def _on_top(
    item: dict[str, Any], old: dict[str, Any], audit: tuple[str, str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's older copy as the version after the table's, and the event that records it."""
    actor, source, now_ms = audit
    ws, before = codec.workset_from_item(item, table=source), codec.workset_from_item(old, table="the table")
    version = before.version + 1
    event = Event(
        workset_id=ws.workset_id,
        seq=version,
        type=EventType.IMPORTED,
        at_ms=now_ms,
        actor=actor,
        from_state=before.state,
        to_state=ws.state,
        reason=f"import --force from {source}: its copy (version {ws.version}) replaced the table's "
        f"(version {before.version})"[:500],
        priority=ws.priority,
    )
    written = item | {"version": {"N": str(version)}, "updated_at_ms": {"N": str(now_ms)}}
    return written, codec.event_item(event)


def _counter(item: dict[str, Any] | None, table: str) -> str | None:
    """The finished counter an item is counted in: none unless it is in the finished index (``codec``)."""
    if item is None or "done_pk" not in item:
        return None
    return codec.done_counter_sk(codec.workset_from_item(item, table=table))


def _running_on(item: dict[str, Any] | None) -> codec.Item | None:
    """The key of the fleet control item an in-progress item is counted on (its ``fleet_slot``), None if it is not
    in progress."""
    if item is None or item.get("state", {}).get("S") != State.IN_PROGRESS.value:
        return None
    slot = item.get(codec.FLEET_SLOT, {}).get("N")
    return codec.fleet_slot_key(None if slot is None else int(slot))


def _call(method: Any, table: str, **kwargs: Any) -> Any:
    try:
        return method(TableName=table, **kwargs)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise clients.translate(exc, what=f"importing into {table}") from exc


def _scan(client: Any, table: str) -> Iterator[dict[str, Any]]:
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        try:
            page = client.scan(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise clients.translate(exc, what=f"reading table {table}") from exc
        yield from page.get("Items", [])
        if not page.get("LastEvaluatedKey"):
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
