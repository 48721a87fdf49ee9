"""``workset-monitor migrate``: bring the worksets a legacy sentinel monitor knew into the table.

Every folder under ``scan.prefixes`` is classified by its real sentinel names with the legacy precedence (ignore >
error > complete > in_progress > lock > ready) and gets one decision:

- ``daylily.ignore`` / ``.error`` / ``.complete``: imported as ``ignored`` / ``error`` (with the legacy reason) /
  ``complete``: never run again;
- ``daylily.ready`` alone: validated like any new workset and registered ``ready`` (or ``error``, validation);
- ``daylily.in_progress`` / ``.lock``: the legacy monitor may still be running it, so an operator decides
  (``--in-flight``): ``skip`` (default: listed, nothing written), ``ready`` (validate and run it again) or ``error``;
- no sentinel: not a workset yet, left alone; already registered: left alone.

The plan is made with read-only calls, so ``--dry-run`` writes nothing and reports exactly what applying would do.
Applying is idempotent (conditional registrations); afterwards every decision is checked against the table.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from monitor import actions, legacy, validation
from monitor.clock import Clock
from monitor.model import Event, Priority, State, Workset, WorksetId, check_workset_id
from monitor.ports import Source, Store
from monitor.states import Context

InFlight = Literal["skip", "ready", "error"]
Progress = Callable[[int, int], None]
ERROR_BODY_MAX = 64 << 10


@dataclass
class Plan:
    workset_id: WorksetId
    folder: str  # "<prefix><name>/"
    sentinel: str | None
    decision: str  # import, register, skip, decide
    target: State | None = None  # the state it will have
    priority: Priority = Priority.NORMAL
    reason: str = ""
    invalid: bool = False
    current: State | None = None  # for folders already registered
    group: str = ""  # the summary's line for a skip, the same for every folder skipped for one reason
    unread: str = ""  # why the folder's sentinels were not looked at (the summary's sentinel column)


@dataclass
class Report:
    plans: list[Plan] = field(default_factory=list)
    written: int = 0
    mismatches: list[str] = field(default_factory=list)

    def by_sentinel(self) -> collections.Counter[str]:
        return collections.Counter(
            p.sentinel or (f"(not read: {p.unread})" if p.unread else "(none)") for p in self.plans
        )

    def by_decision(self) -> collections.Counter[str]:
        return collections.Counter(_label(p) for p in self.plans)


def _label(plan: Plan) -> str:
    if plan.decision in ("import", "register") and plan.target is not None:
        return f"{plan.decision} as {plan.target.value}" + (" (invalid)" if plan.invalid else "")
    return plan.decision + (f": {plan.group or plan.reason}" if plan.decision == "skip" else "")


class Migration:
    def __init__(
        self,
        store: Store,
        source: Source,
        clock: Clock,
        *,
        prefixes: list[str],
        actor: str,
        notify: Callable[[Event], bool],
        in_flight: InFlight = "skip",
        max_manifest_bytes: int = 10 << 20,
    ) -> None:
        self._store, self._source, self._clock = store, source, clock
        self._notify = notify  # which events some channel wants (states.Context.notify)
        self._prefixes = prefixes
        self._actor = actor
        self._in_flight = in_flight
        self._max_manifest_bytes = max_manifest_bytes

    async def plan(self, progress: Progress | None = None) -> Report:
        """Classify every folder and decide what to do with it. Read-only."""
        folders = [(p, n) for p in self._prefixes for n in await self._source.folders(p)]
        registered = {ws.workset_id: ws for ws in await self._store.list()}
        report = Report()
        for done, (prefix, name) in enumerate(folders, start=1):
            report.plans.append(await self._plan_one(prefix, name, registered))
            if progress:
                progress(done, len(folders))
        return report

    async def apply(self, report: Report, progress: Progress | None = None) -> Report:
        """Register what the plan says, then check every decision against the table."""
        todo = [p for p in report.plans if p.decision in ("import", "register")]
        for done, plan in enumerate(todo, start=1):
            created, _ = await actions.register(
                self._store,
                workset_id=plan.workset_id,
                bucket=self._source.bucket,
                prefix=plan.folder,
                priority=plan.priority,
                ctx=Context(now_ms=self._clock.now_ms(), actor=self._actor, reason=plan.reason, notify=self._notify),
                invalid_reason=plan.reason if plan.invalid else None,
                imported=plan.target if plan.target and not plan.invalid else State.READY,
                imported_error=plan.reason if plan.target is State.ERROR else None,
            )
            report.written += created
            if progress:
                progress(done, len(todo))
        report.mismatches = await self.verify(report)
        return report

    async def verify(self, report: Report) -> list[str]:
        """Every planned state must now be in the table (re-counted from a fresh listing)."""
        actual = {ws.workset_id: ws for ws in await self._store.list()}
        problems = []
        for plan in report.plans:
            expected = plan.target if plan.decision in ("import", "register") else plan.current
            if expected is None:
                if plan.workset_id in actual and actual[plan.workset_id].prefix == plan.folder:
                    problems.append(f"{plan.workset_id}: planned to be left alone, but it is registered")
                continue
            found = actual.get(plan.workset_id)
            if found is None:
                problems.append(f"{plan.workset_id}: expected {expected.value}, not registered")
            elif found.prefix != plan.folder:
                problems.append(f"{plan.workset_id}: registered from s3://{found.bucket}/{found.prefix} instead")
            elif plan.decision != "skip" and found.state is not expected:
                problems.append(f"{plan.workset_id}: expected {expected.value}, found {found.state.value}")
        return problems

    async def _plan_one(self, prefix: str, name: str, registered: dict[WorksetId, Workset]) -> Plan:
        folder = f"{prefix}{name}/"
        try:
            workset_id = check_workset_id(name)
        except ValueError:
            return Plan(
                WorksetId(name),
                folder,
                None,
                "skip",
                reason=f"folder name {name!a} is not a valid id (the scanner registers it as invalid)",
                group="folder name is not a valid id (the scanner registers it as invalid)",
                unread="invalid name",
            )
        if workset_id in registered:
            current = registered[workset_id]
            same = (current.bucket, current.prefix) == (self._source.bucket, folder)
            reason = (
                "already registered"
                if same
                else (f"the name is already registered from s3://{current.bucket}/{current.prefix}")
            )
            group = "already registered" if same else "the name is already registered from another folder"
            return Plan(
                workset_id,
                folder,
                None,
                "skip",
                reason=reason,
                current=current.state if same else None,
                group=group,
                unread="registered already",
            )
        listing = await self._source.top_level(folder)
        sentinel = legacy.classify(listing.files)
        plan = Plan(workset_id, folder, sentinel, "import")
        if sentinel is None:
            plan.decision, plan.reason = "skip", "no sentinel: not a workset yet"
        elif sentinel == legacy.IGNORE:
            plan.target, plan.reason = State.IGNORED, f"migrated: {legacy.IGNORE}"
        elif sentinel == legacy.COMPLETE:
            plan.target, plan.reason = State.COMPLETE, f"migrated: {legacy.COMPLETE}"
        elif sentinel == legacy.ERROR:
            body = await self._source.read(folder + legacy.ERROR, max_bytes=ERROR_BODY_MAX)
            plan.target, plan.reason = State.ERROR, f"migrated: {legacy.error_reason(body)}"
        elif sentinel in legacy.IN_FLIGHT and self._in_flight == "skip":
            plan.decision = "decide"
            plan.reason = f"{sentinel}: the legacy monitor may still be running it (choose with --in-flight)"
        elif sentinel in legacy.IN_FLIGHT and self._in_flight == "error":
            plan.target, plan.reason = State.ERROR, f"migrated: {sentinel} left by the legacy monitor"
        else:  # ready, or in flight and the operator chose to run it again
            verdict = await validation.validate(
                self._source, folder=folder, listing=listing, max_manifest_bytes=self._max_manifest_bytes
            )
            plan.decision, plan.priority = "register", verdict.priority
            if verdict.kind == "invalid":
                plan.target, plan.invalid, plan.reason = State.ERROR, True, verdict.reason
            else:
                plan.target, plan.reason = State.READY, f"migrated: {sentinel}"
        return plan
