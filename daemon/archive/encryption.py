"""age encryption of the stored bytes, streamed: recipients, identities, a writer and a reader.

The archives are standard age files (`age -d -i IDENTITY FILE | zstd -d | tar -x` restores
one without volkeep). The cryptography is pyrage's (bindings for rage, the Rust age). pyrage
streams only by pulling (`encrypt_io(reader, writer, …)`), while the backup pipeline pushes,
so each stream runs that one call in a worker thread between two small bounded queues.
The caller's sink and source are only ever called from the caller's thread, inside
`write`, `finish` and `read`: the worker touches nothing but the queues, so once one of
those calls has raised, or `close()` has returned, nothing touches the sink or source
again, and the caller may abort or drain them as it likes.

Secrets never leave this module in text: no error message, repr or str holds an identity
or the content of an identity file; errors name the file (and line) only.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import pyrage

from daemon.config.keys import EncryptionError, Identities, Recipient

SUFFIX = ".age"
QUEUE_BYTES = 1 << 20  # per direction; 256 KiB to 4 MiB measure alike (bench/encryption.py)
SOURCE_READ = 256 << 10
OUTPUT_BATCH = 64 << 10  # one age chunk


class NoIdentityMatches(EncryptionError):
    """None of the identities given can open the archive."""

    def __init__(self, encrypted_to: Sequence[str] = ()) -> None:
        self.encrypted_to = tuple(encrypted_to)
        target = ", ".join(self.encrypted_to) if self.encrypted_to else "other recipients"
        super().__init__(f"no identity matches: the archive is encrypted to {target}")


class ArchiveModified(EncryptionError):
    """The ciphertext failed age's authentication: changed, or cut short."""

    def __init__(self, detail: str = "its authentication failed") -> None:
        super().__init__(f"the archive was modified or cut short: {detail}")


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Source(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Aborted(Exception):
    """Raised inside the worker when the caller gave up on the stream."""


class _Worker:
    """One pyrage call in a thread, fed and drained through two bounded queues of bytes.

    The caller appends to `inbound` and takes from `outbound`; the worker reads and writes
    them through the file-like adapters below. Either side that waits says what it waits
    for, and the other wakes it only once that holds: pyrage keeps the GIL while it
    encrypts, so a needless wake-up costs a GIL hand-over, not just a context switch.
    Every attribute is guarded by `lock`.
    """

    def __init__(self, name: str, call: Callable[[object, object], None], limit: int) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.inbound: deque[memoryview] = deque()
        self.inbound_size = 0
        self.inbound_closed = False
        self.outbound: deque[bytes | memoryview] = deque()
        self.outbound_size = 0
        self.aborted = False
        self.done = False
        self.error: BaseException | None = None
        self._caller = threading.Condition(self.lock)
        self._caller_ready: Callable[[], bool] | None = None
        self._worker = threading.Condition(self.lock)
        self._worker_ready: Callable[[], bool] | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[object, object], None]) -> None:
        error = None
        try:
            writer = _WorkerWriter(self)
            call(_WorkerReader(self), writer)
            writer.flush()
        except BaseException as raised:
            error = raised
        with self.lock:
            self.error = error
            self.done = True
            self.changed()

    def changed(self) -> None:
        """With the lock held, after a change: wake the side whose wait is over."""
        if self._caller_ready is not None and self._caller_ready():
            self._caller.notify()
        if self._worker_ready is not None and self._worker_ready():
            self._worker.notify()

    def caller_wait(self, ready: Callable[[], bool]) -> None:
        """Caller side, with the lock held: wait until `ready()`."""
        while not ready():
            self._caller_ready = ready
            self._caller.wait()
        self._caller_ready = None

    def _worker_wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._worker_ready = ready
            self._worker.wait()
        self._worker_ready = None

    def take_inbound(self) -> memoryview:
        """Worker side: the next piece of input, whole; an empty view at its end."""
        with self.lock:
            if not self.inbound:
                self._worker_wait(lambda: bool(self.inbound) or self.inbound_closed or self.aborted)
            if self.aborted:
                raise _Aborted
            if not self.inbound:
                return memoryview(b"")
            piece = self.inbound.popleft()
            self.inbound_size -= len(piece)
            self.changed()
        return piece

    def put_outbound(self, data: bytes) -> None:
        """Worker side: queue output for the caller, waiting while the queue is full."""
        with self.lock:
            if self.outbound_size > self.limit:
                self._worker_wait(lambda: self.outbound_size <= self.limit or self.aborted)
            if self.aborted:
                raise _Aborted
            self.outbound.append(data)
            self.outbound_size += len(data)
            self.changed()

    def put_inbound(self, data: memoryview) -> None:
        """Caller side, with the lock held."""
        self.inbound.append(data)
        self.inbound_size += len(data)
        self.changed()

    def close_inbound(self) -> None:
        """Caller side, with the lock held: the input has ended."""
        self.inbound_closed = True
        self.changed()

    def take_outbound(self, size: int) -> bytes:
        """Caller side, with the lock held: up to `size` bytes of output (all if negative)."""
        pieces: list[bytes | memoryview] = []
        total = 0
        while self.outbound and (size < 0 or total < size):
            piece = self.outbound.popleft()
            if size >= 0 and total + len(piece) > size:
                view = memoryview(piece)  # split without copying
                self.outbound.appendleft(view[size - total :])
                piece = view[: size - total]
            pieces.append(piece)
            total += len(piece)
        self.outbound_size -= total
        self.changed()
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return b"".join(pieces)

    def cancel(self) -> None:
        """Caller side: tell the worker to stop at its next read or write; drop the queues."""
        with self.lock:
            self.aborted = True
            self.inbound.clear()
            self.outbound.clear()
            self.inbound_size = self.outbound_size = 0
            self.changed()

    def abort(self) -> None:
        """Caller side: stop the worker and wait for its thread to end."""
        self.cancel()
        self._thread.join()

    def join(self) -> None:
        self._thread.join()


