"""A helper's stream through a named pipe: the helper's tar writes into a FIFO that lives
in the state dir and is bound into the helper; volkeep reads the FIFO. The bytes go from
the helper to volkeep through the kernel and never through dockerd.

Through the attach socket dockerd copies every byte in frames of 32 KiB: measured here,
that holds the stream of the benchmark's 0.99 GB volume to ~3 s and costs dockerd ~1.8
CPU-s; through the pipe the same stream takes ~1 s (README, "Where a backup's time goes").

The pipe needs an engine that sees this host's files at the same paths. When it does not
(a remote engine, volkeep in a container whose state dir the engine sees elsewhere, an
engine in a VM), the engine refuses the helper's bind mount, or the helper never opens the
pipe; or the state dir cannot hold a FIFO. The stream then goes through the attach socket,
for that engine, for the rest of the process (`refuse`), and a warning says why.

A pipe's directory is named after the process that made it (daemon.system.owner); the next pipe
made removes those of processes that have ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import select
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import structlog

from daemon.system.owner import owner_is_gone, this_process

log = structlog.get_logger()

PIPE_TARGET = "/volkeep/stream"  # where the helper sees the pipe
PIPE_SIZE = 1 << 20  # the kernel's default maximum (fs.pipe-max-size); the default is 64 KiB
POLL_MS = 200
CONNECT_TIMEOUT = 30.0  # a running helper that has not opened the pipe by then never will

_refused: set[str] = set()  # engines (their base URL) that cannot reach this host's pipes


class PipeUnavailable(Exception):
    """No pipe: the state dir cannot hold one, the engine cannot bind it into the helper,
    or the helper never opened it."""


def usable(api: docker.APIClient) -> bool:
    """Say whether streams from this engine may go through a pipe."""
    return api.base_url not in _refused


def refuse(api: docker.APIClient, why: str) -> None:
    """Stream through the attach socket from now on for this engine, and say so once."""
    _refused.add(api.base_url)
    log.warning("the helper cannot stream through a pipe: streaming through dockerd", why=why)


def bind_refused(error: docker.errors.APIError) -> bool:
    """Given the engine's refusal to create a helper with a pipe, say whether it is the
    pipe's bind mount it refuses (its source is not on the engine's host)."""
    return "bind source path" in str(error.explanation or error)


class Pipe:
    """A FIFO in a private directory of the state dir, opened for reading before the helper
    starts. Use it as a context manager: leaving removes it."""

    def __init__(self, state_dir: Path) -> None:
        """Make the pipe; raise PipeUnavailable if the state dir cannot hold one."""
        pipes = state_dir / "pipes"
        self._directory = pipes / f"{this_process()}.{secrets.token_hex(4)}"
        self.path = self._directory / "stream"
        try:
            pipes.mkdir(mode=0o700, exist_ok=True)
            _remove_leftovers(pipes)
            self._directory.mkdir(mode=0o700)
            os.mkfifo(self.path)
            # Writable by the helper whatever user it runs as (user namespaces map its root
            # to another uid); the directory keeps everyone else on this host out.
            os.chmod(self.path, 0o622)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as error:
            shutil.rmtree(self._directory, ignore_errors=True)
            reason = (error.strerror or str(error)).lower()
            raise PipeUnavailable(f"cannot make a pipe in {pipes}: {reason}") from None
        with contextlib.suppress(OSError):  # a smaller pipe only costs speed
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._stop = threading.Event()

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self._fd)
        shutil.rmtree(self._directory, ignore_errors=True)

    def stop(self) -> None:
        """Make `pieces` return at its next poll (the consumer stopped early)."""
        self._stop.set()

    def pieces(self, size: int, helper_ended: Callable[[], bool]) -> Iterator[memoryview]:
        """Yield what the helper writes into the pipe, in pieces of `size` bytes (the last
        one shorter), each in its own buffer, until the helper closes it.

        Raise PipeUnavailable if the helper ends, or runs for CONNECT_TIMEOUT, without
        opening the pipe: nothing was yielded then.
        """
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        connected = False
        since = time.monotonic()
        piece = memoryview(bytearray(size))
        filled = 0
        while not self._stop.is_set():
            if not poller.poll(POLL_MS):
                # Before a writer opens a FIFO, poll reports nothing: not even a hang-up.
                if not connected and (helper_ended() or time.monotonic() - since > CONNECT_TIMEOUT):
                    raise PipeUnavailable("the helper did not open the pipe")
                continue
            try:
                received = os.readv(self._fd, [piece[filled:]])
            except BlockingIOError:
                continue
            if not received:
                break  # the helper closed the pipe: the end of the stream
            connected = True
            filled += received
            if filled == len(piece):
                yield piece
                piece = memoryview(bytearray(size))
                filled = 0
        if filled:
            yield piece[:filled]


def _remove_leftovers(pipes: Path) -> None:
    """Remove the pipes of processes that have ended (a crash, a kill -9)."""
    for directory in pipes.iterdir():
        owner = directory.name.rpartition(".")[0]
        if owner and owner_is_gone(owner):
            shutil.rmtree(directory, ignore_errors=True)
