"""``workset-monitor init``: create the table and its index, or prove an existing one is usable.

Idempotent: a second run finds the table, checks its keys, index and projection, and reports "already correct"
(or every difference it found, as one ``SchemaMismatch``). Two ``init`` runs racing each other are fine: the loser
of ``CreateTable`` falls through to verification.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from monitor import errors
from monitor.aws import clients
from monitor.aws.codec import GSI_NAME, GSI_PROJECTED, OUTBOX_GSI
from monitor.config import TableConfig

_KEYS = {"pk": "HASH", "sk": "RANGE"}
_GSI_KEYS = {"state": "HASH", "gsi_sk": "RANGE"}
_OUTBOX_KEYS = {"outbox": "HASH", "outbox_sk": "RANGE"}


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
    if not problems and _add_outbox_index(client, cfg, description):
        notes = (f"added the index {OUTBOX_GSI} (notification outbox) to the existing table",)
        description = _wait_active(client, cfg.name, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep)
    problems = verify(description, outbox=True)
    if problems:
        raise errors.SchemaMismatch(f"table {cfg.name} exists but cannot be used: " + "; ".join(problems))
    billing = description.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    if billing != cfg.billing_mode:
        notes += (f"table billing mode is {billing}, config says {cfg.billing_mode} (left unchanged)",)
    return InitReport(table=cfg.name, created=created, billing_mode=billing, notes=notes)


def create_table_request(cfg: TableConfig) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TableName": cfg.name,
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"} for name in (*_KEYS, *_GSI_KEYS, *_OUTBOX_KEYS)
        ],
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _KEYS.items()],
        "GlobalSecondaryIndexes": [_state_index(cfg), _outbox_index(cfg)],
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


def _throughput(cfg: TableConfig) -> dict[str, Any]:
    return {"ReadCapacityUnits": cfg.read_capacity, "WriteCapacityUnits": cfg.write_capacity}


def _add_outbox_index(client: Any, cfg: TableConfig, description: dict[str, Any]) -> bool:
    """Tables made before notifications existed get the outbox index added in place; True when it was."""
    if any(i["IndexName"] == OUTBOX_GSI for i in description.get("GlobalSecondaryIndexes", [])):
        return False
    index = _outbox_index(cfg)
    if description.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED") == "PROVISIONED":
        throughput = description.get("ProvisionedThroughput", {})
        index["ProvisionedThroughput"] = {
            "ReadCapacityUnits": throughput.get("ReadCapacityUnits") or cfg.read_capacity or 1,
            "WriteCapacityUnits": throughput.get("WriteCapacityUnits") or cfg.write_capacity or 1,
        }
    try:
        client.update_table(
            TableName=cfg.name,
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in _OUTBOX_KEYS],
            GlobalSecondaryIndexUpdates=[{"Create": index}],
        )
    except botocore.exceptions.ClientError as exc:
        raise clients.translate(exc, what=f"adding index {OUTBOX_GSI} to table {cfg.name}") from exc
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


def verify(description: dict[str, Any], *, outbox: bool = False) -> list[str]:
    """Every way the described table differs from what this program needs (empty when usable); the outbox index
    is only required with ``outbox`` (``ensure_table`` adds it to older tables)."""
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
