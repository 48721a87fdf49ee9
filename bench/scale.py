"""Scale model: what the table costs and where it is hot, for a lab and for an internet-scale operator (issue 19).

    .venv/bin/python bench/scale.py [--finished 1000 10000] [--json PATH] [--svg PATH]

Two parts.

**Measured.** The real code (``DynamoStore``, ``Claimer``, ``Holding``, ``Outbox``, ``Sweeper``'s reads, the queue
gauges) runs against DynamoDB emulated in process (moto), through a meter that records every request as DynamoDB
would bill it (``bench/capacity.py``): read units per page or item (the *index entry's* size for an index Query,
whatever the projection asked), write units of the larger of the item before and after (x2 in a transaction, a
refused write its size all the same), and one index write per entry put, removed or changed (two when its key moves),
each against the partition key value it lands on. It measures, with F finished worksets already in the table (F =
1 000 and 10 000 by default, so that anything growing with history shows): one workset's life (registration after a
lookup, a claim round, four steps, completion, its notifications delivered), one heartbeat, one idle interval of a
daemon (the fleet's control items, a claim round with nothing due, the outbox), the chores holder's extras (the sweep
with R running, a queue-gauge refresh of the active states and of all of them, a role renewal), and a presence write.

**Modelled.** A profile (worksets a day, daemons, how long a run takes, months of history) turns those vectors into
rates with the shipped defaults (``[scan] interval_s``, ``[lease] heartbeat_s``/``sweep_interval_s``, ``[metrics]``
refreshes, ``[run] presence_interval_s``): running worksets by Little's law (arrivals x run time), one claim round
and one idle interval per daemon per scan interval, the holder's chores at their intervals, the S3 listing at
ceil(N / 1000) per interval. Out come read and write units per second, the month's bill (on-demand requests, S3
requests, storage of the items and index entries), and every partition key's units per second against DynamoDB's
per-partition limits (1 000 WCU, 3 000 RCU).

Budgets (exit 1 when one is missed): the lab profile in event mode at month 12 ≤ $15 (polling is reported, not
budgeted: its S3 listing grows with every folder under the prefix), the internet profile ≤ $5 000 a month, no
partition key above 50 % of its limit, and the measured vectors the same at both F (nothing read grows with
history). Also reported: the busiest shared items' writes per second (what transaction conflicts grow with).

What the model cannot show: transaction conflicts on a busy item (it counts the item's writes per second, not their
collisions), a backlog's dynamics (claim rounds are one per daemon per interval, as when work keeps up), burst
peaks (rates are daily means), and DynamoDB's adaptive capacity (limits are per partition key, as documented).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from moto import mock_aws

from bench.capacity import (
    PRICE_PER_MILLION,
    S3_PRICE_PER_THOUSAND,
    SECONDS_PER_MONTH,
    Index,
    index_writes,
    item_size,
    read_units,
    write_units,
)
from monitor import actions, logs, states
from monitor.aws import codec, schema
from monitor.aws.dynamo import DynamoStore
from monitor.clock import FakeClock
from monitor.config import NotifyConfig, Settings, TableConfig
from monitor.leases import Claimer, Policy
from monitor.model import Event, Presence, Priority, State, Workset, WorksetId
from monitor.notify import filters
from monitor.notify.outbox import Doorbell, Outbox

TABLE = "scale-model"
STORAGE_USD_PER_GB_MONTH = 0.25  # DynamoDB Standard table class, us-east-1
WCU_LIMIT, RCU_LIMIT = 1000, 3000  # per partition key value, per second
HOT_SHARE = 0.5  # the budget: no partition key above half its limit
STEPS = 4
INDEXES = [
    Index(codec.GSI_NAME, ("state", "gsi_sk"), codec.GSI_PROJECTED),
    Index(codec.OUTBOX_GSI, ("outbox", "outbox_sk"), None),
    Index(codec.FINISHED_GSI, ("done_pk", "done_sk"), codec.FINISHED_PROJECTED),
]


# --- the meter ------------------------------------------------------------------------------------------------------


@dataclass
class Use:
    kind: str  # "read" | "write"
    target: str  # "table" or an index name
    pk: str  # the partition key value the units land on
    units: float
    sk: str = ""  # a write to the table: the item's sort key (its item, for the hottest items)
    times: float = 1.0  # how many writes of that item (scaled with the units)


@dataclass
class Vector:
    """What one thing (a workset's life, a heartbeat, an idle interval...) costs: its uses, and its requests."""

    uses: list[Use] = field(default_factory=list)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)

    def scaled(self, by: float) -> Vector:
        """The uses ``by`` times (a rate, or a mean over samples); the requests scaled alike."""
        requests = collections.Counter({op: n * by for op, n in self.requests.items()})
        uses = [Use(u.kind, u.target, u.pk, u.units * by, u.sk, u.times * by) for u in self.uses]
        return Vector(uses, requests)

    def units(self, kind: str) -> float:
        return sum(u.units for u in self.uses if u.kind == kind)


