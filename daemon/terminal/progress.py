"""Progress on a terminal (bytes, rate, ETA); silent when stderr is not a TTY.

The daemon reads the progress of the operation a thread runs (`progress_of`) for the
status line it gives systemd.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import weakref

REFRESH_SECONDS = 0.25
BAR_WIDTH = 24

_by_thread: weakref.WeakValueDictionary[int, Progress] = weakref.WeakValueDictionary()


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class Progress:
    """`total` may be an estimate (a backup's: the previous archive's tar size); past it,
    only bytes and rate are shown."""

    def __init__(self, label: str, total: int | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.started = time.monotonic()
        self._shown = 0.0
        _by_thread[threading.get_ident()] = self

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled and (now := time.monotonic()) - self._shown >= REFRESH_SECONDS:
            self._shown = now
            self._show(now)

    def describe(self, now: float) -> str:
        """Return the progress at monotonic time `now`: bytes (of total, %), rate, ETA."""
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        line = human_bytes(self.done)
        known = self.total is not None and self.done < self.total
        if known and self.total:
            line += f" of {human_bytes(self.total)} ({100 * self.done / self.total:.0f}%)"
        line += f", {human_bytes(rate)}/s"
        if known and self.total and rate > 0:
            line += f", ETA {(self.total - self.done) / rate:.0f}s"
        return line

    def bar(self) -> str:
        """Return a bar of the share done, or "" while the total is unknown or passed."""
        if not self.total or self.done >= self.total:
            return ""
        filled = int(BAR_WIDTH * self.done / self.total)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "

    def _show(self, now: float) -> None:
        line = f"{self.label}: {self.bar()}{self.describe(now)}"
        sys.stderr.write(f"\r\033[K{line[: shutil.get_terminal_size().columns - 1]}")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def end_line() -> None:
    """Clear a progress line on the terminal, so that the next message starts on its own."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def progress_of(thread: int) -> Progress | None:
    """Given a thread id, return the progress of the operation it runs now, if any."""
    return _by_thread.get(thread)
