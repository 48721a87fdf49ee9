"""The Daylily sentinel protocol, as pure functions: reading a folder's sentinels, and writing ours back.

The real names (the system we replace documented others that never existed): ``daylily.ready``, ``daylily.lock``,
``daylily.in_progress``, ``daylily.complete``, ``daylily.error`` (body ``<timestamp>\\t<reason>``) and
``daylily.ignore``. When several are present, the legacy precedence decides: ignore > error > complete >
in_progress > lock > ready.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.model import State

READY = "daylily.ready"
LOCK = "daylily.lock"
IN_PROGRESS = "daylily.in_progress"
COMPLETE = "daylily.complete"
ERROR = "daylily.error"
IGNORE = "daylily.ignore"
PRECEDENCE = (IGNORE, ERROR, COMPLETE, IN_PROGRESS, LOCK, READY)
IN_FLIGHT = (IN_PROGRESS, LOCK)  # left by a legacy monitor that may or may not still be running it


def classify(names: Iterable[str]) -> str | None:
    """The sentinel that decides a folder's legacy state, or None when it has none."""
    present = set(names)
    return next((s for s in PRECEDENCE if s in present), None)


def timestamp(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def error_reason(body: bytes) -> str:
    """The reason in a ``daylily.error`` body (``<timestamp>\\t<reason>``), or the whole body if it has no tab."""
    text = body.decode("utf-8", errors="replace").strip()
    stamp, tab, reason = text.partition("\t")
    return (reason if tab else stamp).strip() or "legacy error (no reason recorded)"


@dataclass(frozen=True, slots=True)
class Mirror:
    """The sentinel files that make a folder say what the table says: what to write, what to remove."""

    write: dict[str, bytes]
    remove: tuple[str, ...]


def mirror(state: State, *, now_ms: int, reason: str = "") -> Mirror:
    """Sentinels for ``state``, so that the legacy monitor and its reports agree with us after a rollback."""
    stamp = timestamp(now_ms).encode()
    one_line = " ".join(reason.split())
    if state is State.IN_PROGRESS:
        return Mirror(write={IN_PROGRESS: stamp}, remove=(LOCK,))
    if state is State.COMPLETE:
        return Mirror(write={COMPLETE: stamp}, remove=(IN_PROGRESS, LOCK, ERROR))
    if state is State.ERROR:
        return Mirror(write={ERROR: stamp + b"\t" + one_line.encode()}, remove=(IN_PROGRESS, LOCK, COMPLETE))
    if state is State.CANCELLED:  # no legacy equivalent: an error keeps the old monitor from re-running it
        return Mirror(write={ERROR: stamp + b"\tcancelled: " + one_line.encode()}, remove=(IN_PROGRESS, LOCK))
    if state is State.IGNORED:
        return Mirror(write={IGNORE: stamp}, remove=(IN_PROGRESS, LOCK))
    # ready or retrying: claimable again, as the legacy monitor understands it
    return Mirror(write={}, remove=(IN_PROGRESS, LOCK, ERROR, COMPLETE, IGNORE))
