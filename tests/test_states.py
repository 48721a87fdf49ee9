"""The pure core, exhaustively: every (state, action) pair, the effects of each action, backoff and ordering."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from monitor import errors, states
from monitor.model import Event, EventType, Lease, Priority, State, StepRun, Workset, WorksetId, check_workset_id
from monitor.states import Action, Backoff, Context

S, A = State, Action

# The whole transition table, written out by hand. Anything not listed must be refused.
LEGAL: dict[tuple[State, Action], State | str] = {
    (S.READY, A.CLAIM): S.IN_PROGRESS,
    (S.RETRYING, A.CLAIM): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.STEP_FINISHED): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.COMPLETE): S.COMPLETE,
    (S.IN_PROGRESS, A.FAIL_TEMPORARY): "retrying-or-error",
    (S.IN_PROGRESS, A.FAIL_PERMANENT): S.ERROR,
    (S.IN_PROGRESS, A.RELEASE): S.READY,
    (S.IN_PROGRESS, A.FORCE_RELEASE): S.READY,
    (S.IN_PROGRESS, A.EXPIRE): "retrying-or-error",
    (S.ERROR, A.RETRY): S.READY,
    (S.CANCELLED, A.RETRY): S.READY,
    (S.RETRYING, A.RETRY): S.READY,
    (S.ERROR, A.RETRY_FORCE): S.READY,
    (S.CANCELLED, A.RETRY_FORCE): S.READY,
    (S.RETRYING, A.RETRY_FORCE): S.READY,
    (S.COMPLETE, A.RETRY_FORCE): S.READY,
    (S.IGNORED, A.RETRY_FORCE): S.READY,
    (S.READY, A.IGNORE): S.IGNORED,
    (S.IN_PROGRESS, A.IGNORE): S.IGNORED,
    (S.RETRYING, A.IGNORE): S.IGNORED,
    (S.COMPLETE, A.IGNORE): S.IGNORED,
    (S.ERROR, A.IGNORE): S.IGNORED,
    (S.CANCELLED, A.IGNORE): S.IGNORED,
    (S.READY, A.CANCEL): S.CANCELLED,
    (S.RETRYING, A.CANCEL): S.CANCELLED,
    (S.IN_PROGRESS, A.CANCEL): S.CANCELLED,
    **{(s, A.SET_PRIORITY): s for s in State},
    **{(s, A.REPORT_DUPLICATE): s for s in State},
    (S.READY, A.DEFER): S.READY,
}

T0 = 1_800_000_000_000
ACTOR = "test:1"


def ctx(now_ms: int = T0, **kw: object) -> Context:
    return Context(now_ms=now_ms, actor=ACTOR, **kw)  # type: ignore[arg-type]


def workset(state: State = S.READY, **kw: object) -> Workset:
    base = Workset(
        workset_id=WorksetId("ws-1"),
        state=state,
        priority=Priority.NORMAL,
        bucket="b-1",
        prefix="worksets/ws-1/",
        created_at_ms=T0 - 10_000,
        updated_at_ms=T0 - 10_000,
        available_at_ms=T0 - 10_000,
        version=4,
    )
    if state is S.IN_PROGRESS:
        base = dataclasses.replace(base, lease=lease(), attempts=1, epoch=1)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def lease(token: str = "tok") -> Lease:
    return Lease(token=token, owner="host:1:abc", heartbeat_at_ms=T0, expires_at_ms=T0 + 60_000)


@pytest.mark.parametrize(("state", "action"), list(itertools.product(State, Action)))
def test_every_state_action_pair_is_legal_or_refused(state: State, action: Action) -> None:
    expected = LEGAL.get((state, action))
    if expected is None:
        with pytest.raises(errors.IllegalTransition) as refused:
            states.target(state, action, attempts=1, max_attempts=3)
        assert refused.value.state == state.value
        assert state.value in str(refused.value)
        return
    for attempts, max_attempts in ((1, 3), (3, 3)):
        got = states.target(state, action, attempts=attempts, max_attempts=max_attempts)
        if expected == "retrying-or-error":
            assert got is (S.RETRYING if attempts < max_attempts else S.ERROR)
        else:
            assert got is expected


def test_the_table_has_no_entries_beyond_the_written_down_ones() -> None:
    assert set(states.TABLE) == set(LEGAL)


@pytest.mark.parametrize(("state", "action"), sorted(LEGAL, key=str))
def test_decide_writes_one_event_numbered_by_the_new_version(state: State, action: Action) -> None:
    kw: dict[str, object] = {}
    if action is A.CLAIM:
        kw["lease"] = lease("new")
    if action is A.STEP_FINISHED:
        kw["step"] = "stage"
    if action is A.SET_PRIORITY:
        kw["priority"] = Priority.URGENT
    if action is A.DEFER:
        kw["until_ms"] = T0 + 60_000
    before = workset(state)
    decision = states.decide(before, action, ctx(reason="because"), **kw)  # type: ignore[arg-type]
    after, event = decision.after, decision.event
    assert after.version == before.version + 1 == event.seq
    assert (event.from_state, event.to_state) == (before.state, after.state)
    assert event.actor == ACTOR and event.at_ms == T0 and after.updated_at_ms == T0
    assert (after.lease is not None) == (after.state is S.IN_PROGRESS)


def test_claim_takes_the_lease_and_counts_an_attempt() -> None:
    ws = workset(S.RETRYING, attempts=1, epoch=3)
    after = states.decide(ws, A.CLAIM, ctx(), lease=lease("t2")).after
    assert after.state is S.IN_PROGRESS
    assert after.lease == lease("t2")
    assert (after.attempts, after.epoch) == (2, 4)


def test_claim_before_available_at_is_refused() -> None:
    ws = workset(S.RETRYING, available_at_ms=T0 + 1)
    with pytest.raises(errors.IllegalTransition, match="not due"):
        states.decide(ws, A.CLAIM, ctx(), lease=lease())


def test_a_ready_workset_is_claimable_by_a_claimer_whose_clock_is_behind() -> None:
    """A ready workset's available_at only orders the queue: an operator's hand run on a host an hour behind was
    refused a just-registered workset as "not due" (seen in the hand-run test under faketime)."""
    ahead = T0 + 3_600_000  # registered by a host an hour ahead: its available_at is its own write's time
    ws = workset(S.READY, available_at_ms=ahead, updated_at_ms=ahead, created_at_ms=ahead)
    assert states.decide(ws, A.CLAIM, ctx(), lease=lease()).after.state is S.IN_PROGRESS


def test_a_scheduled_workset_is_claimed_only_from_its_time_and_keeps_it_through_a_new_priority() -> None:
    deferred = states.decide(workset(S.READY), A.DEFER, ctx(), until_ms=T0 + 30_000).after
    assert states.scheduled(deferred) and deferred.available_at_ms == T0 + 30_000
    assert not states.due(deferred, T0 + 29_999) and states.due(deferred, T0 + 30_000)
    with pytest.raises(errors.IllegalTransition, match="not due"):
        states.decide(deferred, A.CLAIM, ctx(T0 + 29_999), lease=lease())
    assert states.decide(deferred, A.CLAIM, ctx(T0 + 30_000), lease=lease()).after.state is S.IN_PROGRESS
    urgent = states.decide(deferred, A.SET_PRIORITY, ctx(T0 + 1000), priority=Priority.URGENT).after
    assert urgent.available_at_ms == T0 + 30_000 and states.scheduled(urgent)
    forward = states.decide(deferred, A.DEFER, ctx(T0 + 2000), until_ms=T0).after  # a time passed: due now
    assert not states.scheduled(forward) and states.due(forward, T0 + 2000)
    later = states.new_workset(
        workset_id=WorksetId("ws-2"),
        bucket="b",
        prefix="w/ws-2/",
        priority=Priority.LOW,
        ctx=ctx(),
        not_before_ms=T0 + 5,
    ).after
    assert states.scheduled(later) and later.available_at_ms == T0 + 5
    with pytest.raises(errors.IllegalTransition, match="only a ready workset can be scheduled"):
        states.decide(workset(S.ERROR), A.DEFER, ctx(), until_ms=T0)


def test_release_gives_the_attempt_back_and_makes_it_due_now() -> None:
    ws = workset(S.IN_PROGRESS, attempts=2, epoch=5, available_at_ms=T0 - 99)
    decision = states.decide(ws, A.RELEASE, ctx())
    assert decision.after.state is S.READY
    assert decision.after.attempts == 1 and decision.after.epoch == 5
    assert decision.after.lease is None and decision.after.available_at_ms == T0
    assert decision.event.type is EventType.RELEASED


def test_temporary_failure_backs_off_then_dead_letters() -> None:
    backoff = Backoff(base_s=60, cap_s=3600)
    first = states.decide(
        workset(S.IN_PROGRESS, attempts=1),
        A.FAIL_TEMPORARY,
        ctx(rand=0.0, backoff=backoff),
        error="exit 75: cluster busy",
    )
    assert first.after.state is S.RETRYING
    assert first.after.available_at_ms == T0 + 30_000  # equal jitter: half of 60 s at rand=0
    assert first.after.last_error == "exit 75: cluster busy"
    assert first.after.error_category == "step"
    assert first.event.type is EventType.RETRYING and first.event.detail == "exit 75: cluster busy"
    assert first.after.lease is None

    last = states.decide(workset(S.IN_PROGRESS, attempts=3), A.FAIL_TEMPORARY, ctx(max_attempts=3), error="x")
    assert last.after.state is S.ERROR
    assert last.event.type is EventType.ERROR


def test_expiry_is_audited_as_lease_expired_even_when_dead_lettered() -> None:
    retrying = states.decide(workset(S.IN_PROGRESS, attempts=1), A.EXPIRE, ctx(reason="holder silent"))
    dead = states.decide(workset(S.IN_PROGRESS, attempts=3), A.EXPIRE, ctx(reason="holder silent"))
    assert (retrying.after.state, retrying.event.type) == (S.RETRYING, EventType.LEASE_EXPIRED)
    assert (dead.after.state, dead.event.type) == (S.ERROR, EventType.LEASE_EXPIRED)
    assert dead.after.error_category == "lease"


def test_retry_reopens_at_the_first_unfinished_step() -> None:
    """retry wiped the finished steps, so a new attempt redid them all, while docs/pipeline.md said it started at the
    first unfinished step. Now it does; --from-start redoes them all; the event says which."""
    ws = workset(S.ERROR, attempts=3, steps_done=("stage",), last_error="boom", error_category="step")
    resumed = states.decide(ws, A.RETRY, ctx())
    after = resumed.after
    assert after.state is S.READY
    assert (after.attempts, after.steps_done, after.last_error, after.error_category) == (0, ("stage",), None, None)
    assert after.available_at_ms == T0
    assert resumed.event.detail == "resumes after the finished steps: stage"
    again = states.decide(ws, A.RETRY, ctx(), from_start=True)
    assert again.after.steps_done == () and again.event.detail == "from the first step"
    # A complete workset has no unfinished step: re-opening it (--force) runs it again from the first.
    done = workset(S.COMPLETE, steps_done=("stage", "run"))
    reopened = states.decide(done, A.RETRY_FORCE, ctx())
    assert reopened.after.steps_done == () and reopened.event.detail == "from the first step"
    assert states.decide(workset(S.CANCELLED), A.RETRY, ctx()).event.detail == "from the first step"  # none done


def test_cancel_and_ignore_of_a_running_workset_remove_the_lease() -> None:
    for action, state in ((A.CANCEL, S.CANCELLED), (A.IGNORE, S.IGNORED)):
        after = states.decide(workset(S.IN_PROGRESS), action, ctx()).after
        assert after.state is state and after.lease is None


def test_set_priority_keeps_state_and_lease() -> None:
    ws = workset(S.IN_PROGRESS)
    after = states.decide(ws, A.SET_PRIORITY, ctx(), priority=Priority.URGENT).after
    assert (after.state, after.priority, after.lease) == (S.IN_PROGRESS, Priority.URGENT, ws.lease)


def test_step_finished_is_recorded_in_order() -> None:
    ws = workset(S.IN_PROGRESS, steps_done=("stage",), current_step="run")
    after = states.decide(ws, A.STEP_FINISHED, ctx(), step="run").after
    assert after.steps_done == ("stage", "run") and after.current_step is None


def test_complete_clears_the_last_error() -> None:
    ws = workset(S.IN_PROGRESS, last_error="old", error_category="step")
    after = states.decide(ws, A.COMPLETE, ctx()).after
    assert (after.state, after.last_error, after.error_category) == (S.COMPLETE, None, None)


def test_long_errors_are_bounded_on_the_control_item_and_in_the_event() -> None:
    error = "x" * 100_000
    decision = states.decide(workset(S.IN_PROGRESS), A.FAIL_PERMANENT, ctx(), error=error)
    assert decision.after.last_error is not None
    assert len(decision.after.last_error) <= states.MAX_ERROR_CHARS
    assert len(decision.event.detail) <= states.MAX_DETAIL_CHARS


@pytest.mark.parametrize(("state", "action"), sorted(LEGAL, key=str))
def test_decide_puts_the_event_in_the_outbox_exactly_when_the_policy_wants_it(state: State, action: Action) -> None:
    kw: dict[str, object] = {"lease": lease("new")} if action is A.CLAIM else {}
    kw |= {"step": "stage"} if action is A.STEP_FINISHED else {}
    kw |= {"priority": Priority.URGENT} if action is A.SET_PRIORITY else {}
    kw |= {"until_ms": T0 + 60_000} if action is A.DEFER else {}
    silent = states.decide(workset(state), action, ctx(), **kw)  # type: ignore[arg-type]
    asked: list[Event] = []

    def only_this_type(event: Event) -> bool:
        asked.append(event)
        return event.type is silent.event.type

    wanted = states.decide(workset(state), action, ctx(notify=only_this_type), **kw)  # type: ignore[arg-type]
    unwanted = states.decide(workset(state), action, ctx(notify=lambda e: False), **kw)  # type: ignore[arg-type]
    assert (wanted.event.pending, unwanted.event.pending) == (True, False)
    assert asked == [silent.event]  # asked once, about the event as written
    assert not silent.event.pending  # a context without a policy notifies nothing


def test_a_new_workset_s_event_is_pending_when_the_policy_wants_it() -> None:
    def invalid_only(event: Event) -> bool:
        return event.type is EventType.INVALID

    new = {"workset_id": WorksetId("w"), "bucket": "bkt", "prefix": "w/", "priority": Priority.LOW}
    ok = states.new_workset(**new, ctx=ctx(notify=invalid_only))  # type: ignore[arg-type]
    bad = states.new_workset(**new, ctx=ctx(notify=invalid_only), invalid_reason="empty")  # type: ignore[arg-type]
    assert (ok.event.pending, bad.event.pending) == (False, True)


def test_a_run_s_timings_start_at_its_first_counted_claim_and_end_in_a_terminal_state() -> None:
    stage = StepRun(step="stage", started_at_ms=T0 + 5, duration_ms=2_000, outcome="done", exit_code=0)
    ws = states.decide(workset(S.READY), A.CLAIM, ctx(T0), lease=lease("a")).after
    assert (ws.started_at_ms, ws.finished_at_ms) == (T0, None)
    finished = states.decide(ws, A.STEP_FINISHED, ctx(T0 + 9), step="stage", run=stage)
    assert finished.after.step_ms == (("stage", 2_000),) and finished.event.step_run == stage
    ws = states.decide(finished.after, A.FAIL_TEMPORARY, ctx(T0 + 10), error="exit 75").after
    as_indexed = dataclasses.replace(ws, started_at_ms=None)
    again = states.decide(as_indexed, A.CLAIM, ctx(ws.available_at_ms), lease=lease("b")).after
    assert again.started_at_ms is None  # a later attempt leaves the run's start alone (the index's copy has none)
    end = ws.available_at_ms + 200
    failed = states.decide(again, A.FAIL_PERMANENT, ctx(end), error="exit 2").after
    assert failed.finished_at_ms == end and failed.step_ms == (("stage", 2_000),)
    urgent = states.decide(failed, A.SET_PRIORITY, ctx(end + 100), priority=Priority.URGENT).after
    assert urgent.finished_at_ms == end
    resumed = states.decide(failed, A.RETRY, ctx(end + 200)).after
    assert (resumed.started_at_ms, resumed.finished_at_ms, resumed.step_ms) == (None, None, (("stage", 2_000),))
    anew = states.decide(failed, A.RETRY, ctx(end + 200), from_start=True).after
    assert anew.step_ms == () and anew.steps_done == ()


def test_new_workset_is_ready_or_an_audited_validation_error() -> None:
    ok = states.new_workset(workset_id=WorksetId("w"), bucket="bkt", prefix="w/", priority=Priority.LOW, ctx=ctx())
    assert (ok.after.state, ok.after.version, ok.event.seq, ok.event.type) == (
        S.READY,
        1,
        1,
        EventType.REGISTERED,
    )
    assert ok.before.version == 0
    bad = states.new_workset(
        workset_id=WorksetId("w"),
        bucket="bkt",
        prefix="w/",
        priority=Priority.LOW,
        ctx=ctx(),
        invalid_reason="stage_samples.tsv line 3 column 2: empty",
    )
    assert (bad.after.state, bad.after.error_category, bad.event.type) == (
        S.ERROR,
        "validation",
        EventType.INVALID,
    )
    assert "line 3" in (bad.after.last_error or "")


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_stays_within_half_and_full_of_the_capped_exponential(attempt: int) -> None:
    b = Backoff(base_s=60, cap_s=3600)
    ceiling = min(3600, 60 * 2 ** (attempt - 1))
    assert b.delay_s(attempt, rand=0.0) == ceiling / 2
    assert ceiling / 2 <= b.delay_s(attempt, rand=0.999) < ceiling


def test_backoff_never_overflows() -> None:
    assert Backoff(base_s=1, cap_s=10).delay_s(10_000, rand=0.5) == 7.5


def test_index_sort_key_orders_urgent_first_then_fifo_then_id() -> None:
    rng = random.Random(7)
    items = [
        workset(priority=p, available_at_ms=T0 + at, workset_id=WorksetId(f"w{i}"))
        for i, (p, at) in enumerate((rng.choice(list(Priority)), rng.randrange(10**9)) for _ in range(200))
    ]
    by_key = sorted(items, key=states.gsi_sort_key)
    assert by_key == sorted(items, key=lambda w: (w.priority.rank, w.available_at_ms, w.workset_id))


@pytest.mark.parametrize("good", ["ws-001", "workset_20240213T120000Z", "a", "A.b_c-d", "x" * 128])
def test_valid_workset_ids(good: str) -> None:
    assert check_workset_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 129, "a/b", "..", ".", "with space", "semi;colon", "ü", "a\nb"])
def test_invalid_workset_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid workset id"):
        check_workset_id(bad)


def test_an_operator_taking_a_running_lease_marks_the_workset_held_off_until_the_next_claim() -> None:
    for action in (A.FORCE_RELEASE, A.CANCEL, A.IGNORE):
        taken = states.decide(workset(S.IN_PROGRESS), action, ctx(now_ms=T0 - 60_000)).after
        assert (taken.held_off_for, taken.lease) == ("host:1:abc", None)
    for action in (A.RELEASE, A.EXPIRE, A.COMPLETE):  # the holder's own hand-back, or a holder that has stopped
        assert states.decide(workset(S.IN_PROGRESS), action, ctx()).after.held_off_for is None
    assert states.decide(workset(S.READY), A.CANCEL, ctx()).after.held_off_for is None  # nobody was running it
    released = states.decide(workset(S.IN_PROGRESS), A.FORCE_RELEASE, ctx()).after
    assert released.available_at_ms == T0  # its FIFO place: now, with no wall-clock hold-off added
    reopened = states.decide(states.decide(workset(S.IN_PROGRESS), A.CANCEL, ctx()).after, A.RETRY, ctx()).after
    assert reopened.held_off_for == "host:1:abc"  # carried until a claim
    assert states.decide(reopened, A.CLAIM, ctx(), lease=lease("t2")).after.held_off_for is None


OPERATOR_ACTIONS = (A.RETRY, A.RETRY_FORCE, A.IGNORE, A.CANCEL, A.FORCE_RELEASE)


@pytest.mark.parametrize("action", OPERATOR_ACTIONS)
@pytest.mark.parametrize("state", list(S))
def test_every_refusal_an_operator_meets_names_the_next_step(state: State, action: Action) -> None:
    """ "cannot retry force a workset that is ready": refusals with no next step, in the program's words."""
    try:
        states.target(state, action, attempts=0, max_attempts=3)
    except errors.IllegalTransition as exc:
        message = str(exc)
        assert ": " in message, message  # what to do, after the refusal
        assert "_" not in message.split(":", maxsplit=1)[0].replace(state.value, ""), (
            message
        )  # the command, not the enum


def test_text_written_to_the_table_is_bounded_and_utf8() -> None:
    """One rule for every text an event or a workset carries: an operator's 500 KB --reason (or an argument with a
    byte that is not UTF-8, which Python keeps as a lone surrogate) made a write DynamoDB refuses, or one botocore
    cannot encode: an internal error."""
    huge = Context(now_ms=T0, reason="r" * 500_000 + "\udcff", actor="operator:\udcffx@host")
    decision = states.decide(workset(S.READY), A.CANCEL, huge)
    event = decision.event
    for text in (event.reason, event.actor, event.detail):
        text.encode("utf-8")  # raises on a lone surrogate
    assert len(event.reason) <= states.MAX_REASON_CHARS and event.reason.startswith("rrr")
    failed = states.decide(workset(S.IN_PROGRESS, lease=lease()), A.FAIL_PERMANENT, ctx(), error="e\udcff" * 50_000)
    assert failed.after.last_error is not None
    failed.after.last_error.encode("utf-8")
    failed.event.detail.encode("utf-8")
    assert len(failed.event.detail) <= states.MAX_DETAIL_CHARS
