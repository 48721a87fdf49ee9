"""The interfaces the loops and the CLI are written against; adapters in ``monitor.aws`` and ``monitor.memory``
implement them.

Store guarantees (both implementations, one behavioural test suite):
- ``register`` is an idempotent conditional create: an existing id is left untouched and ``False`` returned.
- ``commit`` writes a ``Decision`` only if the item is still in ``decision.before.state`` at
  ``decision.before.version`` (and, when ``fence_token`` is given, still holds that lease token); the control item
  and the audit event are written together or not at all. A lost condition raises ``Conflict`` (``LeaseLost``
  when the token no longer matches).
- Reads are strongly consistent for single worksets; listings follow every page and never truncate silently.
"""

from __future__ import annotations

from typing import Protocol

from monitor.model import Event, Priority, State, Stats, Workset, WorksetId
from monitor.states import Decision


class Store(Protocol):
    async def register(self, decision: Decision) -> bool:
        """Create the workset with its first event; False (and no write) if the id exists."""
        ...

    async def get(self, workset_id: WorksetId) -> Workset | None: ...

    async def commit(self, decision: Decision, *, fence_token: str | None = None) -> Workset:
        """Conditionally apply ``decision``; returns the new record."""
        ...

    async def history(self, workset_id: WorksetId) -> list[Event]:
        """Every event of the workset, oldest first."""
        ...

    async def list(
        self, *, state: State | None = None, priority: Priority | None = None, limit: int | None = None
    ) -> list[Workset]:
        """Worksets by state (all states when None), urgent first, then FIFO by available_at."""
        ...

    async def stats(self, *, now_ms: int) -> Stats: ...
