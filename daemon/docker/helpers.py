"""Helper containers: short-lived, locked down, labelled for reaping, always removed.

A helper mounts volumes and runs one command of the helper image (tar, find...). Its
stdout is read from the attach socket, never through a log driver: the default json-file
driver would record the whole stream and cap it at ~20 MB/s (ENGINE-FACTS.md).

Locked down: no network, every capability dropped but the few the operation needs, no new
privileges, a read-only root file system (the volumes keep their own mode), at most
HELPER_PIDS processes and HELPER_MEMORY bytes of memory.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker
import requests
from docker.types import LogConfig
from docker.types import Mount as DockerMount

from daemon.errors import OperationError
from daemon.owner import this_process
from daemon.readahead import read_ahead

LABEL_ROLE = "volkeep.role"
LABEL_VOLUME = "volkeep.volume"
LABEL_OWNER = "volkeep.owner"  # host:pid:start of the process that made it (daemon.owner)
FRAME_HEADER = struct.Struct(">BxxxL")
READ_BUFFER = 1 << 20
PIECE_SIZE = 1 << 20
QUEUE_DEPTH = 8
STDERR_LIMIT = 64 << 10
HELPER_PIDS = 64  # sh, find -exec rm, tar: a handful
HELPER_MEMORY = 256 << 20  # busybox or GNU tar streaming a volume needs a few MiB

READ_CAPABILITIES = ("DAC_READ_SEARCH",)  # read every file whatever its mode, change nothing
WRITE_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID")

# The helpers this process has created and not yet removed, for `kill_helpers`.
_live_helpers: set[str] = set()
_live_helpers_lock = threading.Lock()


@dataclass(frozen=True)
class Mount:
    volume: str
    target: str
    read_only: bool = True


def helper_labels(volume: str, role: str = "helper") -> dict[str, str]:
    return {LABEL_ROLE: role, LABEL_VOLUME: volume, LABEL_OWNER: this_process()}


@contextmanager
def helper_container(
    api: docker.APIClient,
    image: str,
    command: Sequence[str],
    mounts: Sequence[Mount],
    *,
    capabilities: Sequence[str] = READ_CAPABILITIES,
    owner: str | None = None,
) -> Iterator[str]:
    """Create a helper container and yield its id; remove it on every path out.

    `owner` is the volume the operation works for (default: the first mount's), for the
    label; the labels also name this process, so that the next volkeep command removes the
    helper if this process dies.
    """
    host_config = helper_host_config(api, mounts, capabilities)
    # A name known before the engine answers: an interruption (SIGTERM) that lands while
    # the engine creates the container must not leave it behind.
    name = f"volkeep-helper-{secrets.token_hex(8)}"
    try:
        container = api.create_container(
            image,
            list(command),
            host_config=host_config,
            labels=helper_labels(owner or (mounts[0].volume if mounts else "")),
            network_disabled=True,
            name=name,
        )
    except docker.errors.ImageNotFound:
        raise missing_image(image) from None
    except BaseException:
        remove_container(api, name)
        raise
    container_id: str = container["Id"]
    with _live_helpers_lock:
        _live_helpers.add(container_id)
    try:
        yield container_id
    finally:
        with _live_helpers_lock:
            _live_helpers.discard(container_id)
        remove_container(api, container_id)


def helper_host_config(
    api: docker.APIClient, mounts: Sequence[Mount], capabilities: Sequence[str]
) -> dict[str, Any]:
    """Given a helper's mounts and capabilities, return its locked-down host config."""
    host_config: dict[str, Any] = api.create_host_config(
        mounts=[
            DockerMount(m.target, m.volume, type="volume", read_only=m.read_only, no_copy=True)
            for m in mounts
        ],
        network_mode="none",
        cap_drop=["ALL"],
        cap_add=list(capabilities),
        security_opt=["no-new-privileges"],
        log_config=LogConfig(type="none"),
        read_only=True,
        pids_limit=HELPER_PIDS,
        mem_limit=HELPER_MEMORY,
    )
    return host_config


def kill_helpers(api: docker.APIClient) -> int:
    """Kill every running helper container of this process, so that the operations reading
    or feeding them fail and clean up as on any failure; return how many were running.

    A helper that is created but not started yet is not killed: call again.
    """
    with _live_helpers_lock:
        helpers = sorted(_live_helpers)
    killed = 0
    for container_id in helpers:
        try:
            api.kill(container_id)
            killed += 1
        except (docker.errors.APIError, requests.RequestException):
            continue  # not started yet, already gone, or the engine is slow: call again
    return killed


def missing_image(image: str) -> OperationError:
    return OperationError(
        f"helper image {image!r} is not on this Docker host: pull it or build it "
        "(scripts/build-helper-image.sh)"
    )


def remove_container(api: docker.APIClient, container_id: str) -> None:
    try:
        api.remove_container(container_id, force=True, v=False)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        if error.status_code != 409:  # 409: its removal is already in progress
            raise


def _attach(api: docker.APIClient, container_id: str, stream: str) -> socket.socket:
    response_socket: Any = api.attach_socket(container_id, params={stream: 1, "stream": 1})
    raw: socket.socket = getattr(response_socket, "_sock", response_socket)
    raw.settimeout(None)
    return raw


def _frames(source: socket.socket) -> Iterator[memoryview]:
    """Yield the payload of each frame of an attach stream; each is valid until the next."""
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    start = end = 0
    while True:
        while end - start >= FRAME_HEADER.size:
            _, length = FRAME_HEADER.unpack_from(buffer, start)
            frame_end = start + FRAME_HEADER.size + length
            if frame_end > end:
                break
            yield view[start + FRAME_HEADER.size : frame_end]
            start = frame_end
        if start:
            buffer[: end - start] = buffer[start:end]
            end -= start
            start = 0
        if end == len(buffer):  # a frame larger than the buffer: move to a larger one
            buffer = bytearray(buffer) + bytearray(len(buffer))
            view = memoryview(buffer)
        received = source.recv_into(view[end:])
        if not received:
            return
        end += received


class HelperOutput:
    """The running helper's stdout as it arrives, and its stderr.

    Each has its own attach connection: dockerd muxing both streams into one connection
    costs it half again as much CPU (measured: 2.2 s against 1.6 s for a 1 GB tar).
    """

    def __init__(self, api: docker.APIClient, container_id: str) -> None:
        self._api = api
        self._container_id = container_id
        self._socket = _attach(api, container_id, "stdout")
        self._stderr_socket = _attach(api, container_id, "stderr")
        self._stderr = bytearray()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        api.start(container_id)

    def _read_stderr(self) -> None:
        with contextlib.suppress(OSError), self._stderr_socket:
            for payload in _frames(self._stderr_socket):
                if len(self._stderr) < STDERR_LIMIT:  # read on regardless: never block tar
                    self._stderr += payload

    def chunks(self) -> Iterator[memoryview]:
        """Yield stdout in pieces of about a MiB, read ahead by a thread while the caller
        parses, digests and compresses the previous piece."""
        try:
            yield from read_ahead(self._pieces(), QUEUE_DEPTH, interrupt=self._interrupt)
        finally:
            self._socket.close()

    def _interrupt(self) -> None:
        for attached in (self._socket, self._stderr_socket):
            with contextlib.suppress(OSError):
                attached.shutdown(socket.SHUT_RDWR)

    def _pieces(self) -> Iterator[memoryview]:
        """Yield stdout gathered into pieces of about PIECE_SIZE, each in its own buffer
        (handed over, never reused), with one copy from the receive buffer."""
        piece = bytearray(PIECE_SIZE)
        filled = 0
        for payload in _frames(self._socket):
            if filled + len(payload) > len(piece):
                yield memoryview(piece)[:filled]
                piece = bytearray(max(PIECE_SIZE, len(payload)))
                filled = 0
            piece[filled : filled + len(payload)] = payload
            filled += len(payload)
        if filled:
            yield memoryview(piece)[:filled]

    def wait(self) -> int:
        """Wait for the helper to exit and return its exit code."""
        status: int = self._api.wait(self._container_id)["StatusCode"]
        self._stderr_reader.join()
        return status

    @property
    def stderr(self) -> str:
        return bytes(self._stderr).decode("utf-8", "replace").strip()


def run_helper(
    api: docker.APIClient,
    image: str,
    command: Sequence[str],
    mounts: Sequence[Mount],
    *,
    capabilities: Sequence[str] = READ_CAPABILITIES,
    owner: str | None = None,
    limit: int = 1 << 20,
) -> tuple[int, bytes, str]:
    """Run a short helper command; return (exit code, stdout up to `limit`, stderr)."""
    with helper_container(
        api, image, command, mounts, capabilities=capabilities, owner=owner
    ) as container:
        output = HelperOutput(api, container)
        stdout = bytearray()
        for chunk in output.chunks():
            if len(stdout) < limit:
                stdout += chunk
        return output.wait(), bytes(stdout[:limit]), output.stderr