class Meter:
    """A DynamoDB client that records what each request of the store would be billed (``Use``s); every other
    attribute is the client's own. Items before and after a write, and the full items behind a Query's entries, are
    read from the emulator outside the meter."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.vector = Vector()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[Vector]:
        """Record into a new vector until the block ends; outside a block, requests are recorded nowhere."""
        self.vector = Vector()
        try:
            yield self.vector
        finally:
            self.vector = Vector()

    # reads

    def get_item(self, **kw: Any) -> Any:
        response = self._client.get_item(**kw)
        size = item_size(response["Item"]) if "Item" in response else 0
        self._use("GetItem", "read", "table", kw["Key"]["pk"]["S"], read_units([size], consistent=_consistent(kw)))
        return response

    def batch_get_item(self, **kw: Any) -> Any:
        response = self._client.batch_get_item(**kw)
        self.vector.requests["BatchGetItem"] += 1
        for table, request in kw["RequestItems"].items():
            found = {_key(i): i for i in response.get("Responses", {}).get(table, [])}
            for key in request["Keys"]:
                size = item_size(found.get(_key(key), {}))
                units = read_units([size], consistent=request.get("ConsistentRead", False))
                self.vector.uses.append(Use("read", "table", key["pk"]["S"], units))
        return response

    def query(self, **kw: Any) -> Any:
        response = self._client.query(**kw)
        index = next((i for i in INDEXES if i.name == kw.get("IndexName")), None)
        sizes, pk = [], _partition(kw)
        for entry in response.get("Items", []):
            full = self._full(entry)
            sizes.append(item_size(index.entry(full) or {} if index else full))
        units = read_units(sizes, consistent=_consistent(kw), per_item=False)
        self._use("Query", "read", index.name if index else "table", pk, units)
        return response

    # writes

    def update_item(self, **kw: Any) -> Any:
        return self._write("UpdateItem", [kw["Key"]], lambda: self._client.update_item(**kw), transactional=False)

    def put_item(self, **kw: Any) -> Any:
        key = {"pk": kw["Item"]["pk"], "sk": kw["Item"]["sk"]}
        return self._write("PutItem", [key], lambda: self._client.put_item(**kw), transactional=False)

    def delete_item(self, **kw: Any) -> Any:
        return self._write("DeleteItem", [kw["Key"]], lambda: self._client.delete_item(**kw), transactional=False)

    def transact_write_items(self, **kw: Any) -> Any:
        keys = []
        for op in kw["TransactItems"]:
            [body] = op.values()
            keys.append(body["Key"] if "Key" in body else {"pk": body["Item"]["pk"], "sk": body["Item"]["sk"]})
        return self._write("TransactWriteItems", keys, lambda: self._client.transact_write_items(**kw), True)

    def _write(self, op: str, keys: list[dict[str, Any]], call: Any, transactional: bool) -> Any:
        before = [self._raw(key) for key in keys]
        try:
            response, refused = call(), None
        except self._client.exceptions.ClientError as exc:
            response, refused = None, exc
        after = before if refused else [self._raw(key) for key in keys]
        self.vector.requests[op + (" (refused)" if refused else "")] += 1
        for key, old, new in zip(keys, before, after, strict=True):
            old_size, new_size = (item_size(old) if old else None), (item_size(new) if new else None)
            if refused:  # a refused write costs the item's size all the same
                new_size = old_size
            self.vector.uses.append(
                Use(
                    "write",
                    "table",
                    key["pk"]["S"],
                    write_units(old_size, new_size, transactional=transactional),
                    sk=key["sk"]["S"],
                )
            )
            for index in INDEXES:
                for pk, units in index_writes(old, new, index):
                    self.vector.uses.append(Use("write", index.name, pk, units))
        if refused is not None:
            raise refused
        return response

    def _use(self, op: str, kind: str, target: str, pk: str, units: float) -> None:
        self.vector.requests[op] += 1
        self.vector.uses.append(Use(kind, target, pk, units))

    def _raw(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return self._client.get_item(TableName=TABLE, Key=key, ConsistentRead=True).get("Item")

    def _full(self, entry: dict[str, Any]) -> dict[str, Any]:
        key = {"pk": entry["pk"], "sk": entry.get("sk", {"S": codec.CONTROL_SK})}
        return self._raw(key) or entry


def _consistent(kw: dict[str, Any]) -> bool:
    return bool(kw.get("ConsistentRead"))


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return item["pk"]["S"], item["sk"]["S"]


def _partition(kw: dict[str, Any]) -> str:
    """The partition key value a Query reads: the first placeholder of its key condition."""
    condition = kw["KeyConditionExpression"]
    placeholder = condition.split("=", 1)[1].split()[0]
    return str(next(iter(kw["ExpressionAttributeValues"][placeholder].values())))


# --- measuring the real code -------------------------------------------------------------------------------------


class Sns:
    """A channel that delivers everything at once: the model counts the table's side of a notification."""

    name = "sns"

    async def send(self, event: Event, ws: Workset | None) -> str:
        return "sent"


