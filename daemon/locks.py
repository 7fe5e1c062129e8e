"""One operation per volume at a time, across processes: a flock in the state dir."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.errors import OperationError

POLL_SECONDS = 0.2


def _lock_path(state_dir: Path, volume: str) -> Path:
    directory = state_dir / "locks"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory / f"{volume}.lock"


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another volkeep process"
    except OSError:
        return "another volkeep process"


@contextmanager
def volume_lock(
    state_dir: Path,
    volume: str,
    operation: str,
    *,
    wait: float = 0.0,
    cancel: threading.Event | None = None,
) -> Iterator[None]:
    """Hold the volume's lock for the block; wait up to `wait` seconds for it, or until
    `cancel` is set.

    Raise OperationError naming the holder if the volume stays busy, or saying the wait was
    cancelled.
    """
    path = _lock_path(state_dir, volume)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancel is not None and cancel.is_set():
                    raise OperationError(
                        f"not started: volkeep is stopping (the volume was busy: {_holder(path)})",
                        volume=volume,
                    ) from None
                if time.monotonic() >= deadline:
                    raise OperationError(
                        f"volume is busy: {_holder(path)}; try again when it is done",
                        volume=volume,
                    ) from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{operation} by volkeep pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


def is_held(path: Path) -> bool:
    """Say whether some process holds a flock on the file right now (a missing file: no)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def is_locked(state_dir: Path, volume: str) -> bool:
    """Say whether some process holds the volume's lock right now."""
    return is_held(_lock_path(state_dir, volume))
