"""The systemd notify protocol: READY=1, STOPPING=1 and watchdog pings to ``$NOTIFY_SOCKET``.

Each message is one datagram of ``KEY=VALUE`` lines. Outside systemd (no ``NOTIFY_SOCKET``)
every call does nothing, so the CLI can use a ``Notifier`` unconditionally.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

log = structlog.get_logger("relay.notify")


class Notifier:
    """Sends state changes to the service manager and, when asked, keeps its watchdog fed."""

    def __init__(self, address: str | None, *, watchdog_interval_s: float | None = None) -> None:
        # A leading "@" names a socket in Linux's abstract namespace (no file behind it).
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self.watchdog_interval_s = watchdog_interval_s

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, pid: int) -> Notifier:
        """The notifier systemd asked for: ping at half of ``WATCHDOG_USEC``, as sd_notify advises.

        ``WATCHDOG_PID`` naming another process means the watchdog is not ours to feed.
        """
        interval_s = None
        usec = environ.get("WATCHDOG_USEC", "")
        owner = environ.get("WATCHDOG_PID", str(pid))
        if usec.isdigit() and int(usec) > 0 and owner == str(pid):
            interval_s = int(usec) / 2 / 1_000_000
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_interval_s=interval_s)

    def notify(self, *states: str) -> None:
        """Send ``states`` (e.g. ``"READY=1"``) as one datagram; a failure is logged, not raised.

        Non-blocking: a full queue at the service manager drops this message rather than
        stall the event loop; the next watchdog ping comes within half the timeout.
        """
        if self._address is None:
            return
        message = "\n".join(states).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("notify.failed", states=list(states), error=str(exc))

    @contextlib.asynccontextmanager
    async def watchdog(self, alive: Callable[[], bool]) -> AsyncIterator[None]:
        """Ping the watchdog while the block runs, on each tick that ``alive()`` holds.

        The pings come from a task on the event loop, so a stuck loop stops them and systemd
        restarts the relay.
        """
        if self._address is None or self.watchdog_interval_s is None:
            yield
            return
        task = asyncio.create_task(self._feed(self.watchdog_interval_s, alive), name="watchdog")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _feed(self, interval_s: float, alive: Callable[[], bool]) -> None:
        while True:
            if alive():
                self.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)