class Rig:
    """The table with ``finished`` finished worksets in it, the real store over the meter, a fake clock."""

    def __init__(self, finished: int) -> None:
        client = boto3.client("dynamodb")
        schema.ensure_table(client, TableConfig(name=TABLE))
        seed_finished(client, finished)
        self.meter = Meter(client)
        self.clock = FakeClock()
        doorbell = Doorbell()
        # One thread: the outbox delivers events at once, and moto in process (like the meter's before/after reads)
        # is not safe for concurrent writes to one item.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.store = DynamoStore(self.meter, TABLE, on_pending=doorbell.ring, executor=self.executor)
        notify = NotifyConfig.model_validate({"sns": {"topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}})
        self.policy = Policy(notify=filters.wanted(notify))
        self.claimer = Claimer(self.store, self.clock, owner="host:1:model", policy=self.policy)
        self.outbox = Outbox(
            self.store, self.clock, owner="host:1:model", doorbell=doorbell, notify=notify, channels=[Sns()]
        )
        self.registered = 0

    async def register(self) -> WorksetId:
        name = WorksetId(f"new-{self.registered:06d}")
        self.registered += 1
        ctx = states.Context(now_ms=self.clock.now_ms(), actor="scanner:model", notify=self.policy.notify)
        await self.store.locations([name])  # the scanner looks a folder it does not know up before registering it
        await actions.register(
            self.store, workset_id=name, bucket="lab", prefix=f"worksets/{name}/", priority=Priority.NORMAL, ctx=ctx
        )
        return name


def seed_finished(client: Any, count: int) -> None:
    """``count`` complete worksets and their counters, written in bulk (seeding is not what is measured)."""
    counters: collections.Counter[str] = collections.Counter()
    items = []
    for n in range(count):
        at = 1_767_225_600_000 + n * 60_000
        ws = Workset(
            workset_id=WorksetId(f"done-{n:06d}"),
            state=State.COMPLETE,
            priority=Priority.NORMAL,
            bucket="lab",
            prefix=f"worksets/done-{n:06d}/",
            created_at_ms=at - 3_600_000,
            updated_at_ms=at,
            available_at_ms=at - 3_600_000,
            version=8,
            started_at_ms=at - 3_000_000,
            finished_at_ms=at,
        )
        items.append(codec.workset_item(ws))
        counters[codec.done_counter_sk(ws)] += 1
    items += [{"pk": {"S": "#fleet"}, "sk": {"S": sk}, "n": {"N": str(n)}} for sk, n in counters.items()]
    for start in range(0, len(items), 25):
        client.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]})


