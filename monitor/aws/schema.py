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
from monitor.aws.codec import GSI_NAME, GSI_PROJECTED
from monitor.config import TableConfig

_KEYS = {"pk": "HASH", "sk": "RANGE"}
_GSI_KEYS = {"state": "HASH", "gsi_sk": "RANGE"}


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
    deadline = time.monotonic() + timeout_s
    while True:
        description = _describe(client, cfg.name)
        if description is not None and _active(description):
            break
        if time.monotonic() > deadline:
            raise errors.AwsTemporaryError(f"table {cfg.name} is not ACTIVE after {timeout_s:g} s")
        sleep(poll_s)
    problems = verify(description)
    if problems:
        raise errors.SchemaMismatch(f"table {cfg.name} exists but cannot be used: " + "; ".join(problems))
    billing = description.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    notes: tuple[str, ...] = ()
    if billing != cfg.billing_mode:
        notes = (f"table billing mode is {billing}, config says {cfg.billing_mode} (left unchanged)",)
    return InitReport(table=cfg.name, created=created, billing_mode=billing, notes=notes)


def create_table_request(cfg: TableConfig) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": GSI_NAME,
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _GSI_KEYS.items()],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(GSI_PROJECTED)},
    }
    request: dict[str, Any] = {
        "TableName": cfg.name,
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name in (*_KEYS, *_GSI_KEYS)],
        "KeySchema": [{"AttributeName": n, "KeyType": t} for n, t in _KEYS.items()],
        "GlobalSecondaryIndexes": [index],
        "BillingMode": cfg.billing_mode,
    }
    if cfg.billing_mode == "PROVISIONED":
        throughput = {"ReadCapacityUnits": cfg.read_capacity, "WriteCapacityUnits": cfg.write_capacity}
        request["ProvisionedThroughput"] = throughput
        index["ProvisionedThroughput"] = throughput
    return request


def verify(description: dict[str, Any]) -> list[str]:
    """Every way the described table differs from what this program needs (empty when usable)."""
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
