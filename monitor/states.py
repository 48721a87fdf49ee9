"""The pure core: which action is legal in which state, and what the workset looks like afterwards.

Every change to a workset goes through ``decide``: it refuses illegal actions with ``IllegalTransition`` and
otherwise returns the new control record plus the audit event to commit with it, in one transaction. Time and
randomness are parameters, so every rule here is tested exhaustively without I/O.

The table (``TABLE``) maps (state, action) to the next state. Two actions end in a state chosen by the attempt
count: a temporary failure and a lease expiry go to ``retrying`` while attempts remain, else to ``error`` (the
dead letter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from monitor import errors
from monitor.model import FINISHED_STATES, Event, EventType, Lease, Priority, State, StepRun, Workset, WorksetId

MAX_ERROR_CHARS = 400  # last_error on the control item; full detail lives in the event
MAX_DETAIL_CHARS = 8000  # an event's detail (error or output tail); events must stay far below 400 KB
MAX_REASON_CHARS = 1000  # an event's reason (an operator's --reason, a scanner's verdict)
MAX_ACTOR_CHARS = 200

VALIDATION = "validation"  # error_category of a workset whose folder failed validation


class Action(StrEnum):
    CLAIM = "claim"
    STEP_FINISHED = "step_finished"
    COMPLETE = "complete"
    FAIL_TEMPORARY = "fail_temporary"
    FAIL_PERMANENT = "fail_permanent"
    RELEASE = "release"  # the holder gives the workset back (shutdown): no failure counted
    FORCE_RELEASE = "force_release"  # an operator takes the lease away: no failure counted
    EXPIRE = "expire"  # the sweeper found the holder dead
    RETRY = "retry"
    RETRY_FORCE = "retry_force"
    IGNORE = "ignore"
    CANCEL = "cancel"
    SET_PRIORITY = "set_priority"
    REPORT_DUPLICATE = "report_duplicate"  # the same folder name turned up under another prefix: audited, no change
    DEFER = "defer"  # an operator schedules a ready workset: not claimed before ``until_ms``


_RETRY_OR_DEAD = "retrying-or-error"  # marker: decided by attempts vs max_attempts
# Operator actions that take a lease away from a holder that may still be running (not its own release, not the
# sweeper's takeover of a holder that has stopped): the workset is marked held off (``Workset.held_off_for``).
_TAKES_THE_LEASE = frozenset({Action.FORCE_RELEASE, Action.CANCEL, Action.IGNORE})

S = State
_ANY = tuple(State)
_REOPENABLE = (S.ERROR, S.CANCELLED, S.RETRYING)

TABLE: dict[tuple[State, Action], State | str] = {
    **{(s, Action.CLAIM): S.IN_PROGRESS for s in (S.READY, S.RETRYING)},
    (S.IN_PROGRESS, Action.STEP_FINISHED): S.IN_PROGRESS,
    (S.IN_PROGRESS, Action.COMPLETE): S.COMPLETE,
    (S.IN_PROGRESS, Action.FAIL_TEMPORARY): _RETRY_OR_DEAD,
    (S.IN_PROGRESS, Action.FAIL_PERMANENT): S.ERROR,
    (S.IN_PROGRESS, Action.RELEASE): S.READY,
    (S.IN_PROGRESS, Action.FORCE_RELEASE): S.READY,
    (S.IN_PROGRESS, Action.EXPIRE): _RETRY_OR_DEAD,
    **{(s, Action.RETRY): S.READY for s in _REOPENABLE},
    **{(s, Action.RETRY_FORCE): S.READY for s in (*_REOPENABLE, S.COMPLETE, S.IGNORED)},
    **{(s, Action.IGNORE): S.IGNORED for s in _ANY if s is not S.IGNORED},
    **{(s, Action.CANCEL): S.CANCELLED for s in (S.READY, S.RETRYING, S.IN_PROGRESS)},
    **{(s, Action.SET_PRIORITY): s for s in _ANY},
    **{(s, Action.REPORT_DUPLICATE): s for s in _ANY},
    (S.READY, Action.DEFER): S.READY,
}

_HINTS: dict[tuple[State, Action], str] = {
    (S.COMPLETE, Action.RETRY): "re-opening a complete workset needs retry --force",
    (S.IGNORED, Action.RETRY): "re-opening an ignored workset needs retry --force",
    (S.READY, Action.RETRY): "it is already waiting to be claimed",
    (S.READY, Action.RETRY_FORCE): "it is already waiting to be claimed",
    (S.IN_PROGRESS, Action.RETRY): "it is running; cancel or release it first",
    (S.IN_PROGRESS, Action.RETRY_FORCE): "it is running; cancel or release it first",
    (S.IGNORED, Action.IGNORE): "it is ignored already; retry --force re-opens it",
    **{
        (s, Action.CANCEL): f"only ready, retrying or running worksets can be cancelled; {hint}"
        for s, hint in (
            (S.COMPLETE, "it is done (retry --force runs it again)"),
            (S.ERROR, "ignore it to set it aside, or retry it"),
            (S.CANCELLED, "it is cancelled already (retry re-opens it)"),
            (S.IGNORED, "it is ignored already (retry --force re-opens it)"),
        )
    },
    **{
        (s, Action.FORCE_RELEASE): "only a running workset can be released; `show ID` says who holds what"
        for s in _ANY
        if s is not S.IN_PROGRESS
    },
    **{(s, Action.DEFER): "only a ready workset can be scheduled" for s in _ANY if s is not S.READY},
}
_SAID = {Action.RETRY_FORCE: "retry --force", Action.FORCE_RELEASE: "release", Action.SET_PRIORITY: "reprioritise"}

_EVENT_FOR: dict[Action, EventType] = {
    Action.CLAIM: EventType.STARTED,
    Action.FAIL_TEMPORARY: EventType.RETRYING,
    Action.STEP_FINISHED: EventType.STEP_FINISHED,
    Action.COMPLETE: EventType.COMPLETE,
    Action.FAIL_PERMANENT: EventType.ERROR,
    Action.RELEASE: EventType.RELEASED,
    Action.FORCE_RELEASE: EventType.RELEASED,
    Action.EXPIRE: EventType.LEASE_EXPIRED,
    Action.RETRY: EventType.REOPENED,
    Action.RETRY_FORCE: EventType.REOPENED,
    Action.IGNORE: EventType.IGNORED,
    Action.CANCEL: EventType.CANCELLED,
    Action.SET_PRIORITY: EventType.PRIORITY_CHANGED,
    Action.REPORT_DUPLICATE: EventType.DUPLICATE,
    Action.DEFER: EventType.DEFERRED,
}


def target(state: State, action: Action, *, attempts: int, max_attempts: int) -> State:
    """The state ``action`` leads to from ``state``; raises IllegalTransition when the table refuses it."""
    found = TABLE.get((state, action))
    if found is None:
        hint = _HINTS.get((state, action))
        message = f"cannot {_SAID.get(action, action.value.replace('_', ' '))} a workset that is {state.value}"
        raise errors.IllegalTransition(
            f"{message}: {hint}" if hint else message, state=state.value, action=action.value
        )
    if found == _RETRY_OR_DEAD:
        return State.RETRYING if attempts < max_attempts else State.ERROR
    return State(found)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with equal jitter: attempt n waits between d/2 and d, d = min(cap, base * 2^(n-1))."""

    base_s: float = 60.0
    cap_s: float = 3600.0

    def delay_s(self, attempt: int, *, rand: float) -> float:
        """Delay before the next attempt after ``attempt`` failed ones; ``rand`` is uniform in [0, 1)."""
        exponent = min(max(attempt, 1) - 1, 62)  # no float overflow for absurd attempt counts
        ceiling = min(self.cap_s, self.base_s * 2.0**exponent)
        return ceiling / 2 + rand * ceiling / 2


