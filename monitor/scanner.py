"""Discovery: find new workset folders under ``scan.prefixes`` and register each exactly once.

Cost model (the budget ``bench/scan_cost.py`` holds us to):

- At start, one paginated read of the registered ids and their locations (index keys only); none with a warm
  known-folders file (``[run] state_dir``, ``known_folders``): a restart then reads only what the table learnt since.
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from monitor import actions, errors, logs, validation
from monitor.clock import Clock
from monitor.known_folders import KnownFolders
from monitor.live import reader
from monitor.loops import Loops, Seconds
from monitor.model import Event, EventType, Folder, Priority, State, WorksetId
from monitor.ports import Source, Store
from monitor.roles import Chores
from monitor.states import Action, Context

log = logs.get("monitor.scanner")

_LOOKUP_BATCH = 100
_ID_CHARS = "A-Z a-z 0-9 . _ -"


class Found(StrEnum):
    """What a scan made of one folder."""

    REGISTERED = "registered"
    ALREADY_REGISTERED = "already_registered"  # by another daemon, or an operator, meanwhile
    INVALID = "invalid"  # registered as error (validation)
    IGNORED = "ignored"  # registered as ignored (daylily.ignore)
    PENDING = "pending"  # no daylily.ready yet
    LEGACY = "legacy"  # left to `workset-monitor migrate`
    DUPLICATE = "duplicate"  # another folder carries a registered workset's name: reported
    DUPLICATE_KNOWN = "duplicate_known"  # ... and was reported already
    ERROR = "error"  # could not look at it now; next cycle


@dataclass
class ScanReport:
    folders: int = 0
    outcomes: collections.Counter[Found] = field(default_factory=collections.Counter)

    def __getitem__(self, outcome: Found) -> int:
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
        notify: Callable[[Event], bool],
        memory: KnownFolders | None = None,
    ) -> None:
        """``prefixes`` and ``max_manifest_bytes`` may be getters, read at every scan (a reload applies live);
        ``notify`` says which events some channel wants (``states.Context.notify``); ``memory`` keeps the registered
        folders on disk between restarts."""
        self._store = store
        self._source = source
        self._clock = clock
        self.prefixes = reader(prefixes)
        self._actor = actor
        self._max_manifest_bytes = reader(max_manifest_bytes)
        self._notify = notify
        self._known: dict[WorksetId, str] | None = None  # id -> Folder.location
        self._memory = memory
        self._identity: str | None = None  # the table's, once the memory is used
        self._unsaved: dict[WorksetId, str] = {}  # learnt since the memory was last written
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
            unknown: list[Folder] = []
            for name in names:
                folder = self.folder(prefix, name)
                seen = known.get(folder.workset_id)
                if seen == folder.location or folder.location in self._legacy:
                    continue
                if seen is not None:
                    report.outcomes[await self._duplicate(folder, seen)] += 1
                    continue
                unknown.append(folder)
            for batch in _batched(unknown, _LOOKUP_BATCH):
                self._learn(await self._store.locations([folder.workset_id for folder in batch]))
                for folder in batch:
                    if known.get(folder.workset_id) != folder.location:  # registered there meanwhile: nothing to do
                        report.outcomes[await self._unless_known(folder, known)] += 1
        self.totals.update(report.outcomes)
        await self._save()
        return report

    async def register_if_new(self, prefix: str, name: str) -> Found:
        """Register one folder unless it is known (event mode); the same rules and outcomes as a scan. A scanner that
        has not scanned yet (a daemon without the chores role) looks the one name up rather than reading every
        registered id."""
        folder = self.folder(prefix, name)
        known = self._known if self._known is not None else {}
        if folder.workset_id not in known:
            found_there = await self._store.locations([folder.workset_id])
            self._learn(found_there)
            known = self._known if self._known is not None else found_there
        found = await self._unless_known(folder, known)
        await self._save()
        return found

    async def _unless_known(self, folder: Folder, known: dict[WorksetId, str]) -> Found:
        location = known.get(folder.workset_id)
        if location is None:
            return await self.consider(folder)
        if location == folder.location:
            return Found.ALREADY_REGISTERED
        return await self._duplicate(folder, location)

    async def _known_ids(self) -> dict[WorksetId, str]:
        if self._known is None:
            remembered = await self._remembered()
            if remembered is not None:
                self._known = remembered
                log.info("known worksets loaded from the known-folders file", count=len(remembered))
            else:
                self._known = await self._store.locations()
                log.info("known worksets loaded", count=len(self._known))
                if self._memory is not None and self._identity is not None:
                    await self._memory.replace(self._identity, self._known)
        return self._known

    async def _remembered(self) -> dict[WorksetId, str] | None:
        if self._memory is None:
            return None
        try:
            self._identity = await self._store.identity()
        except errors.MonitorError as exc:  # say DescribeTable is not allowed: scan without the file
            log.warning("cannot tell which table this is; not using the known-folders file", error=str(exc))
            self._memory = None
            return None
        return await self._memory.load(self._identity)

    def _learn(self, found: dict[WorksetId, str]) -> None:
        if self._known is not None:  # else nothing to add to yet: the first scan reads them all
            self._known |= found
            self._unsaved |= found

    async def _save(self) -> None:
        if self._unsaved and self._memory is not None and self._identity is not None:
            unsaved, self._unsaved = self._unsaved, {}
            await self._memory.add(self._identity, unsaved)

    def folder(self, prefix: str, name: str) -> Folder:
        return Folder(self._source.bucket, prefix, name)

    async def consider(self, folder: Folder) -> Found:
        """Look at one folder not registered yet and register it if it is a workset; returns the outcome."""
        workset_id = folder.workset_id
        try:
            if folder.stand_in:
                reason = f"folder name {folder.name!a} is not a valid workset id: use 1-128 characters from {_ID_CHARS}"
                return await self._register(folder, Priority.NORMAL, invalid=reason)
            limit = self._max_manifest_bytes()
            verdict = await validation.inspect(self._source, folder=folder.key, max_manifest_bytes=limit)
            if verdict.kind == "pending":
                return Found.PENDING
            if verdict.kind == "legacy":
                self._legacy.add(folder.location)
                log.warning(
                    "legacy workset left for `workset-monitor migrate`",
                    workset_id=workset_id,
                    sentinel=verdict.sentinel,
                )
                return Found.LEGACY
            if verdict.kind == "ignored":
                return await self._register(folder, verdict.priority, imported=State.IGNORED, reason=verdict.reason)
            if verdict.kind == "invalid":
                return await self._register(folder, verdict.priority, invalid=verdict.reason)
            return await self._register(folder, verdict.priority, not_before_ms=verdict.not_before_ms, verdict=verdict)
        except errors.MonitorError as exc:
            log.warning("could not look at folder; will retry next cycle", workset_id=workset_id, error=str(exc))
            return Found.ERROR
        except Exception:  # a bug must not stop discovery of every other folder
            log.exception("unexpected failure looking at folder; will retry next cycle", workset_id=workset_id)
            return Found.ERROR

    async def _register(
        self,
        folder: Folder,
        priority: Priority,
        *,
        invalid: str | None = None,
        imported: State = State.READY,
        reason: str = "found in S3",
        not_before_ms: int | None = None,
        verdict: validation.Verdict | None = None,
    ) -> Found:
        workset_id = folder.workset_id
        ctx = Context(now_ms=self._clock.now_ms(), actor=self._actor, reason=reason, notify=self._notify)
        created, ws = await actions.register(
            self._store,
            workset_id=workset_id,
            bucket=folder.bucket,
            prefix=folder.key,
            priority=priority,
            ctx=ctx,
            invalid_reason=invalid,
            imported=imported,
            not_before_ms=not_before_ms,
            samples=verdict.samples if verdict is not None else None,
            data_bytes=verdict.data_bytes if verdict is not None else None,
        )
        self._learn({workset_id: f"{ws.bucket}/{ws.prefix}"})
        if not created:
            return Found.ALREADY_REGISTERED
        outcome = Found.INVALID if invalid else (Found.IGNORED if imported is State.IGNORED else Found.REGISTERED)
        log.info(
            "workset registered",
            workset_id=workset_id,
            state=ws.state.value,
            priority=priority.value,
            reason=invalid or reason,
        )
        return outcome

    async def _duplicate(self, folder: Folder, first: str) -> Found:
        """Report, once, that a second folder carries a registered workset's name; the first one is kept."""
        workset_id, second = folder.workset_id, folder.location
        if second in self._reported:
            return Found.DUPLICATE_KNOWN
        self._reported.add(second)
        reason = f"a folder with the same name at s3://{second} was ignored (this workset is s3://{first})"
        log.warning("duplicate workset name", workset_id=workset_id, kept=f"s3://{first}", ignored=f"s3://{second}")
        history = await self._store.history(workset_id)
        if any(e.type is EventType.DUPLICATE and e.reason == reason for e in history):
            return Found.DUPLICATE
        ctx = Context(now_ms=self._clock.now_ms(), actor=self._actor, reason=reason, notify=self._notify)
        try:
            await actions.act(self._store, workset_id, Action.REPORT_DUPLICATE, ctx)
        except errors.MonitorError as exc:
            log.warning("could not record the duplicate", workset_id=workset_id, error=str(exc))
        return Found.DUPLICATE


