"""``export`` and ``import``: the whole table as JSON lines, for backups, restores and moves between tables.

The first line is a header (format, version, table, time); every other line is one item in DynamoDB's own JSON
(``{"item": {"pk": {"S": ...}, ...}}``), so nothing is lost or converted. Import validates the whole file before it
writes anything, then writes idempotently: an event is only added if missing; a workset only if missing or older
(lower ``version``) than the one in the file, unless ``force``. The fleet counter is recounted from the in-progress
worksets afterwards rather than copied, so it stays exact, and its retry sequence is advanced, so that running daemons
read the retrying worksets again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import botocore.exceptions

from monitor import errors
from monitor.aws import clients, codec

FORMAT, VERSION = "workset-monitor-export", 1


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
        out.write(json.dumps({"item": item}, sort_keys=True) + "\n")
        count += 1
    return count


def read(lines: Iterable[str], *, source: str) -> list[dict[str, Any]]:
    """Parse and check an export completely; a problem is one error naming the file and line."""
    items = []
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
    return items


def load(client: Any, table: str, items: list[dict[str, Any]], *, force: bool = False) -> ImportReport:
    report = ImportReport()
    for item in items:
        sk = item["sk"]["S"]
        if sk == "counter":
            continue  # recounted below
        is_workset = sk == codec.CONTROL_SK
        if is_workset and force:
            condition: dict[str, Any] = {}
        elif is_workset:
            condition = {
                "ConditionExpression": "attribute_not_exists(pk) OR #version < :version",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":version": item["version"]},
            }
        else:
            condition = {} if force else {"ConditionExpression": "attribute_not_exists(pk)"}
        try:
            client.put_item(TableName=table, Item=item, **condition)
            written = True
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) != "ConditionalCheckFailedException":
                raise clients.translate(exc, what=f"importing into {table}") from exc
            written = False
        if is_workset:
            report.worksets_written += written
            report.worksets_kept += not written
        else:
            report.events_written += written
            report.events_kept += not written
    report.in_progress = sum(
        1
        for item in _scan(client, table)
        if item["sk"]["S"] == codec.CONTROL_SK and item["state"]["S"] == "in_progress"
    )
    had_counter = any(item["sk"]["S"] == "counter" for item in items)
    if report.in_progress or had_counter or report.worksets_written:
        # running: recounted; retry_seq bumped, so that running daemons read the retrying worksets again.
        client.update_item(
            TableName=table,
            Key=codec.FLEET_KEY,
            UpdateExpression="SET running = :running ADD retry_seq :one",
            ExpressionAttributeValues={":running": {"N": str(report.in_progress)}, ":one": {"N": "1"}},
        )
    return report


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