def nobody(event: Event) -> bool:
    """The notification policy of a context that has none: no channel wants any event."""
    return False


@dataclass(frozen=True, slots=True)
class Context:
    """Everything ``decide`` needs besides the workset: who acts, when, the retry policy, and which events some
    notification channel wants (those enter the outbox: the event is written ``pending``). Every writer in the
    daemon and the CLI passes its configuration's ``notify`` (``tests/test_architecture.py`` checks)."""

    now_ms: int
    actor: str
    reason: str = ""
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    rand: float = 0.5
    notify: Callable[[Event], bool] = nobody


@dataclass(frozen=True, slots=True)
class Decision:
    before: Workset
    after: Workset
    event: Event


def _available_at(
    ws: Workset, action: Action, new_state: State, ctx: Context, until_ms: int | None
) -> dict[str, object]:
    """When the workset may next be claimed: after a backoff (retrying), at an operator's time (defer), now (ready),
    unchanged otherwise. A new priority keeps a schedule."""
    if new_state is State.RETRYING:
        delay_s = ctx.backoff.delay_s(ws.attempts, rand=ctx.rand)
        return {"available_at_ms": ctx.now_ms + round(delay_s * 1000)}
    if action is Action.DEFER:
        if until_ms is None:
            raise ValueError("defer needs the time")
        return {"available_at_ms": max(until_ms, ctx.now_ms)}  # a time passed: due now (brought forward)
    if new_state is State.READY and not (action is Action.SET_PRIORITY and scheduled(ws)):
        return {"available_at_ms": ctx.now_ms}
    return {}