def _batched(items: list[Folder], size: int) -> list[list[Folder]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def scan_tick(scanner: Scanner, *, observe: Callable[[float], None] | None = None) -> ScanReport:
    """One pass, logged; ``observe`` gets its duration (seconds)."""
    started = time.perf_counter()
    report = await scanner.scan_once()
    if observe is not None:
        observe(time.perf_counter() - started)
    if report.outcomes:
        log.info("scan", folders=report.folders, **{found.value: n for found, n in report.outcomes.items()})
    return report


async def scan_forever(
    scanner: Scanner,
    loops: Loops,
    *,
    interval_s: Seconds,
    found: asyncio.Event,
    observe: Callable[[float], None] | None = None,
    chores: Chores | None = None,
) -> None:
    """The scanner engine: a pass every ``interval_s()``; sets ``found`` when a folder is (newly) registered, by us or
    by another daemon. With ``chores``, only while this daemon holds the chores role (a pass at once when it takes
    it); the other daemons' claimers find what it registers at their next round."""
    wake = chores.wake_on_take() if chores is not None else None

    async def tick() -> None:
        if chores is not None and not chores.held():
            return
        report = await scan_tick(scanner, observe=observe)
        if report[Found.REGISTERED] or report[Found.ALREADY_REGISTERED]:
            found.set()

    await loops.poll("scanner", tick, every_s=interval_s, stale_after_s=lambda: 3 * interval_s() + 60, wake=wake)
