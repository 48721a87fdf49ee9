"""Parsing what a workset carries, strictly and without I/O: the sample manifest, data references, the priority.

Every problem is an ``Invalid`` naming the file, the line and the column (1-based) so an operator can open the file
and fix it. The ``check_*`` functions collect every problem a file has (``workset-monitor validate`` lists them all);
``parse_*`` raise the first. Nothing here trusts its input: sizes are bounded by the caller, text must be UTF-8
without NUL bytes, and a data reference may not leave the workset's ``sample_data/`` folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from monitor.model import Priority

MANIFEST = "stage_samples.tsv"
WORK_FILE = "daylily_work.yaml"
INFO_FILE = "daylily_info.yaml"
SAMPLE_DATA = "sample_data"
REQUIRED_FILES = (MANIFEST, WORK_FILE, INFO_FILE)

_FASTQ_COLUMNS = {"r1_fq", "r2_fq"}
_PRIORITY_LINE = re.compile(r"^priority[ \t]*:[ \t]*(?P<value>[^#]*?)[ \t]*(#.*)?$")
_NOT_BEFORE_LINE = re.compile(r"^not_before[ \t]*:[ \t]*(?P<value>[^#]*?)[ \t]*(#.*)?$")


class Invalid(Exception):
    """A workset that cannot be run as it is, and exactly where the problem is."""

    def __init__(self, file: str, message: str, *, line: int | None = None, column: int | None = None) -> None:
        self.file, self.line, self.column, self.message = file, line, column, message
        where = file + (f" line {line}" if line else "") + (f" column {column}" if column else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest cell that names data: where it is in the file and what object it must be."""

    line: int
    column: int
    header: str
    value: str


@dataclass(frozen=True, slots=True)
class Manifest:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    references: tuple[Reference, ...]


def is_data_column(name: str) -> bool:
    """R1_FQ/R2_FQ, or a name ending ``_uri``/``_path`` or starting ``s3``/``path`` (case-insensitive)."""
    lowered = name.strip().lower()
    return lowered in _FASTQ_COLUMNS or lowered.endswith(("_uri", "_path")) or lowered.startswith(("s3", "path"))


def decode_text(data: bytes, *, file: str) -> str:
    """UTF-8 text (a leading BOM is dropped); binary content is refused with the position of the first bad byte."""
    text, problems = check_text(data, file=file)
    if problems:
        raise problems[0]
    return text