def scheduled(ws: Workset) -> bool:
    """A ready workset whose run was scheduled for later (``register --not-before``, ``defer``, ``not_before:``):
    its writer set ``available_at`` past the moment of its own write. Every other ready workset has ``available_at``
    equal to the write's time, on one clock, so it is due whatever the reader's clock says."""
    return ws.state is State.READY and ws.available_at_ms > ws.updated_at_ms


def due(ws: Workset, now_ms: int) -> bool:
    """Whether a claimer may claim ``ws`` now: a ready one unless scheduled for later than ``now_ms``, a retrying one
    once its backoff has passed (the scheduling is by wall clock: a matter of time, not of safety)."""
    if ws.state is State.READY:
        return not scheduled(ws) or ws.available_at_ms <= now_ms
    return ws.state is State.RETRYING and ws.available_at_ms <= now_ms


def gsi_sort_key(ws: Workset) -> str:
    """Sort key of the state-priority index: urgent first, then FIFO by available_at, then id."""
    return f"{ws.priority.rank}#{ws.available_at_ms:015d}#{ws.workset_id}"


FINISHED_RANK = "9"  # a finished workset's place in a listing: after every priority rank, in the order they finished


def finished_sort_key(ws: Workset) -> str | None:
    """A finished workset's key in the finished index and its place in listings: by when it finished. None for a
    workset that is not finished, or that finished before that time was kept (it stays in the state index)."""
    if ws.state not in FINISHED_STATES or ws.finished_at_ms is None:
        return None
    return f"{FINISHED_RANK}#{ws.finished_at_ms:015d}#{ws.workset_id}"


def list_sort_key(ws: Workset) -> str:
    """A workset's place within its state in listings: the index it is in, that index's order."""
    return finished_sort_key(ws) or gsi_sort_key(ws)


