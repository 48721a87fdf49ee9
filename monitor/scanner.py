"""Discovery: find new workset folders under ``scan.prefixes`` and register each exactly once.

Cost model (the budget ``bench/scan_cost.py`` holds us to):

- At start, one paginated read of the registered ids and their locations (index keys only).
- Per cycle and prefix, one ``ListObjectsV2`` per 1000 child folders. Registered folders cost nothing more: their
  contents, ``sample_data/`` above all, are never listed again.
- A folder this daemon does not know yet is first looked up in the table (one call per 100, another daemon may have
  registered it); only then validated (see ``validation``) and registered. An idle cycle therefore makes no
  DynamoDB call at all.
- A folder without ``daylily.ready`` yet is looked at again next cycle (one listing of its top level). A folder the
  legacy monitor owns (``daylily.complete``, ``.error``, ``.in_progress``, ``.lock`` without registration) is left to
  ``workset-monitor migrate`` and not looked at again until restart.

Guarantees: an invalid folder (bad name, bad manifest, missing data...) is registered as ``error`` with
``error_category = validation`` and a reason naming file, line and column; nothing is skipped silently. The same
folder name under a second prefix is reported once (event on the first workset, log, counter) and never overwrites
the first. One folder failing (an AWS hiccup, even a bug) never stops the scan of the others.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from monitor import actions, errors, logs, validation
from monitor.clock import Clock
from monitor.live import reader
from monitor.loops import Loops, Seconds
from monitor.model import EventType, Priority, State, WorksetId, check_workset_id
from monitor.ports import Source, Store
from monitor.states import Action, Context

log = logs.get("monitor.scanner")

_LOOKUP_BATCH = 100


@dataclass
class ScanReport:
    folders: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)

    def __getitem__(self, outcome: str) -> int:
        return self.outcomes[outcome]


class Scanner:
    def __init__(
        self,
        store: Store,
        source: Source,
        clock: Clock,
        *,
        prefixes: Sequence[str] | Callable[[], Sequence[str]],
        actor: str,
        max_manifest_bytes: int | Callable[[], int] = 10 << 20,
    ) -> None:
        """``prefixes`` and ``max_manifest_bytes`` may be getters, read at every scan (a reload applies live)."""
        self._store = store
        self._source = source
        self._clock = clock
        self.prefixes = reader(prefixes)
        self._actor = actor
        self._max_manifest_bytes = reader(max_manifest_bytes)
        self._known: dict[WorksetId, str] | None = None  # id -> "bucket/folder/"
        self._legacy: set[str] = set()  # locations left to `migrate`, not looked at again until restart
        self._reported: set[str] = set()  # duplicate locations already reported
        self.totals: collections.Counter[str] = collections.Counter()

    @property
    def known(self) -> int:
        return len(self._known or {})

    async def scan_once(self) -> ScanReport:
        """One pass over every prefix."""
        known = await self._known_ids()
        report = ScanReport()
        for prefix in self.prefixes():
            names = await self._source.folders(prefix)
            report.folders += len(names)
            unknown: list[tuple[WorksetId, str]] = []
            for name in names:
                workset_id, location = self.identify(prefix, name)
                seen = known.get(workset_id)
                if seen == location or location in self._legacy:
                    continue
                if seen is not None:
                    report.outcomes[await self._duplicate(workset_id, seen, location)] += 1
                    continue
                unknown.append((workset_id, name))
            for batch in _batched(unknown, _LOOKUP_BATCH):
                known |= await self._store.locations([workset_id for workset_id, _ in batch])
                for workset_id, name in batch:
                    _, location = self.identify(prefix, name)
                    if workset_id in known:
                        if known[workset_id] != location:
                            report.outcomes[await self._duplicate(workset_id, known[workset_id], location)] += 1
                        continue
                    report.outcomes[await self.consider(prefix, name)] += 1
        self.totals.update(report.outcomes)
        return report

    async def register_if_new(self, prefix: str, name: str) -> str:
        """Register one folder unless it is known (event mode); the same rules and outcomes as a scan."""
        known = await self._known_ids()
        workset_id, location = self.identify(prefix, name)
        if workset_id not in known:
            known |= await self._store.locations([workset_id])
        if workset_id in known:
            if known[workset_id] == location:
                return "already_registered"
            return await self._duplicate(workset_id, known[workset_id], location)
        return await self.consider(prefix, name)

    async def _known_ids(self) -> dict[WorksetId, str]:
        if self._known is None:
            self._known = await self._store.locations()
            log.info("known worksets loaded", count=len(self._known))
        return self._known

    def identify(self, prefix: str, name: str) -> tuple[WorksetId, str]:
        """The workset id of a folder (its name, or a stable stand-in for an unusable name) and its location."""
        location = f"{self._source.bucket}/{prefix}{name}/"
        try:
            return check_workset_id(name), location
        except ValueError:
            digest = hashlib.sha256(location.encode("utf-8", "surrogateescape")).hexdigest()[:16]
            return WorksetId(f"invalid-name-{digest}"), location

    async def consider(self, prefix: str, name: str) -> str:
        """Look at one folder not registered yet and register it if it is a workset; returns the outcome."""
        workset_id, location = self.identify(prefix, name)
        folder = f"{prefix}{name}/"
        try:
            if workset_id != name:
                reason = f"folder name {name!a} is not a valid workset id: use 1-128 characters from A-Z a-z 0-9 . _ -"
                return await self._register(workset_id, folder, location, Priority.NORMAL, invalid=reason)
            verdict = await validation.inspect(
                self._source, folder=folder, max_manifest_bytes=self._max_manifest_bytes()
            )
            if verdict.kind == "pending":
                return "pending"
            if verdict.kind == "legacy":
                self._legacy.add(location)
                log.warning(
                    "legacy workset left for `workset-monitor migrate`",
                    workset_id=workset_id,
                    sentinel=verdict.sentinel,
                )
                return "legacy"
            if verdict.kind == "ignored":
                return await self._register(
                    workset_id, folder, location, verdict.priority, imported=State.IGNORED, reason=verdict.reason
                )
            invalid = verdict.reason if verdict.kind == "invalid" else None
            return await self._register(workset_id, folder, location, verdict.priority, invalid=invalid)
        except errors.MonitorError as exc:
            log.warning("could not look at folder; will retry next cycle", workset_id=workset_id, error=str(exc))
            return "error"
        except Exception:  # a bug must not stop discovery of every other folder
            log.exception("unexpected failure looking at folder; will retry next cycle", workset_id=workset_id)
            return "error"

    async def _register(
        self,
        workset_id: WorksetId,
        folder: str,
        location: str,
        priority: Priority,
        *,
        invalid: str | None = None,
        imported: State = State.READY,
        reason: str = "found in S3",
    ) -> str:
        ctx = Context(now_ms=self._clock.now_ms(), actor=self._actor, reason=reason)
        created, ws = await actions.register(
            self._store,
            workset_id=workset_id,
            bucket=self._source.bucket,
            prefix=folder,
            priority=priority,
            ctx=ctx,
            invalid_reason=invalid,
            imported=imported,
        )
        assert self._known is not None
        self._known[workset_id] = f"{ws.bucket}/{ws.prefix}"
        if not created:
            return "already_registered"
        outcome = "invalid" if invalid else ("ignored" if imported is State.IGNORED else "registered")
        log.info(
            "workset registered",
            workset_id=workset_id,
            state=ws.state.value,
            priority=priority.value,
            reason=invalid or reason,
        )
        return outcome

    async def _duplicate(self, workset_id: WorksetId, first: str, second: str) -> str:
        """Report, once, that a second folder carries a registered workset's name; the first one is kept."""
        if second in self._reported:
            return "duplicate_known"
        self._reported.add(second)
        reason = f"a folder with the same name at s3://{second} was ignored (this workset is s3://{first})"
        log.warning("duplicate workset name", workset_id=workset_id, kept=f"s3://{first}", ignored=f"s3://{second}")
        history = await self._store.history(workset_id)
        if any(e.type is EventType.DUPLICATE and e.reason == reason for e in history):
            return "duplicate"
        ctx = Context(now_ms=self._clock.now_ms(), actor=self._actor, reason=reason)
        try:
            await actions.act(self._store, workset_id, Action.REPORT_DUPLICATE, ctx)
        except errors.MonitorError as exc:
            log.warning("could not record the duplicate", workset_id=workset_id, error=str(exc))
        return "duplicate"


def _batched(items: list[tuple[WorksetId, str]], size: int) -> list[list[tuple[WorksetId, str]]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def scan_tick(scanner: Scanner, *, observe: Callable[[float], None] | None = None) -> ScanReport:
    """One pass, logged; ``observe`` gets its duration (seconds)."""
    started = time.perf_counter()
    report = await scanner.scan_once()
    if observe is not None:
        observe(time.perf_counter() - started)
    if report.outcomes:
        log.info("scan", folders=report.folders, **report.outcomes)
    return report


async def scan_forever(
    scanner: Scanner,
    loops: Loops,
    *,
    interval_s: Seconds,
    found: asyncio.Event,
    observe: Callable[[float], None] | None = None,
) -> None:
    """The scanner engine: a pass every ``interval_s()``; sets ``found`` when a folder is (newly) registered, by us or
    by another daemon."""

    async def tick() -> None:
        report = await scan_tick(scanner, observe=observe)
        if report["registered"] or report["already_registered"]:
            found.set()

    await loops.poll("scanner", tick, every_s=interval_s, stale_after_s=lambda: 3 * interval_s() + 60)