LIFE_SAMPLES = 10
RUNNING_SAMPLE = 40


async def measure(finished: int) -> dict[str, Vector]:
    rig = Rig(finished)
    meter, store, vectors = rig.meter, rig.store, {}

    with meter.measuring() as life:
        for _ in range(LIFE_SAMPLES):
            await rig.register()
            [holding] = await rig.claimer.claim(slots=1)
            for step in range(STEPS):
                rig.clock.advance(1)  # (heartbeats are a vector of their own)
                holding.step_started(f"step-{step}")
                await holding.step_finished(f"step-{step}")
            await holding.complete()
            await rig.outbox.deliver_pending()  # its notifications (started, complete...) delivered and settled
            await rig.outbox.wait_for_background()
    vectors["workset"] = life.scaled(1 / LIFE_SAMPLES)

    await rig.register()
    [holding] = await rig.claimer.claim(slots=1)
    with meter.measuring() as beats:
        for _ in range(10):
            rig.clock.advance(15)
            await holding.heartbeat_once()
    vectors["heartbeat"] = beats.scaled(1 / 10)
    await holding.complete()
    await rig.outbox.deliver_pending()
    await rig.outbox.wait_for_background()

    with meter.measuring() as idle:  # a daemon's interval with nothing to do
        await store.fleet()
        assert await rig.claimer.claim(slots=1) == []
        await rig.outbox.deliver_pending()
    vectors["idle_interval"] = idle

    now = rig.clock.now_ms()
    with meter.measuring() as presence:
        await store.put_presence(
            Presence(
                owner="host:1:model",
                host="host",
                pid=1,
                version="0",
                started_at_ms=now,
                written_at_ms=now,
                interval_s=30.0,
                config_digest="x",
            )
        )
    vectors["presence"] = presence

    role = "role-token"
    await store.take_chores(token=role, owner="host:1:model", now_ms=now, expect=None)
    with meter.measuring() as renewal:
        await store.renew_chores(token=role, now_ms=now + 15_000)
    vectors["role_renewal"] = renewal

    with meter.measuring() as gauges_active:
        await store.stats(
            now_ms=now, states=[s for s in State if s not in (State.COMPLETE, State.IGNORED, State.CANCELLED)]
        )
    vectors["gauges_active"] = gauges_active
    with meter.measuring() as gauges_all:
        await store.stats(now_ms=now)
    vectors["gauges_all"] = gauges_all

    for _ in range(RUNNING_SAMPLE):
        await rig.register()
    holdings = await rig.claimer.claim(slots=RUNNING_SAMPLE)
    assert len(holdings) == RUNNING_SAMPLE, len(holdings)
    with meter.measuring() as sweep:  # the holder's sweep with RUNNING_SAMPLE running: scaled by R in the model
        await store.fleet()
        assert len(await store.running()) == RUNNING_SAMPLE
    vectors["sweep"] = sweep
    rig.executor.shutdown()
    return vectors


# --- the model ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    per_day: float  # worksets registered (and finished) a day
    daemons: int
    run_minutes: float  # how long one workset's run takes
    scan_s: float  # how often the chores holder lists S3: [scan] interval_s, or in event mode reconcile_interval_s
    poll_s: float = 60.0  # how often each daemon reads the outbox ([scan] interval_s today)
    s3_reads_per_workset: float = 8.0  # validation: HEAD/GET of the manifest and FASTQs (measured by the soak)
    events: bool = False  # S3 notifications through SQS: every daemon long-polls the queue (20 s waits)


