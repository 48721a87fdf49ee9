"""A local AWS emulator (moto) on 127.0.0.1 for tests, ``demo`` and benchmarks. Never used against real AWS.

Stock moto differs from DynamoDB in two ways that matter here, and this module corrects both:

- **Atomicity.** moto's DynamoDB backend takes no lock, so on a threaded server two conditional writes to one item
  can both pass their check; real DynamoDB never allows that. Every request here runs under one lock, so a
  "double claim" in a multi-process test is our bug, never the emulator's.
- **Transaction cost.** moto's ``TransactWriteItems`` deep-copies every table it touches (for rollback) on every
  call, which makes each transaction cost O(table size). ``speed_up`` keeps moto's own implementation but
  snapshots only the items the transaction touches, and restores just those on cancellation.
- **Listing cost.** moto's ``ListObjectsV2`` copies and scans every key of the bucket for every call, whatever the
  prefix, so a bucket of a million objects made each workset listing slow. ``speed_up`` hands moto's own listing
  code only the keys under the prefix, found by bisection in a sorted index rebuilt after keys are added or removed.

- **Query cost.** moto answers every query (and scan) from ``Table.all_items``, which sorts every item of the table
  comparing keys as ``DynamoType`` objects, each comparison re-deriving both values: a query on an index of a
  5 000-item table took ~200 ms, and the serialized emulator of a 300-workset chaos run spent most of its time there
  (its answers' median rose past 100 ms). ``speed_up`` sorts by the same values, derived once per item (and kept,
  for the keys, which never change). Even so every query still tested every item of the table (17 ms for one
  workset's history, 29 ms for the outbox at 3 900 items, against 3-4 ms in an empty table): ``speed_up`` hands
  moto's own query code only the items that can pass its first test, the partition of the table's hash key (a dict
  lookup) or the items that hold the index's hash key value; moto's code then tests, sorts and pages them as before.

None of these changes alters what a request returns; they exist so that tests and benchmarks at realistic sizes
finish, and so that a fleet test measures the daemons rather than the emulator.

Requires the ``dev`` extra (moto, flask, flask-cors).
"""

from __future__ import annotations

import bisect
import copy
import functools
import json
import logging
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

from moto.dynamodb import models
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.s3.models import S3Backend
from moto.s3.utils import _VersionedKeyStore
from werkzeug.serving import make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Emulator:
    """A moto server on a loopback port, one request at a time."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        wrap: Callable[[WsgiApp], WsgiApp] | None = None,
    ) -> None:
        """``wrap``: a WSGI middleware around the serialized emulator (the chaos test injects AWS faults there)."""
        speed_up()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app: WsgiApp = _Serialized(DomainDispatcherApplication(create_backend_app))
        self._app = wrap(app) if wrap is not None else app
        self._host, self._port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Emulator:
        self._server = make_server(self._host, self._port, self._app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="aws-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Serialized:
    """WSGI middleware: one request at a time (the response body is produced inside the lock too)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


@functools.cache  # once per process
def speed_up() -> None:
    """The corrections of moto's costs (transactions, listings, queries); idempotent."""
    _speed_up_transactions()
    _speed_up_listings()
    _speed_up_queries()


def _speed_up_queries() -> None:
    def all_items(self: Table) -> list[Any]:
        items = [item for found in self.items.values() for item in (found.values() if self.range_key_attr else [found])]
        return sorted(items, key=_key_values)

    def sorted_items(
        self: Table, hash_key_attrs: list[str], range_key_attrs: list[str | None], items: list[Any]
    ) -> Any:
        names = self._generate_attr_to_sort_by(hash_key_attrs, range_key_attrs)
        items.sort(key=lambda item: tuple(_cast(item.attrs[name]) for name in names))
        return items

    original_query = Table.query

    def query(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        # moto's backend passes index_name as the eighth positional argument (after hash_key, the seventh of args)
        index_name = kwargs["index_name"] if "index_name" in kwargs else (args[6] if len(args) > 6 else None)
        candidates = _candidates(self, hash_key, index_name, kwargs.get("hash_key_conditions") or [])
        view = self if candidates is None else _QueryView(self, candidates)
        return original_query(view, hash_key, *args, **kwargs)  # type: ignore[arg-type]

    Table.all_items = all_items  # type: ignore[method-assign]
    Table.sorted_items = sorted_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]


def _candidates(table: Table, hash_key: Any, index_name: str | None, conditions: list[tuple[str, Any]]) -> Any:
    """A superset of the items ``Table.query`` can return, in ``all_items`` order; None: every item. On the table:
    the hash key's partition (``items`` is keyed by it, and ``DynamoType`` hashes as it compares). On an index: the
    items holding each string hash key condition's value (others are left to moto's own test)."""

    def flat(found: Any) -> list[Any]:
        return list(found.values()) if table.range_key_attr else [found]

    if index_name is None:
        if hash_key is None:
            return None
        found = table.items.get(hash_key)
        return sorted(flat(found), key=_key_values) if found else []
    strings = [(name, value.value) for name, value in conditions if value.type == "S"]
    if not strings:
        return None
    return sorted(
        (
            item
            for found in table.items.values()
            for item in flat(found)
            if all(
                (v := item.attrs.get(name)) is not None and v.type == "S" and v.value == want for name, want in strings
            )
        ),
        key=_key_values,
    )


