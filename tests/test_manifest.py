"""The pure parsing of what a workset carries: manifest, references, priority, sentinels."""

from __future__ import annotations

import pytest

from monitor import legacy
from monitor.manifest import (
    Invalid,
    Reference,
    check_manifest,
    check_not_before,
    check_priority,
    is_data_column,
    parse_manifest,
    parse_priority,
    resolve,
)
from monitor.model import Priority, State
from tests.lab import manifest


def test_a_good_manifest_and_its_data_references() -> None:
    parsed = parse_manifest(manifest(3))
    assert len(parsed.rows) == 3 and parsed.header[3] == "R1_FQ"
    assert [(r.line, r.column, r.header, r.value) for r in parsed.references[:2]] == [
        (2, 4, "R1_FQ", "S0_R1.fastq.gz"),
        (2, 5, "R2_FQ", "S0_R2.fastq.gz"),
    ]


def test_crlf_and_a_bom_are_tolerated() -> None:
    assert parse_manifest(b"\xef\xbb\xbf" + manifest(2, crlf=True)).references[-1].value == "S1_R2.fastq.gz"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("R1_FQ", True),
        ("r2_fq", True),
        ("export_uri", True),
        ("s3_location", True),
        ("S3", True),
        ("path_to_concordance_data_dir", True),
        ("bam_path", True),
        ("SAMPLE_ID", False),
        ("RUN_ID", False),
        ("uri_notes", False),
        ("my_paths", False),
    ],
)
def test_which_columns_reference_data(name: str, data: bool) -> None:
    assert is_data_column(name) is data


def ref(value: str) -> Reference:
    return Reference(line=4, column=7, header="R1_FQ", value=value)


