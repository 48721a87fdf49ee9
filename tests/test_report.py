"""The report's pure parts: --since, rows from control items, the summary, the CSV/TSV/JSON shapes."""

from __future__ import annotations

import csv
import io
import json

import pytest

from monitor import report
from monitor.model import Priority, State, Workset, WorksetId

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("90s", NOW - 90_000),
        ("30m", NOW - 1_800_000),
        ("1.5h", NOW - 5_400_000),
        ("7d", NOW - 7 * 86_400_000),
        ("2w", NOW - 14 * 86_400_000),
        ("2027-01-15", 1_800_000_000_000 - 8 * 3_600_000),
        ("2027-01-15T06:00Z", NOW - 2 * 3_600_000),
        ("2027-01-15T06:00", NOW - 2 * 3_600_000),  # no offset: UTC
        ("2027-01-15T07:00:00+01:00", NOW - 2 * 3_600_000),
    ],
)
def test_since_is_a_duration_back_from_now_or_a_time(since: str, expected: int) -> None:
    assert report.parse_since(since, now_ms=NOW) == expected


@pytest.mark.parametrize("bad", ["", "yesterday", "7x", "-3h", "h", "2027-13-01", "1e3s"])
def test_a_since_that_is_neither_says_what_it_accepts(bad: str) -> None:
    with pytest.raises(ValueError, match=r"neither a duration .* nor a time"):
        report.parse_since(bad, now_ms=NOW)


def workset(name: str, *, started: int | None, finished: int | None, steps: dict[str, int]) -> Workset:
    return Workset(
        workset_id=WorksetId(name),
        state=State.COMPLETE if finished else State.IN_PROGRESS,
        priority=Priority.NORMAL,
        bucket="b",
        prefix=f"w/{name}/",
        created_at_ms=NOW,
        updated_at_ms=NOW,
        available_at_ms=NOW,
        attempts=1,
        started_at_ms=started,
        finished_at_ms=finished,
        step_ms=tuple(sorted(steps.items())),
    )


ROWS = [
    report.row(workset(f"ws-{i}", started=NOW + 1_000, finished=NOW + 1_000 + i * 10_000, steps={"stage": i * 1_000}))
    for i in range(1, 11)
] + [report.row(workset("running", started=NOW + 5_000, finished=None, steps={"old-step": 500}))]


def test_a_row_is_the_run_s_times_from_its_control_item() -> None:
    first, running = ROWS[0], ROWS[-1]
    assert (first.wall_s, first.claim_wait_s, first.steps) == (10.0, 1.0, {"stage": 1.0})
    assert (running.wall_s, running.claim_wait_s) == (None, 5.0)  # not ended: no wall time yet


def test_the_summary_gives_median_and_p90_over_the_rows_that_have_each() -> None:
    steps = report.step_columns(["stage", "analyse"], ROWS)
    assert steps == ["stage", "analyse", "old-step"]  # configured order, then a step no longer configured
    found = {s.what: (s.count, s.median_s, s.p90_s) for s in report.summary(ROWS, steps)}
    assert found == {"wall time": (10, 55.0, 90.0), "stage": (10, 5.5, 9.0), "old-step": (1, 0.5, 0.5)}


def test_csv_and_tsv_have_a_header_and_one_numeric_column_per_step() -> None:
    steps = ["stage", "analyse"]
    for dialect, delimiter in (("csv", ","), ("tsv", "\t")):
        text = report.delimited(ROWS[:2], steps, dialect=dialect)
        parsed = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
        assert list(parsed[0])[-2:] == ["stage_s", "analyse_s"]
        assert [(r["stage_s"], r["analyse_s"], r["wall_s"]) for r in parsed] == [
            ("1.0", "", "10.0"),
            ("2.0", "", "20.0"),
        ]


def test_json_keeps_numbers_as_numbers_and_nulls_for_what_was_not_recorded() -> None:
    data = json.loads(report.as_json(ROWS[-2:], ["stage"]))
    assert data["worksets"][0]["steps"] == {"stage": 10.0} and data["worksets"][0]["wall_s"] == 100.0
    assert data["worksets"][1]["wall_s"] is None and data["worksets"][1]["steps"] == {}
    assert data["summary"][0] == {"what": "wall time", "count": 1, "median_s": 100.0, "p90_s": 100.0}


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (128, "128 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB")]
)
def test_sizes_read_as_a_person_reads_them(n: int, text: str) -> None:
    assert report.size_text(n) == text


def test_the_summary_totals_the_samples_and_data_of_the_validated_worksets_only() -> None:
    counted = [
        report.Row(**{**report.row(workset(f"v-{i}", started=None, finished=None, steps={})).__dict__, "samples": 2})
        for i in range(2)
    ]
    counted = [report.Row(**{**r.__dict__, "data_bytes": 3 * 2**30}) for r in counted]
    lines = report.summary_lines([*counted, ROWS[0]], [])
    assert lines[0] == "3 workset(s); 4 samples, 6.0 GiB of data (of 2 validated)"
