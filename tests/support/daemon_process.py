"""`volkeep run` as a real subprocess, with a systemd notify socket the test owns."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

WAIT_SECONDS = 90.0  # a safety net only: every wait ends as soon as its condition holds


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll `condition` until it returns something truthy, and return that.

    Fail the test, saying `what` was awaited, if the timeout passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class NotifySocket:
    """A datagram socket in the abstract namespace, as systemd's NOTIFY_SOCKET is; collects
    every message volkeep sends."""

    def __init__(self) -> None:
        self.address = f"@volkeep-test-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.address[1:])
        self._socket.settimeout(0.2)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self._socket.recv(4096).decode())
            except TimeoutError:
                continue

    def lines(self) -> list[str]:
        """Return every line received so far, in order."""
        return [line for message in list(self.messages) for line in message.splitlines()]

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._socket.close()


class DaemonProcess:
    """`volkeep run` started from `command`, its JSON log in a file."""

    def __init__(self, command: list[str], log_file: Path, env: dict[str, str], cwd: Path) -> None:
        self.log_file = log_file
        with open(log_file, "wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **env},
                cwd=cwd,
            )
        self.pid = self.process.pid

    def logs(self) -> list[dict[str, Any]]:
        """Return the log lines written so far that are JSON (all of them, normally)."""
        entries = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Return the log lines of `event` whose fields include `fields`."""
        return [
            entry
            for entry in self.logs()
            if entry.get("event") == event
            and all(entry.get(key) == value for key, value in fields.items())
        ]

    def wait_for_event(self, event: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """Wait until `event` (with `fields`) was logged `count` times; return those lines."""
        found: list[dict[str, Any]] = wait_until(
            lambda: (lines := self.events(event, **fields)) and len(lines) >= count and lines,
            f"{count} x {event!r} {fields} in the daemon's log",
        )
        return found

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def stop(self, timeout: float = WAIT_SECONDS) -> int:
        """Send SIGTERM and return the exit code."""
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
