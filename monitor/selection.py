"""Choosing worksets by what an operator knows of them: ``list`` and the bulk actions' filters, and a position in
the listing order to page from. Pure: the stores read the index in this order; this decides what matches.

The order (``list``'s, documented in docs/operations.md): by state (``LIST_ORDER``), then as the state-priority index
sorts a state: urgent first, then oldest ``available_at`` first, then by id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.model import Priority, State, Workset

LIST_ORDER = (
    State.READY,
    State.IN_PROGRESS,
    State.RETRYING,
    State.ERROR,
    State.CANCELLED,
    State.COMPLETE,
    State.IGNORED,
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_TOKEN = re.compile(r"(?P<state>[a-z_]+):(?P<rank>\d):(?P<at>\d{15}):(?P<id>[A-Za-z0-9._-]{1,128})")


def parse_since(value: str, *, now_ms: int) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``12h``, ``7d``, ``2w``) or a time (``2026-12-01``,
    ``2026-12-01T06:00``, ``...Z`` or with an offset; a time without one is UTC), as epoch milliseconds."""
    text = value.strip()
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text):
        return now_ms - round(float(match.group(1)) * _UNITS[match.group(2)] * 1000)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (90s, 30m, 12h, 7d, 2w) nor a time (2026-12-01, 2026-12-01T06:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def parse_when(value: str, *, now_ms: int) -> int:
    """``--not-before``/``--until``: ``+DURATION`` from now (``+30s``, ``+2h``, ``+1d``) or a time (as ``--since``
    reads one), as epoch milliseconds."""
    text = value.strip()
    if match := re.fullmatch(r"\+(\d+(?:\.\d+)?)\s*([smhdw])", text):
        return now_ms + round(float(match.group(1)) * _UNITS[match.group(2)] * 1000)
    if re.fullmatch(r"\d+(?:\.\d+)?\s*[smhdw]", text):
        raise ValueError(f"{value!r}: a duration from now needs a + (+{text})")
    try:
        return parse_since(text, now_ms=now_ms)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither +DURATION (+30s, +2h, +1d) nor a time (2026-12-05T02:00Z, 2026-12-05)"
        ) from None


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a workset stands in the listing order: its state's place, and its key in the state's index."""

    state_rank: int
    sort_key: str

    @property
    def state(self) -> State:
        return LIST_ORDER[self.state_rank]

    @classmethod
    def at(cls, state: State, sort_key: str) -> Position:
        return cls(LIST_ORDER.index(state), sort_key)

    @property
    def token(self) -> str:
        """``--after``'s value: ``<state>:<rank>:<available_at_ms>:<id>``, or for a finished workset in the finished
        index ``<state>:9:<finished_at_ms>:<id>`` (printable, no shell metacharacters)."""
        return f"{self.state.value}:{self.sort_key.replace('#', ':')}"

    @classmethod
    def parse(cls, token: str) -> Position:
        match = _TOKEN.fullmatch(token.strip())
        if match is None or match.group("state") not in {s.value for s in State}:
            raise ValueError(f"{token[:80]!a} is not a position printed by `list` (<state>:<rank>:<time>:<id>)")
        return cls.at(State(match.group("state")), f"{match.group('rank')}#{match.group('at')}#{match.group('id')}")


@dataclass(frozen=True, slots=True)
class Selection:
    """Worksets matching every filter given (none: all)."""

    state: State | None = None
    priority: Priority | None = None
    changed_since_ms: int | None = None  # in its current state since (the last change: for error, when it failed)
    prefix: str | None = None  # its folder (``Workset.prefix``) starts with this
    error_category: str | None = None

    @property
    def filtered(self) -> bool:
        """Whether any filter narrows the selection (the bulk actions then ask for --yes)."""
        return any(
            v is not None for v in (self.state, self.priority, self.changed_since_ms, self.prefix, self.error_category)
        )

    def matches(self, ws: Workset) -> bool:
        return (
            self.state in (None, ws.state)
            and self.priority in (None, ws.priority)
            and (self.changed_since_ms is None or ws.updated_at_ms >= self.changed_since_ms)
            and (self.prefix is None or ws.prefix.startswith(self.prefix))
            and (self.error_category is None or ws.error_category == self.error_category)
        )
