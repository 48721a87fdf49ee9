"""The scanner's memory of registered folders, kept on local disk between restarts (``[run] state_dir``).

Without it, the daemon that takes the chores role reads every registered workset id from the table before its
first scan: at a million worksets, tens of thousands of read units and minutes, at every restart. With it, a warm
restart reads none: the ids and locations come from a SQLite file (the standard library's) in the state directory,
the folders the table does not know yet are looked up as always (one ``BatchGetItem`` per 100 unknown names), and what
is learnt is added to the file after each scan.

The file is only trusted for the table incarnation it was filled from (``Store.identity``: the table's ARN and
creation time): a table deleted and created again, or another table, starts from a full read, as without a file.
Worksets are never deleted from the table by the product, so a folder the file knows is registered; an item deleted
by hand is not seen again until the file is removed (docs/operations.md).

Never in the way: a missing, unreadable, corrupt or unwritable file (a read-only disk, a full disk, another
program's file) is logged once and the scanner goes on as without one. The SQLite work runs in a worker thread
(a million rows take a second or two), one short connection per call.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path

from monitor import logs
from monitor.model import WorksetId

log = logs.get("monitor.known_folders")

FORMAT = "1"  # the file's layout; another value is ignored and the file refilled


def path_for(state_dir: str, table: str) -> Path:
    return Path(state_dir) / f"known-folders-{table}.sqlite3"


class KnownFolders:
    """Registered workset id -> location (``bucket/prefix``), for one table incarnation, in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.broken: str | None = None  # why the file is not used any more (logged once)

    async def load(self, identity: str) -> dict[WorksetId, str] | None:
        """What the file knows, or None when it has nothing for this table (absent, another table, unreadable)."""
        if self.broken or not self.path.exists():
            return None
        return await self._run(self._load, identity)

    async def replace(self, identity: str, known: Mapping[WorksetId, str]) -> None:
        """Start the file afresh from a full read of the table."""
        if not self.broken:
            await self._run(self._write, identity, dict(known), True)

    async def add(self, identity: str, known: Mapping[WorksetId, str]) -> None:
        """Remember more registered folders."""
        if known and not self.broken:
            await self._run(self._write, identity, dict(known), False)

    async def _run(
        self, work: Callable[..., dict[WorksetId, str] | None], *args: object
    ) -> dict[WorksetId, str] | None:
        try:
            return await asyncio.to_thread(work, *args)
        except (sqlite3.Error, OSError) as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
            log.warning(
                "the known-folders file cannot be used; scanning without it (a restart reads every registered id)",
                path=str(self.path),
                error=self.broken,
            )
            return None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=5)
        connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("CREATE TABLE IF NOT EXISTS known (workset_id TEXT PRIMARY KEY, location TEXT NOT NULL)")
        return connection

    def _load(self, identity: str) -> dict[WorksetId, str] | None:
        with closing(self._connect()) as connection:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT or meta.get("identity") != identity or meta.get("complete") != "1":
                if meta:
                    log.info(
                        "the known-folders file is for another table or layout; reading the table", path=str(self.path)
                    )
                return None
            return {
                WorksetId(i): location for i, location in connection.execute("SELECT workset_id, location FROM known")
            }

    def _write(self, identity: str, known: dict[WorksetId, str], fresh: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection, connection:  # one transaction: all of it or none of it
            if fresh:
                connection.execute("DELETE FROM known")
                connection.execute("DELETE FROM meta")
                connection.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("format", FORMAT), ("identity", identity), ("complete", "1")],
                )
            elif connection.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone() != (identity,):
                return  # filled from another table: only a full read may start it afresh
            connection.executemany("INSERT OR REPLACE INTO known (workset_id, location) VALUES (?, ?)", known.items())