PROFILES = [
    Profile("lab, polling every 60 s (the default)", 200, 3, 240, 60),
    Profile("lab, event mode, reconcile daily", 200, 3, 240, 86_400, events=True),
    Profile("internet, event mode, reconcile daily", 1_000_000, 100, 30, 86_400, events=True),
]
# USD a month at month 12. The polling lab has none: its S3 listing grows with every folder ever dropped under the
# prefix (ceil(N / 1000) pages a scan, the scan every 60 s by contract); event mode is the answer at that size.
BUDGETS = {PROFILES[1].name: 15.0, PROFILES[2].name: 5_000.0}
SQS_USD_PER_MILLION = 0.40  # standard queue requests, after the free tier
SQS_WAIT_S = 20
ONE_WORKSET = ("new-", "done-")  # the measured worksets' own partitions: one workset's, never shared


def rates(vectors: dict[str, Vector], p: Profile, cfg: Settings) -> dict[str, Vector]:
    """Each vector with its units per second under profile ``p`` (the shipped defaults ``cfg``)."""
    arrivals = p.per_day / 86_400
    running = arrivals * p.run_minutes * 60
    every = {
        "workset": arrivals,
        "heartbeat": running / cfg.lease.heartbeat_s,
        "idle_interval": p.daemons / cfg.lease.sweep_interval_s,  # the fleet read and a claim round; the outbox
        "presence": p.daemons / cfg.run.presence_interval_s,
        "role_renewal": 1 / cfg.lease.heartbeat_s,
        "gauges_active": 1 / cfg.metrics.queue_refresh_s,
        "gauges_all": 1 / cfg.metrics.finished_refresh_s,
        "sweep": running / RUNNING_SAMPLE / cfg.lease.sweep_interval_s,  # R running, read by the holder only
    }
    return {name: vectors[name].scaled(rate) for name, rate in every.items()}


def month(vectors: dict[str, Vector], p: Profile, m: int, bytes_per_workset: float, cfg: Settings) -> dict[str, Any]:
    per_s = rates(vectors, p, cfg)
    reads = sum(v.units("read") for v in per_s.values())
    writes = sum(v.units("write") for v in per_s.values())
    folders = p.per_day * 30 * m
    lists_per_s = math.ceil(folders / 1000) / p.scan_s
    s3_gets_per_s = p.per_day / 86_400 * p.s3_reads_per_workset
    usd = {
        "dynamodb reads": reads * SECONDS_PER_MONTH / 1e6 * PRICE_PER_MILLION["read"],
        "dynamodb writes": writes * SECONDS_PER_MONTH / 1e6 * PRICE_PER_MILLION["write"],
        "s3 listing": lists_per_s * SECONDS_PER_MONTH / 1000 * S3_PRICE_PER_THOUSAND["put_list"],
        "s3 validation reads": s3_gets_per_s * SECONDS_PER_MONTH / 1000 * S3_PRICE_PER_THOUSAND["get"],
        "storage": folders * bytes_per_workset / 1e9 * STORAGE_USD_PER_GB_MONTH,
        # each daemon's long polls, and a receive and a delete per message
        "sqs": (p.daemons / SQS_WAIT_S + 2 * p.per_day / 86_400) * SECONDS_PER_MONTH / 1e6 * SQS_USD_PER_MILLION
        if p.events
        else 0.0,
    }
    by_line = {name: round(v.units("read") + v.units("write"), 4) for name, v in per_s.items()}
    return {
        "month": m,
        "usd": {k: round(v, 2) for k, v in usd.items()},
        "total_usd": round(sum(usd.values()), 2),
        "read_units_per_s": round(reads, 3),
        "write_units_per_s": round(writes, 3),
        "units_per_s_by_line": by_line,
    }


def hot(vectors: dict[str, Vector], p: Profile, cfg: Settings) -> list[dict[str, Any]]:
    """Every shared partition key's units per second, against its limit, hottest first."""
    load: dict[tuple[str, str, str], float] = collections.defaultdict(float)
    for v in rates(vectors, p, cfg).values():
        for use in v.uses:
            if not use.pk.startswith(ONE_WORKSET):
                load[(use.target, _generic(use.pk), use.kind)] += use.units
    rows = [
        {
            "target": t,
            "partition": pk,
            "kind": kind,
            "units_per_s": round(units, 3),
            "share_of_limit": round(units / (WCU_LIMIT if kind == "write" else RCU_LIMIT), 4),
        }
        for (t, pk, kind), units in load.items()
    ]
    return sorted(rows, key=lambda r: -r["share_of_limit"])


