"""Logging: JSON lines, context carried into stdlib (botocore) records, noisy libraries held at WARNING."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from monitor import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure(level="info", fmt="json", stream=out)
    yield out
    structlog.contextvars.clear_contextvars()
    logs.configure(level="warning", fmt="json", stream=io.StringIO())


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_records_are_json_lines_with_bound_context(stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(workset_id="ws-1", state="in_progress"):
        logs.get("monitor.test").info("claimed", lease_owner="h:1:x")
    [record] = lines(stream)
    assert record["event"] == "claimed" and record["level"] == "info"
    assert (record["workset_id"], record["state"], record["lease_owner"]) == ("ws-1", "in_progress", "h:1:x")
    assert str(record["timestamp"]).endswith("Z")


def test_stdlib_records_from_libraries_come_out_as_json_with_context(stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(workset_id="ws-9"):
        logging.getLogger("botocore.retryhandler").warning("retry needed")
        logging.getLogger("botocore.endpoint").info("chatty detail that must not appear")
    [record] = lines(stream)
    assert record["event"] == "retry needed" and record["logger"] == "botocore.retryhandler"
    assert record["workset_id"] == "ws-9"


def test_the_level_can_change_at_run_time(stream: io.StringIO) -> None:
    log = logs.get("monitor.test")
    log.debug("hidden")
    logs.set_level("debug")
    log.debug("shown")
    assert [r["event"] for r in lines(stream)] == ["shown"]


def test_exceptions_are_structured(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get("monitor.test").exception("step crashed")
    [record] = lines(stream)
    assert record["event"] == "step crashed" and "ValueError" in json.dumps(record["exception"])


def test_a_traceback_carries_type_message_and_stack_but_never_local_variables(stream: io.StringIO) -> None:
    """A permanent AWS error's frames hold request contexts and credentials: production logs keep the message, the
    exception type and the stack, not what each frame had in its variables."""

    def sign_request() -> None:
        secret_access_key = "wJalrXUtnFEMI-never-logged"  # noqa: F841 - a local the log must not show
        raise PermissionError("AccessDenied: not authorized to perform dynamodb:UpdateItem")

    try:
        sign_request()
    except PermissionError:
        logs.get("monitor.test").critical("root task died; shutting down", exc_info=True)
    [record] = lines(stream)
    assert "never-logged" not in json.dumps(record) and "secret_access_key" not in json.dumps(record)
    [exc] = record["exception"]  # type: ignore[misc]
    assert exc["exc_type"] == "PermissionError" and exc["exc_value"].startswith("AccessDenied")
    frames = exc["frames"]
    assert [f["name"] for f in frames][-1] == "sign_request" and all("lineno" in f for f in frames)
    assert all("locals" not in f for f in frames)


def test_console_format_is_human_readable() -> None:
    out = io.StringIO()
    logs.configure(level="info", fmt="console", stream=out)
    try:
        logs.get("monitor.test").info("hello", workset_id="ws-1")
    finally:
        logs.configure(level="warning", fmt="json", stream=io.StringIO())
    text = out.getvalue()
    assert "hello" in text and "workset_id=ws-1" in text and not text.startswith("{")


def test_console_logs_show_control_characters_escaped() -> None:
    """A step's output line with terminal escapes reached a terminal raw through the console log."""
    out = io.StringIO()
    logs.configure(level="info", fmt="console", stream=out)
    try:
        logs.get("monitor.test").info("step output", line="\x1b[2J\x1b[Hfake prompt $ ", step="s\u202e")
    finally:
        logs.configure(level="warning", fmt="json", stream=io.StringIO())
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text, text
    assert "\\x1b[2J" in text and "\\u202e" in text