def new_workset(
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
) -> Decision:
    """The first record of a workset (a ready one scheduled for ``not_before_ms`` if that is later than now), with
    what validation counted (``samples``, ``data_bytes``) when it did.

    Normally ``ready``; ``error`` with category validation (and an ``invalid`` event) when ``invalid_reason`` is
    given; or the ``imported`` state a migration found in legacy sentinels (``imported_error`` for a legacy error).
    """
    state = State.ERROR if invalid_reason else imported
    error = invalid_reason or (imported_error if state is State.ERROR else None)
    category = VALIDATION if invalid_reason else ("legacy" if state is State.ERROR else None)
    ws = Workset(
        workset_id=workset_id,
        state=state,
        priority=priority,
        bucket=bucket,
        prefix=prefix,
        created_at_ms=ctx.now_ms,
        updated_at_ms=ctx.now_ms,
        available_at_ms=max(ctx.now_ms, not_before_ms or 0) if state is State.READY else ctx.now_ms,
        last_error=_short(error) if error else None,
        error_category=category,
        finished_at_ms=ctx.now_ms if state in FINISHED_STATES else None,  # imported finished: finished as registered
        samples=samples,
        data_bytes=data_bytes,
    )
    event = Event(
        workset_id=workset_id,
        seq=ws.version,
        type=EventType.INVALID if invalid_reason else EventType.REGISTERED,
        at_ms=ctx.now_ms,
        actor=table_text(ctx.actor, MAX_ACTOR_CHARS),
        from_state=None,
        to_state=state,
        reason=table_text(invalid_reason or ctx.reason, MAX_REASON_CHARS),
        priority=priority,
        detail=_bounded(error or ""),
    )
    # A placeholder "before": registration has no prior record; stores treat version 0 as "must not exist".
    return Decision(before=dataclasses.replace(ws, version=0), after=ws, event=_announced(event, ctx))


