"""Logging: structlog in front, the stdlib behind, one line per record on stderr.

JSON lines in production (journald and Docker collect stderr), a readable console rendering on a terminal.
botocore, urllib3 and every other stdlib logger go through the same formatter, so their records come out as JSON
too, carrying whatever context (``workset_id``...) the current task bound. stdout stays free for command output.
An exception is logged with its type, message and stack, never with the local variables of its frames.

The level can be changed at run time (``set_level``) because filtering happens in the stdlib, not in cached
structlog loggers.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

from monitor.terminal import for_terminal, lines_for_terminal

Format = Literal["auto", "json", "console"]
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug")
_HANDLER_NAME = "workset-monitor"
# Exceptions as data: type, message and stack, never the frames' local variables (botocore request contexts,
# credentials and webhook URLs live there; structlog's default shows them).
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _for_terminal(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Console logs show a step's output or an S3 key's control characters escaped, never obeyed."""
    return {
        key: (lines_for_terminal(value) if key == "exception" else for_terminal(value))
        if isinstance(value, str)
        else value
        for key, value in event.items()
    }


def configure(*, level: str = "info", fmt: Format = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger; safe to call again (e.g. on reload or in tests)."""
    out = stream if stream is not None else sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    shown: list[Any] = [_for_terminal] if console else []  # JSON escapes control characters itself
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if console else _DICT_TRACEBACKS,
            *shown,
            renderer,
        ],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    set_level(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def get(name: str = "monitor") -> Any:
    """A structlog logger; bind context with ``.bind()`` or ``structlog.contextvars.bound_contextvars``."""
    return structlog.stdlib.get_logger(name)


def bind(**values: Any) -> None:
    """Bind context for every later record of the current asyncio task (each task has its own copy)."""
    structlog.contextvars.bind_contextvars(**values)