def test_references_resolve_under_sample_data_or_as_s3_uris() -> None:
    assert resolve(ref("S1.fq.gz"), bucket="b", folder="w/ws-1/") == ("b", "w/ws-1/sample_data/S1.fq.gz")
    assert resolve(ref("./lane1/S1.fq.gz"), bucket="b", folder="w/x/") == ("b", "w/x/sample_data/lane1/S1.fq.gz")
    assert resolve(ref("s3://other/raw/S1.fq.gz"), bucket="b", folder="w/x/") == ("other", "raw/S1.fq.gz")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../../etc/passwd", "may not leave sample_data/"),
        ("lane/../../x", "may not leave sample_data/"),
        ("/etc/passwd", "must be relative"),
        ("C:\\data\\x", "must be relative"),
        ("https://example.org/x.fq", "scheme other than s3://"),
        ("file:///x", "scheme other than s3://"),
        ("s3://", "not a complete s3://bucket/key"),
        ("s3://bucket-only", "not a complete s3://bucket/key"),
        ("a\x07b", "control characters"),
    ],
)
def test_unsafe_references_are_refused_with_their_position(value: str, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        resolve(ref(value), bucket="b", folder="w/x/")
    assert message in str(caught.value) and "stage_samples.tsv line 4 column 7: R1_FQ" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "line 1: the header row is missing"),
        (b"\nA\tB\n1\t2\n", "line 1: the header row is missing"),
        (b"A\tB\n", "line 2: no sample rows"),
        (b"A\t\tC\n1\t2\t3\n", "line 1 column 2: header cell is empty"),
        (b"A\tB\ta\n1\t2\t3\n", "line 1 column 3: column 'a' repeats column 1"),
        (b"A\tB\tC\n1\t2\t3\n4\t5\n", "line 3 column 1: 2 columns, but the header has 3"),
        (b"A\tB\n1\t2\n\n3\t4\n", "line 3: blank line inside the manifest"),
        (b"A\tB\n1\t2\x00\n", "line 2: contains NUL bytes"),
        (b"A\tB\n1\t\xff\n", "line 2 column 3: not UTF-8 text (byte 0xff)"),
    ],
)
def test_bad_manifests_name_the_line_and_column(data: bytes, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_manifest(data)
    assert str(caught.value) == f"stage_samples.tsv {message}" or message in str(caught.value)


def test_every_problem_of_a_manifest_is_found_in_file_order() -> None:
    """`validate` lists them all: the parser used to stop at the first."""
    data = (
        b"A\tB\ta\t\tR1_FQ\n"  # column 3 repeats column 1; column 4 is empty
        b"1\t2\t3\t4\tok.fq\n"
        b"1\t2\n"  # too few columns
        b"\n"  # blank
        b"1\t\xff\t3\t4\t../x.fq\n"  # not UTF-8 (and the row is kept: its reference is checked later)
        b"1\t2\t3\t4\t5\t6\n"  # too many
        b"\xfe\t2\t3\t4\ty.fq\n"
    )
    manifest, problems = check_manifest(data)
    assert [(p.line, p.column, p.message) for p in problems] == [
        (1, 3, "column 'a' repeats column 1"),
        (1, 4, "header cell is empty"),
        (3, 1, "2 columns, but the header has 5"),
        (4, None, "blank line inside the manifest"),
        (5, 3, "not UTF-8 text (byte 0xff)"),
        (6, 1, "6 columns, but the header has 5"),
        (7, 1, "not UTF-8 text (byte 0xfe)"),
    ]
    assert [(r.line, r.value) for r in manifest.references] == [(2, "ok.fq"), (5, "../x.fq"), (7, "y.fq")]
    with pytest.raises(Invalid, match="line 1 column 3: column 'a' repeats"):
        parse_manifest(data)  # the daemon's reason: the first


def test_not_before_is_a_time_or_a_problem_at_its_place() -> None:
    assert check_not_before(b"name: x\nnot_before: 2026-12-05T02:00:00Z\n") == (1_796_436_000_000, [])
    assert check_not_before(b"not_before: '2026-12-05'  # the night shift\n") == (1_796_428_800_000, [])
    assert check_not_before(b"name: x\n") == (None, [])
    when, problems = check_not_before(b"name: x\nnot_before: tonight\n")
    assert when is None
    assert [str(p) for p in problems] == [
        "daylily_info.yaml line 2 column 13: not_before 'tonight' is not a time (2026-12-05T02:00:00Z)"
    ]


def test_binary_content_is_one_problem_not_thousands() -> None:
    _, problems = check_manifest(b"A\tB\n" + b"\x00\xff" * 5000)
    assert [str(p) for p in problems] == ["stage_samples.tsv line 2: contains NUL bytes: binary data, not text"]


def test_a_bad_priority_is_found_beside_bad_bytes() -> None:
    priority, problems = check_priority(b"name: \xff\npriority: high\n")
    assert priority is Priority.NORMAL
    assert [str(p) for p in problems] == [
        "daylily_info.yaml line 1 column 7: not UTF-8 text (byte 0xff)",
        "daylily_info.yaml line 2 column 11: priority 'high' is not one of urgent, normal, low",
    ]


@pytest.mark.parametrize(
    ("text", "priority"),
    [
        (b"", Priority.NORMAL),
        (b"workset_name: x\n", Priority.NORMAL),
        (b"priority: urgent\n", Priority.URGENT),
        (b"name: x\npriority: 'low'   # overnight\n", Priority.LOW),
        (b'priority: "Normal"\r\n', Priority.NORMAL),
        (b"details:\n  priority: urgent\n", Priority.NORMAL),  # only the top-level key counts
    ],
)
def test_priority_from_daylily_info(text: bytes, priority: Priority) -> None:
    assert parse_priority(text) is priority


def test_a_bad_priority_names_line_and_column() -> None:
    with pytest.raises(Invalid, match=r"daylily_info.yaml line 2 column 11: priority 'high' is not one of"):
        parse_priority(b"name: x\npriority: high\n")


@pytest.mark.parametrize(
    ("names", "decides"),
    [
        ({"daylily.ready"}, legacy.READY),
        ({"daylily.ready", "daylily.lock"}, legacy.LOCK),
        ({"daylily.ready", "daylily.lock", "daylily.in_progress"}, legacy.IN_PROGRESS),
        ({"daylily.ready", "daylily.in_progress", "daylily.complete"}, legacy.COMPLETE),
        ({"daylily.complete", "daylily.error"}, legacy.ERROR),
        ({"daylily.error", "daylily.ignore", "daylily.ready"}, legacy.IGNORE),
        ({"stage_samples.tsv"}, None),
        ({"_READY", "_COMPLETE"}, None),  # the names the old migration guide invented do not count
    ],
)
def test_legacy_precedence(names: set[str], decides: str | None) -> None:
    assert legacy.classify(names) == decides


def test_mirrored_sentinels_match_what_the_legacy_monitor_expects() -> None:
    error = legacy.mirror(State.ERROR, now_ms=1_760_000_000_000, reason="exit 2:\nbad manifest")
    assert error.write == {legacy.ERROR: b"2025-10-09T08:53:20Z\texit 2: bad manifest"}
    assert legacy.error_reason(error.write[legacy.ERROR]) == "exit 2: bad manifest"
    assert legacy.mirror(State.IN_PROGRESS, now_ms=0).remove == (legacy.LOCK,)
    assert set(legacy.mirror(State.READY, now_ms=0).remove) >= {legacy.IN_PROGRESS, legacy.ERROR, legacy.COMPLETE}
    for state in State:
        plan = legacy.mirror(state, now_ms=0)
        assert not set(plan.write) & set(plan.remove)
        if state in (State.COMPLETE, State.ERROR, State.CANCELLED, State.IGNORED):
            assert legacy.classify(plan.write) not in (None, legacy.READY), state  # the legacy monitor won't run it
