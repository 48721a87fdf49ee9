"""SIGHUP: read the config file again and swap the new settings in, keeping what needs a restart.

A bad file is logged and the running configuration kept (``config_last_reload_successful`` goes to 0, systemd hears
``STATUS=reload failed``). Safe keys apply at each engine's next tick, through ``Live``; keys that need a restart are
reported by name and keep their running value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from monitor import errors, logs
from monitor.config import Loaded, Settings
from monitor.live import Live
from monitor.loops import Loops
from monitor.systemd import Notifier

log = logs.get("monitor.reloader")

# (section, key or None for the whole section): changing these needs a restart; a reload keeps the old value.
RESTART_ONLY: tuple[tuple[str, str | None], ...] = (
    ("aws", None),
    ("table", None),
    ("lease", None),
    ("scan", "bucket"),
    ("scan", "write_sentinels"),
    ("scan", "sqs_queue_url"),
    ("metrics", "host"),
    ("metrics", "port"),
    ("metrics", "cloudwatch"),
    ("run", "step_env_passthrough"),
    ("run", "step_logs"),
    ("run", "state_dir"),
    ("log", "format"),
)


class Reloader:
    def __init__(
        self,
        live: Live,
        *,
        read: Callable[[], Loaded] | None,
        notifier: Notifier,
        applied: Callable[[Settings], None] = lambda _: None,
    ) -> None:
        self._live = live
        self._read = read  # reads and validates the config file again; None: nothing to reload from
        self._notifier = notifier
        self._applied = applied  # what else a new configuration changes (channels, a claim round)
        self.wake = asyncio.Event()  # wakes the reloader's loop...
        self._requested = False  # ...which reloads if this is set (a SIGHUP came)
        self.successful = True
        self.loaded_at = time.time()  # wall time of the last successful load

    def state(self) -> tuple[bool, float]:
        """(the last load succeeded, wall time of the last successful load), for the metrics."""
        return self.successful, self.loaded_at

    def request(self) -> None:
        self._requested = True
        self.wake.set()

    async def run(self, loops: Loops) -> None:
        await loops.poll("reloader", self._tick, every_s=lambda: 3600.0, wake=self.wake)

    async def _tick(self) -> None:
        if self._requested:  # the poll also ticks on its own: only a SIGHUP reloads
            self._requested = False
            await self.reload()

    async def reload(self) -> bool:
        """Read the config file again; apply what is safe live. False (old config kept) when it is invalid."""
        if self._read is None:
            return False
        self._notifier.reloading()
        try:
            loaded = await asyncio.to_thread(self._read)
        except errors.ConfigError as exc:
            self.successful = False
            log.error("config reload failed; keeping the running configuration", error=str(exc))
            self._notifier.send("READY=1", f"STATUS=reload failed: {exc}"[:200])
            return False
        new, kept = keep_restart_only(self._live.settings, loaded.settings)
        for key in kept:
            log.warning("config key needs a restart; keeping the running value", key=key)
        self.apply(new)
        self.successful = True
        self.loaded_at = time.time()
        log.info("config reloaded", config=str(loaded.path), restart_needed=kept)
        self._notifier.ready("serving (configuration reloaded)")
        return True

    def apply(self, new: Settings) -> None:
        """Switch to ``new`` settings: intervals, concurrency, retries, steps, prefixes, channels, log level."""
        self._live.swap(new)
        logs.set_level(new.log.level)
        self._applied(new)


def keep_restart_only(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with every restart-only key that changed put back to its ``old`` value, and those keys' names."""
    kept: list[str] = []
    sections: dict[str, Any] = {}
    for section, key in RESTART_ONLY:
        old_section, new_section = getattr(old, section), sections.get(section, getattr(new, section))
        if key is None:
            if old_section != new_section:
                kept.append(section)
                sections[section] = old_section
        elif getattr(old_section, key) != getattr(new_section, key):
            kept.append(f"{section}.{key}")
            sections[section] = new_section.model_copy(update={key: getattr(old_section, key)})
    return new.model_copy(update=sections), kept