def hot_items(vectors: dict[str, Vector], p: Profile, cfg: Settings) -> list[dict[str, Any]]:
    """Every shared item's writes per second, busiest first: what transaction conflicts grow with (DynamoDB
    publishes no number for them; each write holds the item for the length of its transaction)."""
    load: dict[str, float] = collections.defaultdict(float)
    for v in rates(vectors, p, cfg).values():
        for use in v.uses:
            if use.kind == "write" and use.target == "table" and not use.pk.startswith(ONE_WORKSET):
                item, spread = _one_of(use.pk, use.sk, p)
                load[item] += use.times / spread
    rows = [{"item": item, "writes_per_s": round(n, 3)} for item, n in load.items()]
    return sorted(rows, key=lambda r: -r["writes_per_s"])


def _one_of(pk: str, sk: str, p: Profile) -> tuple[str, int]:
    """An item the model's few worksets and one daemon stand for, and how many items share that load in the
    fleet: a fleet shard is one of eight (by workset id), a finished counter one of eight per state, month and
    priority, a presence item one per daemon."""
    if sk.startswith(codec.FLEET_SHARD_PREFIX):
        return f"{pk} / {codec.FLEET_SHARD_PREFIX}<each of {codec.FLEET_SHARDS}>", codec.FLEET_SHARDS
    if sk.startswith(codec.DONE_PREFIX):
        _, state, _month, rank, _shard = sk.split("#")
        return f"{pk} / done#{state}#<month>#{rank}#<each of {codec.DONE_SHARDS}>", codec.DONE_SHARDS
    if pk == codec.PRESENCE_PK:
        return f"{pk} / <each daemon>", p.daemons
    return f"{pk} / {sk}", 1


def _generic(pk: str) -> str:
    """A month's partition of the finished index as any month's (they take turns, one at a time)."""
    state, _, rest = pk.partition("#")
    return f"{state}#<month>" if rest[:2] == "20" else pk


def stored_bytes(client: Any, workset_id: str) -> int:
    """One finished workset's bytes in the table: its items and its index entries."""
    items = client.query(
        TableName=TABLE, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": workset_id}}
    )["Items"]
    entries = [e for item in items for index in INDEXES if (e := index.entry(item)) is not None]
    return sum(item_size(i) + 100 for i in items + entries)  # +100: DynamoDB's per-item overhead for storage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--svg", type=Path, help="write the cost-by-month plot here")
    args = parser.parse_args()
    cfg = Settings.model_validate({})
    logs.configure(level="error", fmt="console")
    measured: dict[int, dict[str, Vector]] = {}
    for f in args.finished:
        with mock_aws():
            measured[f] = asyncio.run(measure(f))
            bytes_per_workset = stored_bytes(boto3.client("dynamodb"), "new-000000")
    problems = []
    first, last = measured[min(measured)], measured[max(measured)]
    for name in first:
        a, b = first[name], last[name]
        if (round(a.units("read"), 3), round(a.units("write"), 3), a.requests) != (
            round(b.units("read"), 3),
            round(b.units("write"), 3),
            b.requests,
        ):
            problems.append(
                f"{name} costs more with more history: {_cost(a)} at {min(measured)} finished, "
                f"{_cost(b)} at {max(measured)}"
            )
    vectors = last
    result: dict[str, Any] = {
        "benchmark": "scale",
        "measured_with_finished": sorted(measured),
        "vectors": {
            name: {
                "requests": dict(v.requests),
                "read_units": round(v.units("read"), 3),
                "write_units": round(v.units("write"), 3),
            }
            for name, v in vectors.items()
        },
        "bytes_per_workset": bytes_per_workset,
        "profiles": [],
    }
    for p in PROFILES:
        months = [month(vectors, p, m, bytes_per_workset, cfg) for m in range(1, args.months + 1)]
        partitions = hot(vectors, p, cfg)
        result["profiles"].append(
            {
                "profile": p.__dict__,
                "months": months,
                "hottest": partitions[:8],
                "busiest_items": hot_items(vectors, p, cfg)[:5],
            }
        )
        budget = BUDGETS.get(p.name)
        if budget is not None and months[-1]["total_usd"] > budget:
            problems.append(f"{p.name}: ${months[-1]['total_usd']} a month at month {args.months} (budget ${budget:g})")
        problems += [
            f"{p.name}: {r['target']} {r['partition']} at {r['share_of_limit']:.0%} of its {r['kind']} limit"
            for r in partitions
            if r["share_of_limit"] > HOT_SHARE
        ]
    result["problems"] = problems
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.svg:
        args.svg.write_text(svg(result))
    for line in problems:
        print("BUDGET MISSED:", line, file=sys.stderr)
    return 1 if problems else 0