def decide(
    ws: Workset,
    action: Action,
    ctx: Context,
    *,
    lease: Lease | None = None,
    step: str | None = None,
    error: str | None = None,
    error_category: str | None = None,
    priority: Priority | None = None,
    detail: str = "",
    from_start: bool = False,
    run: StepRun | None = None,
    until_ms: int | None = None,
) -> Decision:
    """Apply ``action`` to ``ws``: the new record and its event, or IllegalTransition. A retry resumes at the first
    unfinished step, unless ``from_start`` (or the workset is complete: it has no unfinished step). ``run``: the step
    run this change ends (its timings go on the event; a finished step's duration on the record too)."""
    new_state = target(ws.state, action, attempts=ws.attempts, max_attempts=ctx.max_attempts)
    changes: dict[str, object] = {
        "state": new_state,
        "version": ws.version + 1,
        "updated_at_ms": ctx.now_ms,
    }
    event_type = _EVENT_FOR[action]

    if action is Action.CLAIM:
        if lease is None:
            raise ValueError("a claim needs the new lease")
        # A retrying workset waits out its backoff, a scheduled one its time; any other ready one's available_at only
        # orders the queue (a hand run on a host whose clock is behind must not see a new workset as "not due").
        if not due(ws, ctx.now_ms):
            raise errors.IllegalTransition(
                f"cannot claim {ws.workset_id}: not due until {ws.available_at_ms}",
                state=ws.state.value,
                action=action.value,
            )
        changes |= {
            "lease": lease,
            "attempts": ws.attempts + 1,
            "epoch": ws.epoch + 1,
            "current_step": None,
            "held_off_for": None,
            # the run's first counted attempt starts it (a claim from the index does not see the stored value)
            "started_at_ms": ctx.now_ms if ws.attempts == 0 else ws.started_at_ms,
        }
    elif action is Action.STEP_FINISHED:
        if not step:
            raise ValueError("step_finished needs the step name")
        # a step run again (by hand) keeps its place: the list says which steps are done, once each
        changes |= {"steps_done": tuple(dict.fromkeys((*ws.steps_done, step))), "current_step": None}
        if run is not None:
            changes |= {"step_ms": tuple(sorted({**dict(ws.step_ms), step: run.duration_ms}.items()))}
    elif action in (Action.RELEASE, Action.FORCE_RELEASE):
        changes |= {"attempts": max(ws.attempts - 1, 0)}  # a released claim gives its attempt back
    elif action is Action.SET_PRIORITY:
        if priority is None:
            raise ValueError("set_priority needs the new priority")
        changes |= {"priority": priority}

    if new_state is not State.IN_PROGRESS:
        changes |= {"lease": None, "current_step": None}
        if ws.lease is not None and action in _TAKES_THE_LEASE:
            # Its holder may still be running the step: the mark holds off the next claim until it has surely
            # stopped, judged by each claimer's monotonic clock (never by comparing wall clocks).
            changes |= {"held_off_for": ws.lease.owner}
    if new_state.terminal and (not ws.state.terminal or (new_state in FINISHED_STATES and ws.finished_at_ms is None)):
        # (a finished one without the time, as a validation error ignored, finishes now: it is counted from then)
        changes |= {"finished_at_ms": ctx.now_ms}
    changes |= _available_at(ws, action, new_state, ctx, until_ms)
    if action is Action.FAIL_TEMPORARY:
        # An expiry stays "lease_expired" either way: the event says why, the state says what next.
        event_type = EventType.RETRYING if new_state is State.RETRYING else EventType.ERROR

    if action in (Action.FAIL_TEMPORARY, Action.FAIL_PERMANENT, Action.EXPIRE):
        default_category = "lease" if action is Action.EXPIRE else "step"
        changes |= {
            "last_error": _short(error or ctx.reason),
            "error_category": error_category or default_category,
        }
    if new_state is State.READY and action in (Action.RETRY, Action.RETRY_FORCE):
        # A re-opened workset starts with fresh attempts and no error (the trail keeps the old ones), at the first
        # step it has not finished: a finished step is not run again unless asked.
        changes |= {
            "attempts": 0,
            "last_error": None,
            "error_category": None,
            "started_at_ms": None,
            "finished_at_ms": None,
        }
        if from_start or ws.state is State.COMPLETE or not ws.steps_done:
            changes |= {"steps_done": (), "step_ms": ()}
            detail = "from the first step"
        else:
            detail = "resumes after the finished steps: " + ", ".join(ws.steps_done)
    if new_state is State.COMPLETE:
        changes |= {"last_error": None, "error_category": None}

    after = dataclasses.replace(ws, **changes)  # type: ignore[arg-type]
    event = Event(
        workset_id=ws.workset_id,
        seq=after.version,
        type=event_type,
        at_ms=ctx.now_ms,
        actor=table_text(ctx.actor, MAX_ACTOR_CHARS),
        from_state=ws.state,
        to_state=after.state,
        reason=table_text(ctx.reason or step or "", MAX_REASON_CHARS),
        attempt=after.attempts if action is Action.CLAIM else ws.attempts,
        epoch=after.epoch,
        detail=_bounded(error or detail),
        priority=after.priority,
        step_run=run,
    )
    return Decision(before=ws, after=after, event=_announced(event, ctx))


def _announced(event: Event, ctx: Context) -> Event:
    """The event, pending in the notification outbox if some channel wants it."""
    return dataclasses.replace(event, pending=True) if ctx.notify(event) else event


def table_text(text: str, limit: int, *, keep: str = "start") -> str:
    """The one rule for text written to the table: valid UTF-8 (a lone surrogate, what Python makes of a byte that
    is not UTF-8 in an argument or a file name, becomes U+FFFD), at most ``limit`` characters (the start kept, or
    with ``keep="end"`` the end: an output's tail), an ellipsis where it was cut. Secrets never get this far: steps
    do not see them (``[run] step_env_passthrough``) and channels' keys are never part of an event."""
    if not text.isascii():
        try:
            raw = text.encode("utf-8", "surrogateescape")  # the bytes the surrogates stood for...
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "replace")
        text = raw.decode("utf-8", "replace")  # ...shown as U+FFFD
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if keep == "start" else "…" + text[-(limit - 1) :]


def _bounded(text: str) -> str:
    return table_text(text, MAX_DETAIL_CHARS, keep="end")


def _short(text: str) -> str:
    return table_text(" ".join(text.split()), MAX_ERROR_CHARS)
