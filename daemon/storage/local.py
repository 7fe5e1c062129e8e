"""A blob store on a local (or mounted) file system: the key is the path under the root.

Blobs are written under a hidden temporary name beside their final one, synced, then
renamed into place and the directory synced (the one atomic-publish step). The temporary
name carries its writer, `.<name>~<owner>.partial` (owner: `daemon.system.owner`), so that
a crash's leftover is told from another process's running upload; temporary files are never
listed, `incomplete` reports them. Files are mode 0600, directories 0700.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from daemon.storage.base import BlobExists, BlobMissing, Incomplete
from daemon.system import files
from daemon.system.owner import this_process

PARTIAL = ".partial"
OWNER_MARK = "~"  # in no volume name, suffix or owner: where the owner begins
WRITE_BUFFER = 1 << 20
# The most bytes handed to the kernel in one write. A pack (8 MiB) written at once cost
# 0.3-1.1 s of system CPU per 220 MB in the kernel's page-cache copy on this machine, in
# 256 KiB writes 0.08 s (26 files of 8.5 MB, five rounds): a first backup's packs paid it.
WRITE_PIECE = 1 << 18


def publish(temporary: Path, final: Path, *, exclusive: bool = False) -> None:
    """Publish a synced temporary file as `final` (`daemon.system.files.publish`); with
    `exclusive`, raise BlobExists if `final` exists."""
    try:
        files.publish(temporary, final, exclusive=exclusive)
    except FileExistsError:
        raise BlobExists(final) from None


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL)


def _temporary_name(name: str) -> str:
    return f".{name}{OWNER_MARK}{this_process()}{PARTIAL}"


def _split_temporary(name: str) -> tuple[str, str | None]:
    """Given a temporary file's name, return the name it would be published as and its
    writer (None: written before temporary names carried one)."""
    inner = name[1 : -len(PARTIAL)]
    final, mark, owner = inner.rpartition(OWNER_MARK)
    return (final, owner) if mark else (inner, None)


class _LocalUpload:
    def __init__(self, final: Path, *, exclusive: bool = False) -> None:
        self._final = final
        self._exclusive = exclusive
        self._temporary = final.with_name(_temporary_name(final.name))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._file = os.fdopen(os.open(self._temporary, flags, 0o600), "wb", WRITE_BUFFER)

    def write(self, data: bytes | bytearray | memoryview) -> object:
        if len(data) <= WRITE_BUFFER:
            return self._file.write(data)
        # A large blob (a pack) goes past the buffer (it would only copy it), WRITE_PIECE
        # bytes a write.
        self._file.flush()
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_PIECE):
            piece = view[start : start + WRITE_PIECE]
            while piece:
                piece = piece[os.write(self._file.fileno(), piece) :]
        return len(view)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        publish(self._temporary, self._final, exclusive=self._exclusive)

    def abort(self) -> None:
        # The disk that failed a write may fail the flush too; the file goes anyway.
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._temporary.unlink(missing_ok=True)


class LocalStore:
    """Blobs as files under `root`."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _upload(self, key: str, *, exclusive: bool = False) -> _LocalUpload:
        path = self._path(key)
        created = self.root
        for part in Path(key).parent.parts:
            created = created / part
            created.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _LocalUpload(path, exclusive=exclusive)

    def create(self, key: str) -> _LocalUpload:
        return self._upload(key)

    def put(
        self,
        key: str,
        data: bytes | bytearray | Iterable[bytes],
        *,
        exclusive: bool = False,
        classed: bool = False,  # a directory has no storage classes
    ) -> None:
        if exclusive and self._path(key).exists():
            raise BlobExists(key)
        upload = self._upload(key, exclusive=exclusive)
        try:
            for piece in [data] if isinstance(data, bytes | bytearray) else data:
                upload.write(piece)
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobMissing(key) from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise BlobMissing(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def modified(self, key: str) -> datetime:
        return datetime.fromtimestamp(self._stat(key).st_mtime, UTC)

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def _stat(self, key: str) -> os.stat_result:
        try:
            return self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobMissing(key) from None

    def list(self, prefix: str) -> Iterator[str]:
        top = self._path(prefix) if prefix else self.root
        if not top.is_dir():
            return
        for directory, subdirectories, names in os.walk(top):
            subdirectories.sort()
            relative = Path(directory).relative_to(self.root).as_posix()
            base = "" if relative == "." else f"{relative}/"
            for name in sorted(names):
                if not _is_temporary(name):
                    yield base + name

    def list_directory(self, directory: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(self._path(directory) if directory else self.root))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield entry.name + "/"
            elif not _is_temporary(entry.name):
                yield entry.name

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            files.fsync_directory(path.parent)

    def incomplete(self, directory: str) -> builtins.list[Incomplete]:
        found = []
        try:
            entries = list(os.scandir(self._path(directory)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            if _is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                final, owner = _split_temporary(entry.name)
                with contextlib.suppress(FileNotFoundError):  # committed or aborted meanwhile
                    touched = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
                    found.append(Incomplete(directory + final, touched, owner, entry.name))
        return sorted(found, key=lambda upload: upload.handle)

    def remove_incomplete(self, upload: Incomplete) -> None:
        self.delete(Path(upload.key).with_name(upload.handle).as_posix())