def _cost(v: Vector) -> str:
    return f"{dict(v.requests)} {v.units('read'):.2f} RRU / {v.units('write'):.2f} WRU"


def report(result: dict[str, Any]) -> str:
    lines = ["per unit of work (measured):"]
    for name, v in result["vectors"].items():
        lines.append(f"  {name:<14} {v['read_units']:>7.2f} RRU {v['write_units']:>7.2f} WRU  {v['requests']}")
    lines.append(f"  stored per finished workset: {result['bytes_per_workset']} bytes")
    for entry in result["profiles"]:
        p, last = entry["profile"], entry["months"][-1]
        lines.append(
            f"{p['name']} ({p['per_day']:g}/day, {p['daemons']} daemons, {p['run_minutes']:g}-minute runs): "
            f"month 1 ${entry['months'][0]['total_usd']}, month {last['month']} ${last['total_usd']}  {last['usd']}"
        )
        for r in entry["hottest"][:4]:
            lines.append(
                f"    {r['target']:<22} {r['partition']:<18} {r['kind']:<5} {r['units_per_s']:>9.3f}/s  "
                f"{r['share_of_limit']:.2%} of its limit"
            )
        for r in entry["busiest_items"][:3]:
            lines.append(f"    item {r['item']:<40} {r['writes_per_s']:>9.3f} writes/s")
    return "\n".join(lines)


def svg(result: dict[str, Any]) -> str:
    """Cost a month against months of history, one line per profile, on a log scale (no plotting library)."""
    width, height, left, bottom = 640, 320, 60, 40
    series = [(e["profile"]["name"], [m["total_usd"] for m in e["months"]]) for e in result["profiles"]]
    top = max(max(v) for _, v in series)
    low = min(min(v) for _, v in series)
    span = math.log10(top * 2) - math.log10(low / 2)
    months = len(series[0][1])

    def x(i: int) -> float:
        return left + (width - left - 20) * i / (months - 1)

    def y(v: float) -> float:
        return height - bottom - (height - bottom - 20) * (math.log10(v) - math.log10(low / 2)) / span

    colours = ["#1f77b4", "#2ca02c", "#d62728"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">'
    ]
    out.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - 20}" y2="{height - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="20" x2="{left}" y2="{height - bottom}" stroke="black"/>')
    for i in range(months):
        out.append(f'<text x="{x(i):.0f}" y="{height - bottom + 15}" text-anchor="middle">{i + 1}</text>')
    out.append(f'<text x="{(width + left) / 2:.0f}" y="{height - 5}" text-anchor="middle">month of history</text>')
    for decade in range(math.floor(math.log10(low / 2)) + 1, math.ceil(math.log10(top * 2))):
        out.append(f'<text x="{left - 5}" y="{y(10**decade) + 4:.0f}" text-anchor="end">${10**decade:g}</text>')
        out.append(
            f'<line x1="{left}" y1="{y(10**decade):.0f}" x2="{width - 20}" y2="{y(10**decade):.0f}" stroke="#ddd"/>'
        )
    for n, ((name, values), colour) in enumerate(zip(series, colours, strict=False)):
        points = " ".join(f"{x(i):.0f},{y(v):.0f}" for i, v in enumerate(values))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(
            f'<text x="{left + 10}" y="{32 + 14 * n}" fill="{colour}">'
            f"{name}: ${values[-1]:,.0f}/month at month {months}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
