"""Export an archive: its tar, byte for byte as the helper produced it, to a pipe or a file
(SPEC §2 `export`).

The tar comes from the one reading path restores and drills use (`archive_chunks`): the
stored bytes decrypted with the policy's identity and decompressed, every member checked
against the manifest as it passes, and the SHA-256 and size of the stored bytes checked at
the end. On a pipe, what was written before a fault was found stays written (the reader
must heed the exit status); a file is written under a temporary name in its directory and
renamed into place only once the whole tar has been proved, so a failed export leaves no
file that looks complete.

Export only reads: it takes no volume lock and writes nothing in the state dir, so it runs
on a recovery host whose state dir is missing or read-only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import structlog

from daemon.actions.context import Context
from daemon.config.model import Policy
from daemon.errors import OperationError
from daemon.repository.locate import locate
from daemon.repository.verify import StoredArchive, archive_chunks
from daemon.system.files import publish
from daemon.terminal.progress import Progress

log = structlog.get_logger()


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Exported:
    """What an export wrote: which archive, from which storage, how many bytes of tar."""

    archive: str
    storage: str
    size: int


def export_archive(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    sink: Sink,
    *,
    storage: str | None = None,
    host: str | None = None,
) -> Exported:
    """Write the tar of the volume's archive (`None` or "latest": the newest) into `sink`,
    from the first of the policy's storages (or `storage`) that holds it, of this host or
    `host`.

    Raise OperationError if there is no such archive, if it cannot be opened (an encrypted
    one without the policy's identity), or if its stored bytes, decompressed stream or
    members do not match its manifest: then what `sink` received is not the archive.
    """
    repository, key = locate(
        ctx.repositories(policy, storage=storage, host=host), policy.name, volume, archive_id
    )
    with structlog.contextvars.bound_contextvars(policy=policy.name, volume=volume, archive=key.id):
        identities = ctx.identities(policy)
        manifest = repository.read_manifest(key, identities=identities)
        archive = StoredArchive(repository, key, manifest, identities)
        progress = Progress(f"exporting {volume} {key.id}", total=manifest.tar_size)
        size = 0
        for piece in archive_chunks(archive):
            sink.write(piece)
            size += len(piece)
            progress.advance(len(piece))
        progress.finish()
        log.info("export finished", storage=repository.name, bytes=size)
        return Exported(key.id, repository.name, size)


class Output:
    """Where an export writes (a file, standard output), whose write errors name it."""

    def __init__(self, name: str, file: BinaryIO) -> None:
        self._name = name
        self._file = file

    def write(self, data: bytes) -> object:
        try:
            return self._file.write(data)
        except BrokenPipeError:
            raise  # the reader left: the command line ends quietly, as `cat` would
        except OSError as error:
            raise _unwritable(self._name, error) from None

    def flush(self) -> None:
        try:
            self._file.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise _unwritable(self._name, error) from None


@contextlib.contextmanager
def output_file(path: Path) -> Iterator[Output]:
    """Given the file an export writes, yield a sink into a temporary file beside it
    (readable by its owner only: the tar is the volume's content in clear), and move that
    into place, synced, when the block ends well; remove it when the block raises. Through
    a symlink, the file it points to is replaced, not the link.

    A path that is there and is not a regular file (`/dev/null`, a named pipe, a tape) is
    written in place, as standard output is: renaming a file over it would put a file
    where the device was (`-o /dev/null`, to read an archive through without keeping it,
    replaced the host's `/dev/null`).

    Raise OperationError naming the file if it cannot be written.
    """
    try:
        in_place = not stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        in_place = False  # a new file, or a symlink to one
    except OSError as error:
        raise _unwritable(str(path), error) from None
    if in_place:
        yield from _written_in_place(path)
        return
    path = path.resolve()
    try:
        descriptor, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
    except OSError as error:
        raise _unwritable(str(path), error) from None
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield Output(str(path), file)
            try:
                file.flush()
                os.fsync(file.fileno())
            except OSError as error:
                raise _unwritable(str(path), error) from None
        try:
            publish(temporary, path)
        except OSError as error:
            raise _unwritable(str(path), error) from None
    finally:
        temporary.unlink(missing_ok=True)


def _written_in_place(path: Path) -> Iterator[Output]:
    try:
        file = path.open("wb")
    except OSError as error:
        raise _unwritable(str(path), error) from None
    with file:
        output = Output(str(path), file)
        yield output
        output.flush()


def _unwritable(name: str, error: OSError) -> OperationError:
    return OperationError(f"cannot write {name}: {error.strerror or error}")