class _WorkerReader:
    """What pyrage reads from: hands out the piece it took from the queue, 8 KiB at a time.

    Taking whole pieces keeps the lock out of the 8 KiB reads rage makes; the piece held
    here is one the caller already counted as its memory.
    """

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self._piece = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if not self._piece:
            self._piece = self._worker.take_inbound()
        if 0 <= size < len(self._piece):
            chunk, self._piece = self._piece[:size], self._piece[size:]
        else:
            chunk, self._piece = self._piece, memoryview(b"")
        return chunk.tobytes()


class _WorkerWriter:
    """What pyrage writes to: gathers its writes (8 KiB each when decrypting) into batches."""

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self._pending: list[bytes] = []
        self._pending_size = 0

    def write(self, data: bytes) -> int:
        if not self._pending and len(data) >= OUTPUT_BATCH:
            self._worker.put_outbound(data)
        else:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= OUTPUT_BATCH:
                self.flush()
        return len(data)

    def flush(self) -> None:
        if self._pending:
            batch = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._worker.put_outbound(batch)


class EncryptingWriter:
    """Takes plain bytes by `write`, writes the age file into the sink; `finish` ends it.

    Use as a context manager, or call `close()` on failure: an unfinished stream is then
    abandoned (its worker stopped) and the sink gets no more bytes.
    """

    def __init__(self, sink: Sink, recipients: Sequence[Recipient], limit: int) -> None:
        if not recipients:
            raise EncryptionError("encryption needs at least one recipient")
        natives = [recipient.native for recipient in recipients]
        self._sink = sink
        self._finished = False
        self._worker = _Worker(
            "volkeep-age-encrypt",
            lambda reader, writer: pyrage.encrypt_io(reader, writer, natives),
            limit,
        )
        weakref.finalize(self, self._worker.cancel)  # dropped unfinished: free the thread

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt `data` into the sink; return its length. Raise what the sink raised."""
        if self._finished:
            raise ValueError("write to a finished or closed encrypting writer")
        size = len(data)
        if size:
            view = _immutable_view(data)
            self._guarded(lambda: self._write(view))
        return size

    def _write(self, view: memoryview) -> None:
        worker = self._worker
        with worker.lock:
            worker.put_inbound(view)
        low = worker.limit // 2
        while True:
            with worker.lock:
                if worker.inbound_size > worker.limit:
                    worker.caller_wait(
                        lambda: (
                            worker.inbound_size <= low
                            or worker.outbound_size > worker.limit
                            or worker.done
                        )
                    )
                if worker.done and worker.error is not None:
                    raise _encryption_failure(worker.error)
                output = worker.take_outbound(-1) if worker.outbound else b""
                space = worker.inbound_size <= worker.limit
            if output:
                self._sink.write(output)
            if space:
                return

    def finish(self) -> None:
        """Write the end of the age file into the sink and wait for the worker."""
        if self._finished:
            raise ValueError("finish of a finished or closed encrypting writer")
        self._finished = True
        self._guarded(self._finish)

    def _finish(self) -> None:
        worker = self._worker
        with worker.lock:
            worker.close_inbound()
        while True:
            with worker.lock:
                worker.caller_wait(lambda: worker.outbound_size > worker.limit or worker.done)
                output = worker.take_outbound(-1) if worker.outbound else b""
                ended = worker.done
            if output:
                self._sink.write(output)
            if ended:
                break
        worker.join()
        if worker.error is not None:
            raise _encryption_failure(worker.error)

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException:
            self._finished = True
            self._worker.abort()
            raise

    def close(self) -> None:
        """Abandon the stream if it was not finished; harmless after `finish`."""
        self._finished = True
        self._worker.abort()

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _immutable_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A byte view of `data` that the caller cannot change later: no copy for bytes."""
    if isinstance(data, bytes):
        return memoryview(data)
    if isinstance(data, memoryview) and isinstance(data.obj, bytes) and data.c_contiguous:
        return data.cast("B")
    return memoryview(bytes(data))


