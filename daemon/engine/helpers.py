"""Helper containers: short-lived, locked down, labelled for reaping, always removed.

A helper mounts volumes and runs one command of the helper image (tar, find...). Its
stdout is read from the attach socket, never through a log driver: the default json-file
driver would record the whole stream and cap it at ~20 MB/s (ENGINE-FACTS.md). A volume's
tar goes through a pipe instead where the engine can reach it (daemon.engine.pipe).

Locked down: no network, every capability dropped but the few the operation needs, no new
privileges, a read-only root file system (the volumes keep their own mode), at most
HELPER_PIDS processes and HELPER_MEMORY bytes of memory.

Every way out of `helper_container` removes the helper, by a name chosen before the engine
is asked to create it. `kill_helpers` ends the helpers of this process when it stops: it
kills those that run, and aborts from this side the uploads into the Engine's archive
endpoint (`put_archive`), since the engine holds a container's lock while it extracts and
would neither kill nor remove the helper before the upload ends.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
import requests
import structlog
from docker.types import LogConfig
from docker.types import Mount as DockerMount

from daemon.engine.pipe import PIPE_TARGET, Pipe, PipeUnavailable, bind_refused
from daemon.errors import EngineFailure
from daemon.system.owner import this_process
from daemon.system.readahead import read_ahead

log = structlog.get_logger()

LABEL_ROLE = "volkeep.role"
LABEL_VOLUME = "volkeep.volume"
LABEL_OWNER = "volkeep.owner"  # host:pid:start of the process that made it (daemon.system.owner)
FRAME_HEADER = struct.Struct(">BxxxL")
READ_BUFFER = 1 << 20
PIECE_SIZE = 1 << 20
QUEUE_DEPTH = 8
STDERR_LIMIT = 64 << 10
HELPER_PIDS = 64  # sh, find -exec rm, tar: a handful
HELPER_MEMORY = 256 << 20  # busybox or GNU tar streaming a volume needs a few MiB

READ_CAPABILITIES = ("DAC_READ_SEARCH",)  # read every file whatever its mode, change nothing
WRITE_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID")


@dataclass
class _LiveHelper:
    """A helper this process has asked the engine for and not yet removed."""

    id: str | None = None  # once the engine has answered
    cancelled: threading.Event = field(default_factory=threading.Event)  # by kill_helpers
    uploading: bool = False  # a put_archive into it is under way


# The live helpers by name, for `kill_helpers` and `put_archive`.
_live_helpers: dict[str, _LiveHelper] = {}
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
    pipe: Pipe | None = None,
) -> Iterator[str]:
    """Create a helper container and yield its id; remove it on every path out.

    `owner` is the volume the operation works for (default: the first mount's), for the
    label; the labels also name this process, so that the next volkeep command removes the
    helper if this process dies. A `pipe` is bound in at PIPE_TARGET, writable; raise
    PipeUnavailable if the engine cannot bind it.
    """
    host_config = helper_host_config(api, mounts, capabilities, pipe)
    # A name known before the engine answers: an interruption (SIGTERM) that lands while
    # the engine creates the container, or just after, must not leave it behind.
    name = f"volkeep-helper-{secrets.token_hex(8)}"
    helper = _LiveHelper()
    with _live_helpers_lock:
        _live_helpers[name] = helper
    try:
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
        except docker.errors.APIError as error:
            if pipe is not None and bind_refused(error):
                raise PipeUnavailable(str(error.explanation or error)) from None
            raise
        container_id: str = container["Id"]
        helper.id = container_id
        yield container_id
    finally:
        with _live_helpers_lock:
            del _live_helpers[name]
        _remove_helper(api, name)


def _remove_helper(api: docker.APIClient, name: str) -> None:
    """Remove a helper on the way out of its block. An engine failure is logged, never
    raised: it would hide the block's own outcome, and the helper's labels let the next
    volkeep process remove it."""
    try:
        remove_container(api, name)
    except (docker.errors.APIError, requests.RequestException) as error:
        log.error(
            "cannot remove a helper container; the next volkeep process removes it",
            container=name,
            error=str(error).splitlines()[0] if str(error) else type(error).__name__,
        )


def helper_host_config(
    api: docker.APIClient,
    mounts: Sequence[Mount],
    capabilities: Sequence[str],
    pipe: Pipe | None = None,
) -> dict[str, Any]:
    """Given a helper's mounts, capabilities and pipe, return its locked-down host config."""
    bound = [
        DockerMount(m.target, m.volume, type="volume", read_only=m.read_only, no_copy=True)
        for m in mounts
    ]
    if pipe is not None:
        bound.append(DockerMount(PIPE_TARGET, str(pipe.path), type="bind", read_only=False))
    host_config: dict[str, Any] = api.create_host_config(
        mounts=bound,
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
    """End every helper of this process, so that the operations reading or feeding them fail
    and clean up as on any failure; return how many were ended.

    An upload into a helper is aborted from this side (the next chunk raises, see
    `put_archive`): killing the helper would wait for the upload to end. A helper created but
    not started yet is not killed, but no longer starts (HelperOutput); call again.
    """
    with _live_helpers_lock:
        helpers = list(_live_helpers.items())
    ended = 0
    for name, helper in helpers:
        helper.cancelled.set()
        if helper.uploading:
            ended += 1
            continue
        try:
            api.kill(name)
            ended += 1
        except (docker.errors.APIError, requests.RequestException):
            continue  # not started yet, already gone, or the engine is slow: call again
    return ended


def _registered(container: str) -> _LiveHelper:
    """Given a live helper's id or name, return its entry. Raise ValueError if it is none."""
    with _live_helpers_lock:
        for name, helper in _live_helpers.items():
            if container in (name, helper.id):
                return helper
    raise ValueError(f"{container} is not a live helper of this process")


class HelperCancelled(EngineFailure):
    """A helper of this process was cancelled by `kill_helpers`: volkeep is stopping."""


def _cancelled(container: str) -> HelperCancelled:
    return HelperCancelled(f"helper {container[:12]} was cancelled: volkeep is stopping")


def put_archive(
    api: docker.APIClient, container: str, path: str, chunks: Iterable[bytes | memoryview]
) -> None:
    """Stream a tar into `path` in a helper through the Engine's archive endpoint, which
    extracts it (into a volume mount: the helper's root file system is read-only).

    Raise EngineFailure if `kill_helpers` cancelled the helper (the upload stops at the next
    chunk), docker.errors.APIError if the engine cannot extract. What `chunks` raises is
    raised as it is: the HTTP client would report a reader's OSError (a storage failing
    under the stream) as the engine's connection lost.
    """
    helper = _registered(container)
    failed: list[BaseException] = []  # what the body itself raised

    def fed() -> Iterator[bytes | memoryview]:
        try:
            for chunk in chunks:
                if helper.cancelled.is_set():
                    raise _cancelled(container)
                yield chunk
        except Exception as error:
            failed.append(error)
            raise

    if helper.cancelled.is_set():
        raise _cancelled(container)
    helper.uploading = True
    try:
        api.put_archive(container, path, fed())
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    finally:
        helper.uploading = False


def missing_image(image: str) -> EngineFailure:
    return EngineFailure(
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
    """The running helper's output as it arrives: its stdout, or what it writes into its
    pipe; and its stderr.

    Each stream has its own attach connection: dockerd muxing both into one connection
    costs it half again as much CPU (measured: 2.2 s against 1.6 s for a 1 GB tar).
    """

    def __init__(self, api: docker.APIClient, container_id: str, pipe: Pipe | None = None) -> None:
        """Attach to the created helper and start it. Raise EngineFailure if
        `kill_helpers` cancelled it already."""
        if _registered(container_id).cancelled.is_set():
            raise _cancelled(container_id)
        self._api = api
        self._container_id = container_id
        self._pipe = pipe
        self._socket: socket.socket | None = None
        self._pieces: Iterator[memoryview]
        if pipe is not None:
            self._pieces = pipe.pieces(PIECE_SIZE, helper_ended=self._ended)
        else:
            self._socket = _attach(api, container_id, "stdout")
            self._pieces = _gathered(_frames(self._socket))
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

    def _ended(self) -> bool:
        """Say whether the helper has exited: its stderr stream ends with it."""
        return not self._stderr_reader.is_alive()

    def chunks(self) -> Iterator[memoryview]:
        """Yield the output in pieces of about a MiB, read ahead by a thread while the
        caller parses, digests and compresses the previous piece.

        Raise PipeUnavailable, having yielded nothing, if the helper never opened its pipe.
        """
        try:
            yield from read_ahead(self._pieces, QUEUE_DEPTH, interrupt=self._interrupt)
        finally:
            if self._socket is not None:
                self._socket.close()

    def _interrupt(self) -> None:
        if self._pipe is not None:
            self._pipe.stop()
        for attached in (self._socket, self._stderr_socket):
            if attached is not None:
                with contextlib.suppress(OSError):
                    attached.shutdown(socket.SHUT_RDWR)

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


def _gathered(payloads: Iterator[memoryview]) -> Iterator[memoryview]:
    """Yield the payloads gathered into pieces of about PIECE_SIZE, each in its own buffer
    (handed over, never reused), with one copy from the receive buffer."""
    piece = bytearray(PIECE_SIZE)
    filled = 0
    for payload in payloads:
        if filled + len(payload) > len(piece):
            yield memoryview(piece)[:filled]
            piece = bytearray(max(PIECE_SIZE, len(payload)))
            filled = 0
        piece[filled : filled + len(payload)] = payload
        filled += len(payload)
    if filled:
        yield memoryview(piece)[:filled]
