"""One operation per volume at a time on this host: a flock in a host-wide directory.

The locks live in /run/lock/volkeep (or $VOLKEEP_LOCK_DIR, for tests and unusual setups),
not in the state dir: two volkeep processes with different state dirs still back up, prune
or restore a volume one at a time. The directory is volkeep's alone (0700, owned by this
user or root); a lock file holds its holder's words, "backup of app by volkeep pid 42".
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.errors import OperationError

POLL_SECONDS = 0.2
LOCK_DIRECTORY = "VOLKEEP_LOCK_DIR"  # the environment variable that moves the locks
DEFAULT_LOCK_DIRECTORY = Path("/run/lock/volkeep")


def _configured_directory() -> Path:
    return Path(os.environ.get(LOCK_DIRECTORY) or DEFAULT_LOCK_DIRECTORY)


def lock_directory() -> Path:
    """Return the host-wide directory of volume locks, created 0700 if missing.

    Raise OperationError if it cannot be created, or if it is not a directory only this
    user (or root) may write to: a lock file another user could replace would let them
    block volkeep, or make it truncate a file of their choice through a symbolic link.
    """
    directory = _configured_directory()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = os.lstat(directory)
    except OSError as error:
        raise OperationError(
            f"cannot create the lock directory {directory}: {error.strerror}"
        ) from None
    if (
        not stat.S_ISDIR(status.st_mode)
        or status.st_uid not in (0, os.getuid())
        or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise OperationError(
            f"the lock directory {directory} is not volkeep's: it must be a directory of "
            f"this user or root that no one else may write to (chmod 700 it, or remove it)"
        )
    return directory


def _lock_path(volume: str) -> Path:
    return lock_directory() / f"{volume}.lock"


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another volkeep process"
    except OSError:
        return "another volkeep process"


@contextmanager
def volume_lock(
    volume: str,
    operation: str,
    *,
    wait: float = 0.0,
    cancel: threading.Event | None = None,
) -> Iterator[None]:
    """Hold the volume's host-wide lock for the block; wait up to `wait` seconds for it, or
    until `cancel` is set.

    Raise OperationError naming the holder if the volume stays busy, saying the wait was
    cancelled, or naming the lock directory if it is unusable.
    """
    path = _lock_path(volume)
    deadline = time.monotonic() + wait
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
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


@contextmanager
def collection_lock(host: str, policy: str) -> Iterator[bool]:
    """Hold the host-wide lock of the garbage collection of a policy in the namespace of
    `host` (the name volkeep writes under: two on one machine may share the lock
    directory) for the block if no other process holds it, and yield True; else yield False
    at once (a collection never waits: the next one does the work). Raise OperationError
    naming the lock directory if it is unusable."""
    # no volume name starts with "_"; host and policy names hold no "/" nor ":"
    path = lock_directory() / f"_collection:{host}:{policy}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        yield False
        return
    try:
        yield True
    finally:
        os.close(descriptor)  # kept: one file per policy, and removing it would race a taker


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


def is_locked(volume: str) -> bool:
    """Say whether some process on this host holds the volume's lock right now."""
    return is_held(_configured_directory() / f"{volume}.lock")
