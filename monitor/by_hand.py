"""One workset run by hand (``workset-monitor run --workset ID [--step NAME]``): claimed through the normal lease,
driven as the daemon drives it (heartbeat, fencing, the same records), so a daemon and an operator never both run it.

Refused before anything is written, each with what to do instead: an unknown id, a stand-in for a badly named
folder, a workset another holder runs, one whose state does not allow a claim (``retry`` re-opens it), a retrying
one not due yet, a fleet at its cap. A workset an operator took from a running holder (``release``) is held off as
for any claimer: we wait ``takeover_after_s`` on our own monotonic clock, watching that nothing changed, so the old
holder's step has stopped before ours starts.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

from monitor import errors, logs, registration, states
from monitor.clock import Clock, iso
from monitor.holding import Holding
from monitor.model import Lease, State, Workset, WorksetId
from monitor.policy import Policy
from monitor.ports import Store
from monitor.states import Action

log = logs.get("monitor.by_hand")


async def claim(
    store: Store,
    clock: Clock,
    *,
    workset_id: WorksetId,
    owner: str,
    policy: Policy,
    say: Callable[[str], None],
    rng: random.Random | None = None,
) -> Holding:
    """Claim ``workset_id`` for ``owner``, or raise an operator-facing error saying why not and what to do."""
    ws = await _claimable(store, workset_id, clock)
    if ws.held_off_for is not None:
        wait_s = policy.takeover_after_s
        say(
            f"{workset_id} was taken from {ws.held_off_for}, whose step may still be running: "
            f"waiting {wait_s:g} s ([lease] duration_s + grace_s) before starting"
        )
        version = ws.version
        await clock.sleep(wait_s)
        ws = await _claimable(store, workset_id, clock)
        if ws.version != version:
            raise errors.Conflict(f"{workset_id} changed while we waited ({ws.state.value} now): run it again")
    now_ms = clock.now_ms()
    rng = rng or random.Random()
    lease = Lease(
        token=uuid.UUID(int=rng.getrandbits(128), version=4).hex,
        owner=owner,
        heartbeat_at_ms=now_ms,
        expires_at_ms=now_ms + round(policy.duration_s * 1000),
    )
    decision = states.decide(
        ws, Action.CLAIM, policy.context(now_ms=now_ms, actor=owner, reason="run by hand"), lease=lease
    )
    renewed_at = clock.monotonic()
    try:
        after = await store.commit(decision, fleet_cap=policy.fleet_cap)
    except errors.Paused as exc:
        raise errors.Conflict(f"{workset_id} not claimed: {exc}; `workset-monitor resume` ends the pause") from None
    except errors.FleetFull:
        raise errors.Conflict(
            f"{workset_id} not claimed: {policy.fleet_cap} worksets are in progress fleet-wide "
            "([run] max_fleet_concurrent); try again when one has finished"
        ) from None
    except errors.Conflict:
        current = await store.get(workset_id)
        holder = f" by {current.lease.owner}" if current is not None and current.lease is not None else ""
        state = current.state.value if current is not None else "gone"
        raise errors.Conflict(f"{workset_id} changed as we claimed it ({state}{holder}): nothing was run") from None
    return Holding(store, clock, ws=after, policy=policy, renewed_at=renewed_at, rng=rng)


async def _claimable(store: Store, workset_id: WorksetId, clock: Clock) -> Workset:
    ws = await store.get(workset_id)
    if ws is None:
        raise errors.NotFound(f"workset {workset_id} is not registered")
    registration.refuse_stand_in(ws)
    if ws.state is State.IN_PROGRESS:
        holder = ws.lease.owner if ws.lease is not None else "another holder"
        raise errors.Conflict(
            f"{workset_id} is being run by {holder}: not started here. Wait for it, or take it back with "
            f"`workset-monitor release {workset_id} --reason ...` and run it again"
        )
    if ws.state not in (State.READY, State.RETRYING):
        raise errors.IllegalTransition(
            f"{workset_id} is {ws.state.value}: only a ready or retrying workset can be run; "
            f"`workset-monitor retry {workset_id}` re-opens it",
            state=ws.state.value,
            action=Action.CLAIM.value,
        )
    if states.scheduled(ws) and ws.available_at_ms > clock.now_ms():
        raise errors.IllegalTransition(
            f"{workset_id} is scheduled: not before {iso(ws.available_at_ms)}; "
            f"`workset-monitor defer {workset_id} --until now` brings it forward",
            state=ws.state.value,
            action=Action.CLAIM.value,
        )
    if ws.state is State.RETRYING and ws.available_at_ms > clock.now_ms():
        raise errors.IllegalTransition(
            f"{workset_id} is retrying and not due until {iso(ws.available_at_ms)}: "
            f"`workset-monitor retry {workset_id}` makes it ready now",
            state=ws.state.value,
            action=Action.CLAIM.value,
        )
    return ws
