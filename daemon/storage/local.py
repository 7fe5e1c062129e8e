"""A blob store on a local (or mounted) file system: the key is the path under the root.

Blobs are written under a hidden temporary name beside their final one, synced, then
renamed into place and the directory synced (the one atomic-publish step). Temporary files
are never listed; `abort_incomplete` removes those a crash left. Files are mode 0600,
directories 0700.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from daemon.storage.base import BlobExists, BlobMissing
from daemon.system import files

PARTIAL = ".partial"
WRITE_BUFFER = 1 << 20


def publish(temporary: Path, final: Path, *, exclusive: bool = False) -> None:
    """Publish a synced temporary file as `final` (`daemon.system.files.publish`); with
    `exclusive`, raise BlobExists if `final` exists."""
    try:
        files.publish(temporary, final, exclusive=exclusive)
    except FileExistsError:
        raise BlobExists(final) from None


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL)


class _LocalUpload:
    def __init__(self, final: Path, *, exclusive: bool = False) -> None:
        self._final = final
        self._exclusive = exclusive
        self._temporary = final.with_name(f".{final.name}{PARTIAL}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._file = os.fdopen(os.open(self._temporary, flags, 0o600), "wb", WRITE_BUFFER)

    def write(self, data: bytes | bytearray | memoryview) -> object:
        return self._file.write(data)

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

    def put(self, key: str, data: bytes | Iterable[bytes], *, exclusive: bool = False) -> None:
        if exclusive and self._path(key).exists():
            raise BlobExists(key)
        upload = self._upload(key, exclusive=exclusive)
        try:
            for piece in [data] if isinstance(data, bytes) else data:
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

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            files.fsync_directory(path.parent)

    def abort_incomplete(self, prefix: str) -> builtins.list[str]:
        top = self._path(prefix) if prefix else self.root
        removed = []
        for directory, _, names in os.walk(top):
            for name in names:
                if _is_temporary(name):
                    path = Path(directory) / name
                    path.unlink(missing_ok=True)
                    final = path.with_name(name[1 : -len(PARTIAL)])
                    removed.append(final.relative_to(self.root).as_posix())
        return sorted(removed)