def encrypting_writer(
    sink: Sink, recipients: Sequence[Recipient], *, limit: int = QUEUE_BYTES
) -> EncryptingWriter:
    """Given a sink and recipients, return a writer that encrypts into the sink as age.

    Memory stays within about twice `limit` whatever the stream's size. Raise
    EncryptionError if there is no recipient.
    """
    return EncryptingWriter(sink, recipients, limit)


class DecryptingReader:
    """Reads an age file from the source and gives back its plain bytes by `read`.

    `read` raises NoIdentityMatches or ArchiveModified (both EncryptionError) when the
    archive cannot be opened or fails authentication, and whatever the source raised.
    Call `close()` (or use as a context manager) to abandon it early.
    """

    def __init__(
        self,
        source: Source,
        identities: Identities,
        encrypted_to: Sequence[str],
        limit: int,
    ) -> None:
        natives = identities.natives()
        self._source = source
        self._encrypted_to = tuple(encrypted_to)
        self._closed = False
        self._worker = _Worker(
            "volkeep-age-decrypt",
            lambda reader, writer: pyrage.decrypt_io(reader, writer, natives),
            limit,
        )
        weakref.finalize(self, self._worker.cancel)  # dropped unread: free the thread

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` plain bytes (all that is left if `size` < 0), b"" at the end."""
        if self._closed:
            raise ValueError("read from a closed decrypting reader")
        if size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if size == 0:
            return b""
        try:
            return self._read(size)
        except BaseException:
            self.close()
            raise

    def _read(self, size: int) -> bytes:
        worker = self._worker
        enough = min(size, worker.limit)
        low = worker.limit // 2

        def wants_input() -> bool:
            return not worker.inbound_closed and worker.inbound_size <= low

        while True:
            with worker.lock:
                worker.caller_wait(
                    lambda: worker.done or wants_input() or worker.outbound_size >= enough
                )
                if worker.outbound_size >= enough or (worker.done and worker.outbound):
                    return worker.take_outbound(size)
                if worker.done:
                    if worker.error is not None:
                        raise _decryption_failure(worker.error, self._encrypted_to)
                    return b""
            data = self._source.read(SOURCE_READ)
            with worker.lock:
                if data:
                    worker.put_inbound(memoryview(data).cast("B"))
                else:
                    worker.close_inbound()

    def close(self) -> None:
        """Stop decrypting; the source is not read again."""
        if not self._closed:
            self._closed = True
            self._worker.abort()

    def __enter__(self) -> DecryptingReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def decrypting_reader(
    source: Source,
    identities: Identities,
    *,
    encrypted_to: Sequence[str] = (),
    limit: int = QUEUE_BYTES,
) -> DecryptingReader:
    """Given the stored bytes of an age file and identities, return a reader of its plain bytes.

    `encrypted_to` (the manifest's recipients) names the recipients in NoIdentityMatches.
    Memory stays within about twice `limit` whatever the stream's size.
    """
    return DecryptingReader(source, identities, encrypted_to, limit)


def _encryption_failure(error: BaseException | None) -> BaseException:
    if error is None:
        return EncryptionError("encryption ended before its input did")
    if isinstance(error, pyrage.EncryptError):
        return EncryptionError(f"encryption failed: {error}")
    return error


# rage's words for a header that does not parse, fails its MAC, or ends early
_DAMAGED_HEADER = frozenset(
    (
        "Header is invalid",
        "Header MAC is invalid",
        "Incomplete header",
        "failed to fill whole buffer",
    )
)


def _decryption_failure(error: BaseException, encrypted_to: Sequence[str]) -> BaseException:
    message = str(error)
    if isinstance(error, pyrage.DecryptError):
        if message == "No matching keys found":
            return NoIdentityMatches(encrypted_to)
        if message.startswith("Unknown age format"):
            return EncryptionError("not an age file, or one from a newer age version")
        if message in _DAMAGED_HEADER:
            return ArchiveModified("its age header is damaged")
        return EncryptionError(f"decryption failed: {message}")
    if isinstance(error, OSError):
        # rage's STREAM reader reports a chunk that fails authentication, or a missing
        # last chunk, as io::ErrorKind::InvalidData "decryption error".
        return ArchiveModified()
    return error