def check_text(data: bytes, *, file: str) -> tuple[str, list[Invalid]]:
    """The text, and a problem for every line with bytes that are not UTF-8 (decoded as U+FFFD so the rest can be
    checked). NUL bytes mean binary data: one problem, and no text to check."""
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        return "", [Invalid(file, "contains NUL bytes: binary data, not text", line=line)]
    problems: list[Invalid] = []
    start = 0
    while True:
        try:
            data[start:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            bad = start + exc.start
            line = data[:bad].count(b"\n") + 1
            column = bad - (data.rfind(b"\n", 0, bad) + 1) + 1
            if not problems or problems[-1].line != line:
                problems.append(Invalid(file, f"not UTF-8 text (byte 0x{data[bad]:02x})", line=line, column=column))
            start = start + exc.end
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff"), problems


def parse_manifest(data: bytes) -> Manifest:
    """The manifest, or ``Invalid`` with its first problem."""
    manifest, problems = check_manifest(data)
    if problems:
        raise problems[0]
    return manifest


def check_manifest(data: bytes) -> tuple[Manifest, list[Invalid]]:
    """The manifest (tab-separated, a header row, the same number of columns on every line; CRLF tolerated) and
    every problem it has, in file order. Only the rows that are well formed yield data references."""
    text, problems = check_text(data, file=MANIFEST)
    empty = Manifest(header=(), rows=(), references=())
    if not text and problems:
        return empty, problems
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    lines = [line.removesuffix("\r") for line in lines]
    if not lines or not lines[0].strip():
        return empty, [*problems, Invalid(MANIFEST, "the header row is missing (the first line is empty)", line=1)]
    header = tuple(cell.strip() for cell in lines[0].split("\t"))
    seen: dict[str, int] = {}
    for index, name in enumerate(header, start=1):
        if not name:
            problems.append(Invalid(MANIFEST, "header cell is empty", line=1, column=index))
        elif name.lower() in seen:
            problems.append(
                Invalid(MANIFEST, f"column {name!r} repeats column {seen[name.lower()]}", line=1, column=index)
            )
        else:
            seen[name.lower()] = index
    rows: list[tuple[str, ...]] = []
    good: list[tuple[int, tuple[str, ...]]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            problems.append(Invalid(MANIFEST, "blank line inside the manifest", line=number))
            continue
        cells = tuple(line.split("\t"))
        rows.append(cells)
        if len(cells) != len(header):
            problems.append(
                Invalid(MANIFEST, f"{len(cells)} columns, but the header has {len(header)}", line=number, column=1)
            )
        else:
            good.append((number, cells))
    if not rows:
        problems.append(Invalid(MANIFEST, "no sample rows after the header", line=2))
    data_columns = [i for i, name in enumerate(header) if is_data_column(name)]
    references = tuple(
        Reference(line=number, column=i + 1, header=header[i], value=row[i].strip())
        for number, row in good
        for i in data_columns
        if row[i].strip()
    )
    problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    return Manifest(header=header, rows=tuple(rows), references=references), problems


def resolve(reference: Reference, *, bucket: str, folder: str) -> tuple[str, str]:
    """The (bucket, key) a reference names: an ``s3://`` URI as is, a relative path under ``<folder>sample_data/``."""
    value = reference.value
    where = {"line": reference.line, "column": reference.column}
    if value.startswith("s3://"):
        target_bucket, _, key = value.removeprefix("s3://").partition("/")
        if not target_bucket or not key:
            raise Invalid(MANIFEST, f"{reference.header}: {value!r} is not a complete s3://bucket/key URI", **where)
        return target_bucket, key
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise Invalid(MANIFEST, f"{reference.header}: {value!r} uses a scheme other than s3://", **where)
    if value.startswith("/") or "\\" in value:
        raise Invalid(
            MANIFEST, f"{reference.header}: {value!r} must be relative to {SAMPLE_DATA}/ (no leading / or \\)", **where
        )
    parts = PurePosixPath(value).parts
    if any(part == ".." for part in parts):
        raise Invalid(MANIFEST, f"{reference.header}: {value!r} may not leave {SAMPLE_DATA}/ ('..')", **where)
    if any(ord(ch) < 32 for ch in value):
        raise Invalid(MANIFEST, f"{reference.header}: {value!r} contains control characters", **where)
    relative = "/".join(p for p in parts if p not in (".", ""))
    return bucket, f"{folder}{SAMPLE_DATA}/{relative}"


def parse_priority(data: bytes) -> Priority:
    """The priority daylily_info.yaml asks for, or ``Invalid`` with its first problem."""
    priority, problems = check_priority(data)
    if problems:
        raise problems[0]
    return priority


def _top_level(text: str, pattern: re.Pattern[str]) -> tuple[int, int, str] | None:
    """(line, column, value) of the first top-level ``key: value`` line ``pattern`` matches; quotes and a trailing
    comment are not part of the value. Only that one key is read: the rest of the file belongs to the pipeline."""
    for number, raw in enumerate(text.splitlines(), start=1):
        if match := pattern.match(raw.rstrip("\r")):
            return number, match.start("value") + 1, match.group("value").strip().strip("'\"").strip()
    return None


def check_priority(data: bytes) -> tuple[Priority, list[Invalid]]:
    """The top-level ``priority:`` of daylily_info.yaml (urgent, normal or low; normal when absent), and the file's
    problems: bytes that are not text, a value that is not a priority."""
    text, problems = check_text(data, file=INFO_FILE)
    if (found := _top_level(text, _PRIORITY_LINE)) is None:
        return Priority.NORMAL, problems
    line, column, value = found
    try:
        return Priority(value.lower()), problems
    except ValueError:
        message = f"priority {value!r} is not one of urgent, normal, low"
        return Priority.NORMAL, [*problems, Invalid(INFO_FILE, message, line=line, column=column)]


def check_not_before(data: bytes) -> tuple[int | None, list[Invalid]]:
    """The top-level ``not_before:`` of daylily_info.yaml: a UTC time (``2026-12-05T02:00:00Z``, ``2026-12-05``; an
    offset is honoured, none means UTC) before which the workset is not run, as epoch ms; None when absent."""
    text, problems = check_text(data, file=INFO_FILE)
    if (found := _top_level(text, _NOT_BEFORE_LINE)) is None:
        return None, problems
    line, column, value = found
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        message = f"not_before {value!r} is not a time (2026-12-05T02:00:00Z)"
        return None, [*problems, Invalid(INFO_FILE, message, line=line, column=column)]
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000), problems
