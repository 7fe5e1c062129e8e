"""age encryption of the stored bytes, streamed: recipients, identities, a writer and a reader.

The archives are standard age files (`age -d -i IDENTITY FILE | zstd -d | tar -x` restores
one without volkeep). The cryptography is pyrage's (bindings for rage, the Rust age). pyrage
streams only by pulling (`encrypt_io(reader, writer, …)`), while the backup pipeline pushes,
so each stream runs that one call in a worker thread fed (or drained) through one small
bounded queue: the writer's worker reads the queue and writes the sink; the reader's
worker reads the source and fills the queue. What the sink or source raises in the
worker comes back to the caller as it was raised.

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
from typing import NoReturn, Protocol, TypeVar

import pyrage
from pyrage import ssh, x25519

from daemon.errors import VolkeepError

SUFFIX = ".age"
QUEUE_BYTES = 1 << 20  # per direction; the measured throughput is flat above 256 KiB
SOURCE_READ = 256 << 10
OUTPUT_BATCH = 64 << 10  # one age chunk
IDENTITY_FILE_LIMIT = 1 << 20  # an identity file is a few lines; refuse to slurp a disk

_T = TypeVar("_T")
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
    """Raised on one side of a pipe when the other side gave up."""


class _Pipe:
    """A bounded queue of byte pieces from one producer thread to one consumer thread.

    Each side that waits says what for, and the other wakes it only once that holds:
    pyrage keeps the GIL while it encrypts, so a needless wake-up costs a GIL hand-over.
    """

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        self._limit = limit
        self._low = limit // 2
        self._pieces: deque[bytes | memoryview] = deque()
        self._size = 0
        self._closed = False
        self._broken = False
        self._reader_wants = 0
        self._writer_waits = False

    def put(self, piece: bytes | memoryview) -> None:
        """Producer: queue `piece`; wait while the pipe holds more than its limit."""
        with self._lock:
            if self._broken:
                raise _Aborted
            self._pieces.append(piece)
            self._size += len(piece)
            if self._reader_wants and self._size >= self._reader_wants:
                self._readable.notify()
            while self._size > self._limit and not self._broken:
                self._writer_waits = True
                self._writable.wait()
            self._writer_waits = False
            if self._broken:
                raise _Aborted

    def close(self) -> None:
        """Producer: no more pieces."""
        with self._lock:
            self._closed = True
            self._readable.notify()

    def take_piece(self) -> memoryview:
        """Consumer: the next piece, whole; an empty view once the pipe is closed and empty."""
        with self._lock:
            self._wait_for(1)
            if not self._pieces:
                return memoryview(b"")
            piece = self._pieces.popleft()
            self._taken(len(piece))
        return memoryview(piece)

    def take(self, size: int) -> bytes:
        """Consumer: up to `size` bytes, waiting for a useful amount; b"" once closed and empty."""
        with self._lock:
            self._wait_for(min(size, self._low) or 1)
            pieces: list[bytes | memoryview] = []
            total = 0
            while self._pieces and total < size:
                piece = self._pieces.popleft()
                if total + len(piece) > size:
                    view = memoryview(piece)  # split without copying
                    self._pieces.appendleft(view[size - total :])
                    piece = view[: size - total]
                pieces.append(piece)
                total += len(piece)
            self._taken(total)
        if len(pieces) == 1:
            return pieces[0] if isinstance(pieces[0], bytes) else pieces[0].tobytes()
        return b"".join(pieces)

    def _wait_for(self, wanted: int) -> None:
        while self._size < wanted and not self._closed and not self._broken:
            if self._writer_waits:
                self._writable.notify()
            self._reader_wants = wanted
            self._readable.wait()
        self._reader_wants = 0
        if self._broken:
            raise _Aborted

    def _taken(self, size: int) -> None:
        self._size -= size
        if self._writer_waits and self._size <= self._low:
            self._writable.notify()

    def break_(self) -> None:
        """Either side: give up; the other side's next call raises _Aborted."""
        with self._lock:
            self._broken = True
            self._pieces.clear()
            self._size = 0
            self._readable.notify()
            self._writable.notify()


class _Worker:
    """Runs one pyrage call in a daemon thread; keeps its error, or the caller's.

    `caller_error` is what the caller's own sink or source raised inside the worker (pyrage
    wraps those, and the caller should see its own exception, not the wrapping).
    """

    def __init__(self, name: str, pipe: _Pipe) -> None:
        self.error: BaseException | None = None
        self.caller_error: BaseException | None = None
        self._pipe = pipe
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self, call: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(call,), name=self._name)
        self._thread.daemon = True
        self._thread.start()

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:
            self.error = error
        if self.caller_error is not None or self.error is not None:
            self._pipe.break_()
        else:
            self._pipe.close()

    def calling(self, function: Callable[[], _T]) -> _T:
        """Call the caller's sink or source, keeping what it raises."""
        try:
            return function()
        except BaseException as error:
            self.caller_error = error
            raise

    def stop(self) -> None:
        """Caller: break the pipe and wait for the thread."""
        self._pipe.break_()
        self.join()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def failure(self, translate: Callable[[BaseException], BaseException]) -> BaseException:
        """Caller, once the thread has ended: the exception to raise for its failure."""
        if self.caller_error is not None:
            return self.caller_error
        if self.error is not None:
            return translate(self.error)
        return EncryptionError("the age stream ended early")


