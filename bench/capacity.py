"""DynamoDB's capacity rules, for the cost model (issue 19): item sizes, read and write units, and what they cost.

Sizes follow "DynamoDB item sizes and formats" (developer guide, CapacityUnitCalculations): an attribute is the UTF-8
bytes of its name plus its value; a string its UTF-8 bytes; a number 1 byte per two significant digits plus 1; a
binary its raw bytes; a Boolean or null 1 byte; a list or map 3 bytes plus its elements, each element 1 byte more; a
set the sum of its members. Items are given in DynamoDB's own JSON (``{"pk": {"S": "ws-1"}, ...}``), as boto3's
client sends and receives them.

Units (developer guide, "Read/write capacity mode"): a strongly consistent read is 1 unit per 4 KB of item, rounded
up per item (GetItem, each item of a BatchGetItem) or per page (Query, Scan: the page's items summed first); an
eventually consistent read is half that; a transactional read or write twice. A write is 1 unit per 1 KB, of the
larger of the item before and after (UpdateItem); a conditional write that fails still costs the item's size. Every
request costs at least one unit (half for an eventually consistent read).

Global secondary indexes ("Provisioned throughput considerations for GSIs"): a table write that adds an item to an
index is one index write, one that removes it one, one that changes an entry's projected attributes one, and one
that changes its index key two (the old entry deleted, the new one put), each of the entry's size; a write that
leaves the entry as it was costs the index nothing. Index writes are counted at the standard rate, not doubled in a
transaction (our reading of the guide: the transaction's doubling is for the table's items).

Prices: on-demand, us-east-1, after the November 2024 reduction: $0.625 per million write request units, $0.125 per
million read request units; S3 Standard requests $0.005 per 1 000 PUT/LIST, $0.0004 per 1 000 GET.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

READ_UNIT_BYTES = 4096
WRITE_UNIT_BYTES = 1024
PRICE_PER_MILLION = {"read": 0.125, "write": 0.625}  # USD, DynamoDB on-demand request units, us-east-1
S3_PRICE_PER_THOUSAND = {"put_list": 0.005, "get": 0.0004}  # USD, S3 Standard requests, us-east-1
SECONDS_PER_MONTH = 30 * 24 * 3600

Item = Mapping[str, Mapping[str, Any]]


def item_size(item: Item) -> int:
    """Bytes of an item in DynamoDB JSON, as DynamoDB counts them for capacity."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def value_size(value: Mapping[str, Any]) -> int:
    [(kind, data)] = value.items()
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return number_size(str(data))
    if kind == "B":
        return len(_raw(data))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in data)
    if kind == "NS":
        return sum(number_size(str(n)) for n in data)
    if kind == "BS":
        return sum(len(_raw(b)) for b in data)
    if kind == "L":
        return 3 + sum(value_size(element) + 1 for element in data)
    if kind == "M":
        return 3 + sum(len(name.encode()) + value_size(element) + 1 for name, element in data.items())
    raise ValueError(f"not a DynamoDB attribute value: {kind!r}")


def number_size(text: str) -> int:
    """1 byte per two significant digits (leading and trailing zeroes trimmed), plus 1."""
    mantissa = text.lower().split("e")[0].lstrip("+-").replace(".", "")
    digits = len(mantissa.strip("0")) or 1
    return math.ceil(digits / 2) + 1


def read_units(sizes: Iterable[int], *, consistent: bool, per_item: bool = True, transactional: bool = False) -> float:
    """Read units of items of ``sizes``: rounded up per item (GetItem, BatchGetItem) or, ``per_item=False``, for
    their sum (one Query or Scan page)."""
    sizes = list(sizes)
    blocks = (
        sum(max(1, math.ceil(size / READ_UNIT_BYTES)) for size in sizes)
        if per_item
        else max(1, math.ceil(sum(sizes) / READ_UNIT_BYTES))
    )
    return blocks * (2.0 if transactional else 1.0 if consistent else 0.5)


def write_units(before: int | None, after: int | None, *, transactional: bool = False) -> int:
    """Write units of one item changing from ``before`` to ``after`` bytes (None: absent), the larger counting; a
    failed conditional write is ``write_units(size, size)``."""
    size = max(before or 0, after or 0)
    return max(1, math.ceil(size / WRITE_UNIT_BYTES)) * (2 if transactional else 1)


@dataclass(frozen=True, slots=True)
class Index:
    """A global secondary index: its hash and range key, and what it projects (None: every attribute)."""

    name: str
    keys: tuple[str, str]
    projected: tuple[str, ...] | None
    table_keys: tuple[str, str] = ("pk", "sk")

    def entry(self, item: Item | None) -> dict[str, Mapping[str, Any]] | None:
        """The item's entry in this index, or None when the item lacks a key attribute (a sparse index)."""
        if item is None or any(key not in item for key in self.keys):
            return None
        if self.projected is None:
            return dict(item)
        names = {*self.keys, *self.table_keys, *self.projected}
        return {name: value for name, value in item.items() if name in names}


def index_writes(before: Item | None, after: Item | None, index: Index) -> list[tuple[str, int]]:
    """The index writes one table write causes: (the index partition key's value, write units) for each."""
    old, new = index.entry(before), index.entry(after)
    if old == new:
        return []
    key = index.keys[0]
    if old is None or new is None:
        entry = new if old is None else old
        assert entry is not None
        return [(_string(entry[key]), write_units(None, item_size(entry)))]
    if old[key] == new[key] and old[index.keys[1]] == new[index.keys[1]]:
        return [(_string(new[key]), write_units(item_size(old), item_size(new)))]
    return [
        (_string(old[key]), write_units(item_size(old), None)),
        (_string(new[key]), write_units(None, item_size(new))),
    ]


def monthly_usd(*, read_units_per_s: float = 0.0, write_units_per_s: float = 0.0) -> float:
    """What a steady rate of request units costs in a 30-day month, on demand."""
    reads = read_units_per_s * SECONDS_PER_MONTH / 1e6 * PRICE_PER_MILLION["read"]
    writes = write_units_per_s * SECONDS_PER_MONTH / 1e6 * PRICE_PER_MILLION["write"]
    return reads + writes


def _string(value: Mapping[str, Any]) -> str:
    [(_, data)] = value.items()
    return str(data)


def _raw(data: Any) -> bytes:
    return data if isinstance(data, bytes) else base64.b64decode(data)
