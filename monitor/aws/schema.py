"""``workset-monitor init``: create the table and its index, or prove an existing one is usable.

Idempotent: a second run finds the table, checks its keys, index and projection, and reports "already correct"
(or every difference it found, as one ``SchemaMismatch``). Two ``init`` runs racing each other are fine: the loser
of ``CreateTable`` falls through to verification.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from monitor import errors
from monitor.aws import clients, codec
from monitor.aws.codec import FINISHED_GSI, FINISHED_PROJECTED, GSI_NAME, GSI_PROJECTED, OUTBOX_GSI
from monitor.aws.table_io import _update_expression
from monitor.config import TableConfig
from monitor.model import FINISHED_STATES, State

_KEYS = {"pk": "HASH", "sk": "RANGE"}
_GSI_KEYS = {"state": "HASH", "gsi_sk": "RANGE"}
_OUTBOX_KEYS = {"outbox": "HASH", "outbox_sk": "RANGE"}
_FINISHED_KEYS = {"done_pk": "HASH", "done_sk": "RANGE"}


@dataclass(frozen=True, slots=True)
class InitReport:
    table: str
    created: bool
    billing_mode: str
    notes: tuple[str, ...] = ()


def ensure_table(
    client: Any,
    cfg: TableConfig,
    *,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> InitReport:
    """Create ``cfg.name`` if missing and wait until it and its index are active; verify it either way."""
    created = False
    description = _describe(client, cfg.name)
    if description is None:
        try:
            client.create_table(**create_table_request(cfg))
            created = True
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) != "ResourceInUseException":
                raise clients.translate(exc, what=f"creating table {cfg.name}") from exc
    description = _wait_active(client, cfg.name, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep)
    problems = verify(description)
    notes: tuple[str, ...] = ()
    # Tables made before an index existed get it added in place, one at a time (DynamoDB creates one per update).
    for name, keys, build, purpose in (
        (OUTBOX_GSI, _OUTBOX_KEYS, _outbox_index, "notification outbox"),
        (FINISHED_GSI, _FINISHED_KEYS, _finished_index, "finished worksets, by month"),
    ):
        if not problems and _add_index(client, cfg, description, name=name, keys=keys, index=build(cfg)):
            notes += (f"added the index {name} ({purpose}) to the existing table",)
            description = _wait_active(client, cfg.name, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep)
    problems = verify(description, outbox=True, finished=True)
    if problems:
        raise errors.SchemaMismatch(f"table {cfg.name} exists but cannot be used: " + "; ".join(problems))
    if moved := move_finished(client, cfg.name):
        notes += (f"moved {moved} finished worksets from {GSI_NAME} to {FINISHED_GSI} (counted from now on)",)
    billing = description.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    if billing != cfg.billing_mode:
        notes += (f"table billing mode is {billing}, config says {cfg.billing_mode} (left unchanged)",)
    return InitReport(table=cfg.name, created=created, billing_mode=billing, notes=notes)


def move_finished(client: Any, table: str) -> int:
    """Move the finished worksets written before the finished index out of the state index: each one in its own
    transaction (its keys, its finishing time if it had none, +1 on its counter), conditioned on the item as read, so
    it is safe beside running daemons of either version; one that changed meanwhile is left for the next ``init``.
    Returns how many moved; 0 once there are none left (a few empty Queries)."""
    moved = 0
    for state in FINISHED_STATES:
        request: dict[str, Any] = {
            "TableName": table,
            "IndexName": GSI_NAME,
            "KeyConditionExpression": "#state = :state",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":state": {"S": state.value}},
            "ProjectionExpression": "pk",
        }
        while True:
            page = _call(client.query, f"listing {state.value} worksets of table {table}", **request)
            for entry in page.get("Items", []):
                moved += _move_one(client, table, entry["pk"]["S"], state)
            if not page.get("LastEvaluatedKey"):
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return moved


def _move_one(client: Any, table: str, workset_id: str, state: State) -> int:
    key = codec.control_key(workset_id)
    item = _call(client.get_item, f"reading {workset_id}", TableName=table, Key=key, ConsistentRead=True).get("Item")
    if item is None or item.get("state", {}).get("S") != state.value or "gsi_sk" not in item or "done_pk" in item:
        return 0
    try:
        ws = codec.workset_from_item(item, table=table)
    except errors.CorruptItem:
        return 0  # listings leave it out and say so; it is the operator's to repair
    moved = dataclasses.replace(ws, finished_at_ms=ws.finished_at_ms or ws.updated_at_ms)
    update = _update_expression(
        codec.workset_fields(ws, in_finished_index=False), codec.workset_fields(moved, in_finished_index=True)
    )
    update["ExpressionAttributeNames"] |= {"#version": "version", "#state": "state"}
    update["ExpressionAttributeValues"] |= {":version": {"N": str(ws.version)}, ":state": {"S": state.value}}
    control = {
        "Update": {
            "TableName": table,
            "Key": key,
            "ConditionExpression": "#version = :version AND #state = :state AND attribute_not_exists(done_pk)",
            **update,
        }
    }
    try:
        client.transact_write_items(TransactItems=[control, codec.counter_add(table, codec.done_counter_sk(moved), 1)])
    except botocore.exceptions.ClientError as exc:
        if clients.error_code(exc) == "TransactionCanceledException":
            return 0  # it changed since it was read: the next init looks again
        raise clients.translate(exc, what=f"moving {workset_id} to {FINISHED_GSI}") from exc
    return 1


def _call(fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except botocore.exceptions.ClientError as exc:
        raise clients.translate(exc, what=what) from exc


def create_table_request(cfg: TableConfig) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TableName": cfg.name,
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"}
            for name in (*_KEYS, *_GSI_KEYS, *_OUTBOX_KEYS, *_FINISHED_KEYS)
        ],
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _KEYS.items()],
        "GlobalSecondaryIndexes": [_state_index(cfg), _outbox_index(cfg), _finished_index(cfg)],
        "BillingMode": cfg.billing_mode,
    }
    if cfg.billing_mode == "PROVISIONED":
        request["ProvisionedThroughput"] = _throughput(cfg)
    return request


def _state_index(cfg: TableConfig) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": GSI_NAME,
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _GSI_KEYS.items()],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(GSI_PROJECTED)},
    }
    return index | ({"ProvisionedThroughput": _throughput(cfg)} if cfg.billing_mode == "PROVISIONED" else {})


def _outbox_index(cfg: TableConfig) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": OUTBOX_GSI,
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _OUTBOX_KEYS.items()],
        "Projection": {"ProjectionType": "ALL"},  # only pending events are in it: few and small
    }
    return index | ({"ProvisionedThroughput": _throughput(cfg)} if cfg.billing_mode == "PROVISIONED" else {})


def _finished_index(cfg: TableConfig) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": FINISHED_GSI,
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _FINISHED_KEYS.items()],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(FINISHED_PROJECTED)},
    }
    return index | ({"ProvisionedThroughput": _throughput(cfg)} if cfg.billing_mode == "PROVISIONED" else {})


def _throughput(cfg: TableConfig) -> dict[str, Any]:
    return {"ReadCapacityUnits": cfg.read_capacity, "WriteCapacityUnits": cfg.write_capacity}


def _add_index(
    client: Any,
    cfg: TableConfig,
    description: dict[str, Any],
    *,
    name: str,
    keys: dict[str, str],
    index: dict[str, Any],
) -> bool:
    """Add the index ``name`` to a table made before it existed; True when it was added."""
    if any(i["IndexName"] == name for i in description.get("GlobalSecondaryIndexes", [])):
        return False
    if description.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED") == "PROVISIONED":
        throughput = description.get("ProvisionedThroughput", {})
        index["ProvisionedThroughput"] = {
            "ReadCapacityUnits": throughput.get("ReadCapacityUnits") or cfg.read_capacity or 1,
            "WriteCapacityUnits": throughput.get("WriteCapacityUnits") or cfg.write_capacity or 1,
        }
    try:
        client.update_table(
            TableName=cfg.name,
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in keys],
            GlobalSecondaryIndexUpdates=[{"Create": index}],
        )
    except botocore.exceptions.ClientError as exc:
        raise clients.translate(exc, what=f"adding index {name} to table {cfg.name}") from exc
    return True


def _wait_active(
    client: Any, name: str, *, timeout_s: float, poll_s: float, sleep: Callable[[float], None]
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        description = _describe(client, name)
        if description is not None and _active(description):
            return description
        if time.monotonic() > deadline:
            raise errors.AwsTemporaryError(f"table {name} is not ACTIVE after {timeout_s:g} s")
        sleep(poll_s)


def verify(description: dict[str, Any], *, outbox: bool = False, finished: bool = False) -> list[str]:
    """Every way the described table differs from what this program needs (empty when usable); the outbox and
    finished indexes are only required with ``outbox`` and ``finished`` (``ensure_table`` adds them to older
    tables)."""
    problems = []
    types = {a["AttributeName"]: a["AttributeType"] for a in description.get("AttributeDefinitions", [])}
    keys = {k["AttributeName"]: k["KeyType"] for k in description.get("KeySchema", [])}
    if keys != _KEYS:
        problems.append(f"key schema is {_fmt(keys)}, expected {_fmt(_KEYS)}")
    problems += [
        f"attribute {name} has type {types[name]}, expected S"
        for name in (*_KEYS, *_GSI_KEYS)
        if name in types and types[name] != "S"
    ]
    indexes = {i["IndexName"]: i for i in description.get("GlobalSecondaryIndexes", [])}
    index = indexes.get(GSI_NAME)
    if index is None:
        found = ", ".join(sorted(indexes)) or "none"
        problems.append(f"global secondary index {GSI_NAME} is missing (found: {found})")
        return problems
    index_keys = {k["AttributeName"]: k["KeyType"] for k in index.get("KeySchema", [])}
    if index_keys != _GSI_KEYS:
        problems.append(f"index {GSI_NAME} keys are {_fmt(index_keys)}, expected {_fmt(_GSI_KEYS)}")
    projection = index.get("Projection", {})
    kind = projection.get("ProjectionType")
    included = set(projection.get("NonKeyAttributes", []))
    if kind != "ALL" and not (kind == "INCLUDE" and set(GSI_PROJECTED) <= included):
        problems.append(f"index {GSI_NAME} projects {kind} {sorted(included)}, expected INCLUDE {list(GSI_PROJECTED)}")
    outbox_index = indexes.get(OUTBOX_GSI)
    if outbox and outbox_index is None:
        problems.append(f"global secondary index {OUTBOX_GSI} is missing")
    elif outbox_index is not None:
        keys_found = {k["AttributeName"]: k["KeyType"] for k in outbox_index.get("KeySchema", [])}
        if keys_found != _OUTBOX_KEYS or outbox_index.get("Projection", {}).get("ProjectionType") != "ALL":
            problems.append(f"index {OUTBOX_GSI} must have keys {_fmt(_OUTBOX_KEYS)} and project ALL")
    finished_index = indexes.get(FINISHED_GSI)
    if finished and finished_index is None:
        problems.append(f"global secondary index {FINISHED_GSI} is missing (run `workset-monitor init` to add it)")
    elif finished_index is not None:
        keys_found = {k["AttributeName"]: k["KeyType"] for k in finished_index.get("KeySchema", [])}
        projection = finished_index.get("Projection", {})
        included = set(projection.get("NonKeyAttributes", []))
        kind = projection.get("ProjectionType")
        if keys_found != _FINISHED_KEYS or not (
            kind == "ALL" or (kind == "INCLUDE" and set(FINISHED_PROJECTED) <= included)
        ):
            problems.append(
                f"index {FINISHED_GSI} must have keys {_fmt(_FINISHED_KEYS)} and project {list(FINISHED_PROJECTED)}"
            )
    return problems


def _describe(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(client.describe_table(TableName=name)["Table"])
    except botocore.exceptions.ClientError as exc:
        if clients.error_code(exc) == "ResourceNotFoundException":
            return None
        raise clients.translate(exc, what=f"describing table {name}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise clients.translate(exc, what=f"describing table {name}") from exc


def _active(description: dict[str, Any]) -> bool:
    if description.get("TableStatus") != "ACTIVE":
        return False
    return all(i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in description.get("GlobalSecondaryIndexes", []))


def _fmt(keys: dict[str, str]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in keys.items()) or "none"
