"""Operator actions that need no daemon: register, retry, ignore, cancel, set-priority.

Each reads the workset, lets the pure core decide (refusing illegal transitions before anything is written),
and commits conditionally. When the workset changed between the read and the write (a heartbeat does not count:
it leaves the version alone), the action is re-decided on the fresh record, a few times at most.
"""

from __future__ import annotations

from monitor import errors, states
from monitor.model import Priority, State, Workset, WorksetId
from monitor.ports import Store
from monitor.states import Action, Context, Decision

_ATTEMPTS = 5


async def register(
    store: Store,
    *,
    workset_id: WorksetId,
    bucket: str,
    prefix: str,
    priority: Priority,
    ctx: Context,
    invalid_reason: str | None = None,
    imported: State = State.READY,
    imported_error: str | None = None,
    not_before_ms: int | None = None,
    samples: int | None = None,
    data_bytes: int | None = None,
) -> tuple[bool, Workset]:
    """Register a workset; returns (created, the stored record). An existing id is left exactly as it was."""
    decision = states.new_workset(
        workset_id=workset_id,
        bucket=bucket,
        prefix=prefix,
        priority=priority,
        ctx=ctx,
        invalid_reason=invalid_reason,
        imported=imported,
        imported_error=imported_error,
        not_before_ms=not_before_ms,
        samples=samples,
        data_bytes=data_bytes,
    )
    if await store.register(decision):
        return True, decision.after
    existing = await store.get(workset_id)
    if existing is None:  # deleted between the two calls: vanishingly rare, but say it plainly
        raise errors.Conflict(f"{workset_id} exists but could not be read back")
    return False, existing


async def act(
    store: Store,
    workset_id: WorksetId,
    action: Action,
    ctx: Context,
    *,
    priority: Priority | None = None,
    from_start: bool = False,
    known: Workset | None = None,
    until_ms: int | None = None,
) -> Decision:
    """Apply an operator ``action``; raises NotFound, IllegalTransition, or Conflict if it never settles.

    ``known``: the workset as the caller just read it (consistently): the first attempt decides on it without
    reading again; the conditional write refuses it if it changed since, and the next attempt reads."""
    for _ in range(_ATTEMPTS):
        ws, known = known or await store.get(workset_id), None
        if ws is None:
            raise errors.NotFound(f"workset {workset_id} is not registered")
        decision = states.decide(ws, action, ctx, priority=priority, from_start=from_start, until_ms=until_ms)
        try:
            await store.commit(decision)
        except errors.Conflict:
            continue
        return decision
    raise errors.Conflict(f"{workset_id} kept changing while we tried to {action.value}; try again")