class _QueryView:
    """The table as moto's query code sees it, with ``all_items()`` limited to the candidates."""

    def __init__(self, table: Table, candidates: list[Any]) -> None:
        self._table, self._candidates = table, candidates

    def all_items(self) -> list[Any]:
        return self._candidates

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _cast(value: Any) -> Any:
    """``DynamoType.cast_value``, a string's without the type tests."""
    return value.value if value.type == "S" else value.cast_value


def _key_values(item: Any) -> Any:
    """The order of moto's own ``all_items`` (its keys compare by ``cast_value``), derived once per item: an item's
    keys never change (an update changes its other attributes in place; a put makes a new item)."""
    try:
        return item._sort_values
    except AttributeError:
        item._sort_values = (
            (item.hash_key.cast_value, item.range_key.cast_value) if item.range_key else item.hash_key.cast_value
        )
        return item._sort_values


def _speed_up_transactions() -> None:
    """Make moto's TransactWriteItems snapshot only the items it touches, for rollback."""
    original = models.DynamoDBBackend.transact_write_items
    shallow = types.SimpleNamespace(deepcopy=_deepcopy_except_tables, copy=copy.copy)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        snapshot = [_remember(self, op_type, op) for item in transact_items for op_type, op in item.items()]
        module_copy = models.copy  # type: ignore[attr-defined]
        models.copy = shallow  # type: ignore[attr-defined,assignment]
        try:
            original(self, transact_items)
        except Exception:
            for restore in reversed([s for s in snapshot if s is not None]):
                restore()
            raise
        finally:
            models.copy = module_copy  # type: ignore[attr-defined]

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _deepcopy_except_tables(value: Any, memo: Any = None) -> Any:
    """moto's rollback copy of a whole table becomes the table itself; our per-item snapshot restores instead."""
    return value if isinstance(value, Table) else copy.deepcopy(value, memo)


def _remember(backend: Any, op_type: str, op: dict[str, Any]) -> Callable[[], None] | None:
    """A function that puts one item back as it is now (or deletes it if it does not exist yet)."""
    if op_type not in ("Put", "Update", "Delete"):
        return None
    try:
        table = backend.get_table(op["TableName"])
    except Exception:  # an unknown table: moto itself will refuse the transaction, nothing to restore
        return None
    if op_type == "Put":
        key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = op["Item"][table.range_key_attr]
    else:
        key = op["Key"]
    current = backend.get_item(op["TableName"], key)
    saved = None if current is None else json.loads(json.dumps(current.to_json()["Attributes"]))

    def restore() -> None:
        if saved is None:
            backend.delete_item(op["TableName"], key)
        else:
            backend.put_item(op["TableName"], saved)

    return restore


def _speed_up_listings() -> None:
    original = S3Backend.list_objects

    def list_objects(self: Any, bucket: Any, prefix: str | None, *args: Any, **kwargs: Any) -> Any:
        if not prefix:
            return original(self, bucket, prefix, *args, **kwargs)
        return original(self, _PrefixView(bucket, prefix), prefix, *args, **kwargs)  # type: ignore[arg-type]

    S3Backend.list_objects = list_objects  # type: ignore[method-assign]
    for name in ("__setitem__", "setlist", "pop", "__delitem__"):
        setattr(_VersionedKeyStore, name, _marking_dirty(getattr(_VersionedKeyStore, name)))


def _marking_dirty(method: Any) -> Any:
    """Wrap a key-store mutator so the sorted index is rebuilt when the set of keys changes."""

    @functools.wraps(method)
    def wrapper(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        present = dict.__contains__(self, key)
        result = method(self, key, *args, **kwargs)
        if present != dict.__contains__(self, key):
            self.__dict__["_generation"] = self.__dict__.get("_generation", 0) + 1
        return result

    return wrapper


class _PrefixView:
    """The bucket as moto's listing code sees it, with ``keys.items()`` limited to the keys under ``prefix``."""

    def __init__(self, bucket: Any, prefix: str) -> None:
        self._bucket = bucket
        self.keys = _PrefixKeys(bucket.keys, prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bucket, name)


class _PrefixKeys:
    def __init__(self, store: Any, prefix: str) -> None:
        self._store, self._prefix = store, prefix

    def items(self) -> Any:
        state = self._store.__dict__
        generation = state.get("_generation", 0)
        built_for, names = state.get("_sorted_names", (None, []))
        if built_for != generation:  # keys were added or removed since the index was built
            names = sorted(dict.keys(self._store))
            state["_sorted_names"] = (generation, names)  # a concurrent change bumps _generation: rebuilt next time
        prefix = self._prefix
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the first string after every string that starts with prefix
        for name in names[bisect.bisect_left(names, prefix) : bisect.bisect_left(names, end)]:
            versions = dict.get(self._store, name)
            if versions:
                yield name, versions[-1]
