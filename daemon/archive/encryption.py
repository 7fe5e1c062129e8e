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

import os
import stat
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

import pyrage
from pyrage import ssh, x25519

from daemon.errors import VolkeepError

SUFFIX = ".age"
QUEUE_BYTES = 1 << 20  # per direction; 256 KiB to 4 MiB measure alike (bench/encryption.py)
SOURCE_READ = 256 << 10
OUTPUT_BATCH = 64 << 10  # one age chunk
IDENTITY_FILE_LIMIT = 1 << 20  # an identity file is a few lines; refuse to slurp a disk

_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_SECRET_PREFIXES = ("AGE-SECRET-KEY-", "AGE-PLUGIN-")


class EncryptionError(VolkeepError, ValueError):
    """A recipient, identity or age stream that cannot be used; the message is safe to show."""


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


@dataclass(frozen=True)
class Recipient:
    """A public key to encrypt to; `text` is its canonical form, as recorded in manifests."""

    text: str
    native: object = field(repr=False, compare=False)

    def __str__(self) -> str:
        return self.text


def parse_recipient(text: str) -> Recipient:
    """Given an age (`age1…`) or ssh (`ssh-ed25519 …`, `ssh-rsa …`) public key, return it.

    Raise EncryptionError if it is none of these; the message quotes the text only when it
    has the shape of a public key, so a secret pasted by mistake is never echoed.
    """
    stripped = text.strip()
    if stripped.upper().startswith(_SECRET_PREFIXES):
        raise EncryptionError(
            "an age identity (a secret key) was given where a recipient (a public key) belongs;"
            " give its public key instead (age-keygen -y)"
        )
    if stripped.lower().startswith("age1"):
        return _parse_age_recipient(stripped)
    words = stripped.split()
    if words and words[0] in _SSH_TYPES:
        canonical = " ".join(words[:2])
        try:
            return Recipient(canonical, ssh.Recipient.from_str(canonical))
        except pyrage.RecipientError:
            raise EncryptionError(f"invalid {words[0]} recipient {canonical!r}") from None
    if words and words[0].startswith("ssh-"):
        raise EncryptionError(
            f"unsupported ssh key type {words[0]!r}: use ssh-ed25519 or ssh-rsa, or an age key"
        )
    raise EncryptionError(
        "not a recipient: expected an age public key (age1…) or an ssh-ed25519 or ssh-rsa"
        " public key"
    )


def _parse_age_recipient(text: str) -> Recipient:
    # Bech32: the human-readable part ends at the last "1" ("age" for X25519 keys,
    # "age1NAME" for plugin recipients, which would need a plugin binary at decryption).
    kind = text[: text.rfind("1")].lower()
    if kind != "age":
        raise EncryptionError(f"unsupported age recipient type {kind!r} in {text!r}")
    try:
        return Recipient(text.lower(), x25519.Recipient.from_str(text.lower()))
    except pyrage.RecipientError as error:
        raise EncryptionError(f"invalid age recipient {text!r}: {error}") from None


def load_recipients_file(path: str | os.PathLike[str]) -> list[Recipient]:
    """Given a file of recipients, one a line (`#` comments and blank lines skipped), return them.

    Raise EncryptionError naming the file (and line) if it cannot be read, holds a line
    that is not a recipient, or holds none.
    """
    lines = _read_text(path, "recipients file").splitlines()
    recipients = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            recipients.append(parse_recipient(line))
        except EncryptionError as error:
            raise EncryptionError(f"{path}:{number}: {error}") from None
    if not recipients:
        raise EncryptionError(f"recipients file {path} holds no recipient")
    return recipients


def recipient_strings(recipients: Iterable[Recipient]) -> list[str]:
    """Given recipients, return their public strings, to record in a manifest."""
    return [recipient.text for recipient in recipients]


class Identities:
    """The secret keys of one identity file; shows its path and count, never a key."""

    def __init__(self, path: str, natives: Sequence[object], mode: int) -> None:
        self.path = path
        self._natives = list(natives)
        self.mode = stat.S_IMODE(mode)

    @property
    def too_open(self) -> bool:
        """Whether the group or others may read the file (the caller warns)."""
        return bool(self.mode & 0o044)

    def __len__(self) -> int:
        return len(self._natives)

    def __repr__(self) -> str:
        return f"Identities(path={self.path!r}, count={len(self._natives)})"

    __str__ = __repr__

    def natives(self) -> list[object]:
        """The pyrage identities, for decryption."""
        return list(self._natives)

    def __reduce__(self) -> NoReturn:
        raise TypeError("identities are not to be pickled")


def load_identities(path: str | os.PathLike[str]) -> Identities:
    """Given an age identity file, return its identities.

    The file holds `AGE-SECRET-KEY-1…` lines (any number: old keys stay after a rotation)
    with `#` comments and blank lines, or is an unencrypted OpenSSH private key (ed25519 or
    RSA). Raise EncryptionError naming the file (and line), never its content, if it is
    missing, unreadable, or holds no usable identity.
    """
    where = os.fspath(path)
    data, mode = _read_secret(where)
    if data.lstrip().startswith((b"age-encryption.org/", b"-----BEGIN AGE ENCRYPTED FILE-----")):
        raise EncryptionError(
            f"identity file {where} is itself encrypted (age -p); give it decrypted, mode 0600"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EncryptionError(f"identity file {where} is not text") from None
    del data
    if text.lstrip().startswith("-----BEGIN"):
        return Identities(where, [_ssh_identity(where, text)], mode)
    natives = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.upper().startswith("AGE-PLUGIN-"):
            raise EncryptionError(f"{where}:{number}: plugin identities are not supported")
        try:
            natives.append(x25519.Identity.from_str(stripped.upper()))
        except pyrage.IdentityError:
            raise EncryptionError(f"{where}:{number}: not an age identity") from None
    del text
    if not natives:
        raise EncryptionError(f"identity file {where} holds no identity")
    return Identities(where, natives, mode)


def _ssh_identity(where: str, text: str) -> object:
    try:
        native: object = ssh.Identity.from_buffer(text.encode())
    except pyrage.IdentityError as error:
        if "decrypted" in str(error):
            reason = "a passphrase-protected ssh key (remove the passphrase or use an age key)"
        else:
            reason = "not a supported ssh private key (ed25519 or RSA, OpenSSH format)"
        raise EncryptionError(f"identity file {where}: {reason}") from None
    return native


def _read_secret(where: str) -> tuple[bytes, int]:
    try:
        # O_NONBLOCK: a FIFO in its place would otherwise block the open until a writer came
        descriptor = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(descriptor, "rb") as file:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise EncryptionError(f"identity file {where} is not a regular file")
            data = file.read(IDENTITY_FILE_LIMIT + 1)
    except OSError as error:
        raise EncryptionError(f"identity file {where}: {_os_reason(error)}") from None
    if len(data) > IDENTITY_FILE_LIMIT:
        raise EncryptionError(f"identity file {where} is too large to be an identity file")
    return data, mode


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise EncryptionError(f"{what} {os.fspath(path)}: {_os_reason(error)}") from None
    except UnicodeDecodeError:
        raise EncryptionError(f"{what} {os.fspath(path)} is not text") from None


def _os_reason(error: OSError) -> str:
    return error.strerror.lower() if error.strerror else type(error).__name__


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
