"""The systemd notify protocol, with the standard library: one datagram per message to ``$NOTIFY_SOCKET``.

Without a socket (not under systemd, or in a container) every call does nothing. A failing send is logged once and
never stops the daemon: the watchdog will notice if the daemon really is stuck.
"""

from __future__ import annotations

import socket
import time

from monitor import logs
from monitor.loops import Loops

log = logs.get("monitor.systemd")


class Notifier:
    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        # A ping every quarter of the timeout: one late ping (a slow disk, a busy host) is never a kill.
        self.watchdog_interval_s = watchdog_usec / 4_000_000 if watchdog_usec else None
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def watchdog_forever(notifier: Notifier, loops: Loops) -> None:
    """The watchdog engine: ``WATCHDOG=1`` every quarter of systemd's timeout while the daemon is healthy; none while
    it is not, so systemd kills a daemon whose loops are stuck one watchdog period later."""
    assert notifier.watchdog_interval_s is not None
    interval_s = notifier.watchdog_interval_s
    withheld = False

    async def tick() -> None:
        nonlocal withheld
        healthy, why = loops.healthy()
        if healthy:
            notifier.watchdog()
            withheld = False
        elif not withheld:  # once per spell
            withheld = True
            log.error("unhealthy: withholding the systemd watchdog ping", reason=why)

    await loops.poll("watchdog", tick, every_s=lambda: interval_s)
