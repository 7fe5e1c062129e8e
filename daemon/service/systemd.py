"""systemd's notify protocol: READY=1, STATUS=..., WATCHDOG=1 as datagrams on NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same
under a terminal, a container or a test that owns the socket.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger()


def notify(*lines: str) -> None:
    """Given "KEY=value" lines, send them to systemd in one datagram, if systemd listens.

    A socket path starting with "@" is in the abstract namespace. A failed send is logged,
    never raised: losing a status line must not stop a backup.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as channel:
            channel.sendto("\n".join(lines).encode(), address)
    except OSError as error:
        log.warning("cannot notify systemd", error=str(error), lines=list(lines))


def watchdog_interval() -> float | None:
    """Return the seconds between two WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if
    systemd does not watch this process."""
    microseconds = os.environ.get("WATCHDOG_USEC", "")
    watched_pid = os.environ.get("WATCHDOG_PID", "")
    if not microseconds.isdigit() or int(microseconds) == 0:
        return None
    if watched_pid and watched_pid != str(os.getpid()):
        return None
    return int(microseconds) / 2_000_000


class Watchdog:
    """A thread that sends WATCHDOG=1 every `interval` seconds while `is_alive()` says yes.

    When the check fails, the pings stop and systemd restarts the service after WatchdogSec.
    """

    def __init__(self, interval: float, is_alive: Callable[[], bool]) -> None:
        self._interval = interval
        self._is_alive = is_alive
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            if self._is_alive():
                notify("WATCHDOG=1")
            else:
                log.error("the scheduler stopped answering: not pinging the systemd watchdog")