class _PipeReader:
    """What pyrage encrypts from: whole pieces from the pipe, handed out in rage's 8 KiB reads."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._piece = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if not self._piece:
            self._piece = self._pipe.take_piece()
        if 0 <= size < len(self._piece):
            chunk, self._piece = self._piece[:size], self._piece[size:]
        else:
            chunk, self._piece = self._piece, memoryview(b"")
        return chunk.tobytes()


class _SinkWriter:
    """What pyrage encrypts into: the caller's sink, its exceptions kept for the caller."""

    def __init__(self, sink: Sink, worker: _Worker) -> None:
        self._sink = sink
        self._worker = worker

    def write(self, data: bytes) -> int:
        self._worker.calling(lambda: self._sink.write(data))
        return len(data)

    def flush(self) -> None:
        pass


class _SourceReader:
    """What pyrage decrypts from: the caller's source, read in large pieces."""

    def __init__(self, source: Source, worker: _Worker) -> None:
        self._source = source
        self._worker = worker
        self._piece = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if not self._piece:
            data = self._worker.calling(lambda: self._source.read(SOURCE_READ))
            self._piece = memoryview(data).cast("B")
        if 0 <= size < len(self._piece):
            chunk, self._piece = self._piece[:size], self._piece[size:]
        else:
            chunk, self._piece = self._piece, memoryview(b"")
        return chunk.tobytes()


class _PipeWriter:
    """What pyrage decrypts into: gathers its 8 KiB writes into batches for the pipe."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._pending: list[bytes] = []
        self._pending_size = 0

    def write(self, data: bytes) -> int:
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
            self._pipe.put(batch)


class EncryptingWriter:
    """Takes plain bytes by `write` and writes the age file into the sink; `finish` ends it.

    The sink is written from the worker thread, while the caller goes on; what the sink
    raises comes back, as it was raised, from the caller's next `write` or `finish`. Use as
    a context manager, or call `close()` on failure: an unfinished stream is then abandoned
    (its worker stopped) and the sink gets no more bytes.
    """

    def __init__(self, sink: Sink, recipients: Sequence[Recipient], limit: int) -> None:
        if not recipients:
            raise EncryptionError("encryption needs at least one recipient")
        natives = [recipient.native for recipient in recipients]
        self._pipe = _Pipe(limit)
        self._finished = False
        self._worker = _Worker("volkeep-age-encrypt", self._pipe)
        source, target = _PipeReader(self._pipe), _SinkWriter(sink, self._worker)
        self._worker.start(lambda: pyrage.encrypt_io(source, target, natives))
        weakref.finalize(self, self._pipe.break_)  # dropped unfinished: free the thread

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Queue `data` for encryption; return its length. Raise what the stream raised."""
        if self._finished:
            raise ValueError("write to a finished or closed encrypting writer")
        size = len(data)
        if size:
            try:
                self._pipe.put(_immutable_view(data))
            except _Aborted:
                self._finished = True
                self._worker.join()
                raise self._worker.failure(_encryption_failure) from None
        return size

    def finish(self) -> None:
        """End the age file, wait until the sink has all of it. Raise what the stream raised."""
        if self._finished:
            raise ValueError("finish of a finished or closed encrypting writer")
        self._finished = True
        self._pipe.close()
        self._worker.join()
        if self._worker.error is not None or self._worker.caller_error is not None:
            raise self._worker.failure(_encryption_failure)

    def close(self) -> None:
        """Abandon the stream if it was not finished; harmless after `finish`."""
        self._finished = True
        self._worker.stop()

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

    Memory stays within about `limit` plus one write whatever the stream's size. Raise
    EncryptionError if there is no recipient.
    """
    return EncryptingWriter(sink, recipients, limit)


class DecryptingReader:
    """Reads an age file from the source and gives back its plain bytes by `read`.

    The source is read from the worker thread. `read` raises NoIdentityMatches or
    ArchiveModified (both EncryptionError) when the archive cannot be opened or fails
    authentication, and what the source raised, as it was raised. Call `close()` (or use as
    a context manager) to abandon it early.
    """

    def __init__(
        self,
        source: Source,
        identities: Identities,
        encrypted_to: Sequence[str],
        limit: int,
    ) -> None:
        natives = identities.natives()
        self._encrypted_to = tuple(encrypted_to)
        self._pipe = _Pipe(limit)
        self._closed = False
        self._worker = _Worker("volkeep-age-decrypt", self._pipe)
        origin, target = _SourceReader(source, self._worker), _PipeWriter(self._pipe)

        def decrypt() -> None:
            pyrage.decrypt_io(origin, target, natives)
            target.flush()

        self._worker.start(decrypt)
        weakref.finalize(self, self._pipe.break_)  # dropped unread: free the thread

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` plain bytes (all that is left if `size` < 0), b"" at the end."""
        if self._closed:
            raise ValueError("read from a closed decrypting reader")
        if size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if size == 0:
            return b""
        try:
            data = self._pipe.take(size)
        except _Aborted:
            self.close()
            raise self._worker.failure(self._translate) from None
        if not data:
            self._worker.join()
        return data

    def _translate(self, error: BaseException) -> BaseException:
        return _decryption_failure(error, self._encrypted_to)

    def close(self) -> None:
        """Stop decrypting; the source is not read again."""
        if not self._closed:
            self._closed = True
            self._worker.stop()

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
    Memory stays within about `limit` plus one read whatever the stream's size.
    """
    return DecryptingReader(source, identities, encrypted_to, limit)


def _encryption_failure(error: BaseException) -> BaseException:
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
