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
    deadline = time.monotonic() + wait
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
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
            continue
        if _still_named(descriptor, path):
            break
        os.close(descriptor)  # its holder removed it as we opened it: take the new one
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{operation} by volkeep pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Removed while still held, so that lock files do not pile up for every name ever
        # tried; a waiter that got the removed file sees it is no longer named and retries.
        path.unlink(missing_ok=True)
        os.close(descriptor)


def _still_named(descriptor: int, path: Path) -> bool:
    """Say whether the locked file is still the one `path` names."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


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
