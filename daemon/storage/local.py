"""A storage on a local (or mounted) file system."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from daemon.storage.base import DRILL_SUFFIX, MANIFEST_SUFFIX, ArchiveKey

PARTIAL = ".partial"
WRITE_BUFFER = 1 << 20


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(temporary: Path, final: Path) -> None:
    """The one atomic-publish step: the temporary file is synced; rename it, sync the dir."""
    os.replace(temporary, final)
    _fsync_directory(final.parent)


def _archive_id(name: str, volume: str) -> str | None:
    """Given a file name in a volume's directory, return the archive id it belongs to."""
    prefix = f"{volume}-"
    name = name.lstrip(".")
    if not name.startswith(prefix):
        return None
    return name[len(prefix) :].split(".", 1)[0]


def _create_private(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


class _LocalUpload:
    def __init__(self, final: Path) -> None:
        self._final = final
        self._temporary = final.with_name(f".{final.name}{PARTIAL}")
        self._file = os.fdopen(_create_private(self._temporary), "wb", buffering=WRITE_BUFFER)

    def write(self, data: bytes | bytearray | memoryview) -> object:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        publish(self._temporary, self._final)

    def abort(self) -> None:
        # The disk that failed a write may fail the flush too; the file goes anyway.
        with contextlib.suppress(OSError):
            self._file.close()
        self._temporary.unlink(missing_ok=True)


def _write_atomically(final: Path, data: bytes | Iterable[bytes]) -> None:
    upload = _LocalUpload(final)
    try:
        for piece in [data] if isinstance(data, bytes) else data:
            upload.write(piece)
        upload.commit()
    except BaseException:
        upload.abort()
        raise


class LocalStorage:
    """`<root>/<policy>/<volume>/<volume>-<id>.tar.zst` beside `…-<id>.manifest.json`."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _directory(self, policy: str, volume: str) -> Path:
        return self.root / policy / volume

    def _path(self, key: ArchiveKey, suffix: str) -> Path:
        return self._directory(key.policy, key.volume) / key.file_name(suffix)

    def allocate_id(self, policy: str, volume: str, stamp: str) -> ArchiveKey:
        directory = self._directory(policy, volume)
        for level in (self.root, self.root / policy, directory):
            level.mkdir(mode=0o700, parents=True, exist_ok=True)
        taken = {_archive_id(name, volume) for name in os.listdir(directory)}
        key = ArchiveKey(policy, volume, stamp)
        counter = 1
        while key.id in taken:
            counter += 1
            key = ArchiveKey(policy, volume, f"{stamp}-{counter}")
        return key

    def new_archive(self, key: ArchiveKey, suffix: str) -> _LocalUpload:
        return _LocalUpload(self._path(key, suffix))

    def write_manifest(self, key: ArchiveKey, data: bytes | Iterable[bytes]) -> None:
        _write_atomically(self._path(key, MANIFEST_SUFFIX), data)

    def read_manifest(self, key: ArchiveKey) -> bytes:
        return self._path(key, MANIFEST_SUFFIX).read_bytes()

    def volumes(self, policy: str) -> list[str]:
        directory = self.root / policy
        if not directory.is_dir():
            return []
        return sorted(entry.name for entry in directory.iterdir() if entry.is_dir())

    def committed(self, policy: str, volume: str | None = None) -> Iterator[ArchiveKey]:
        for volume_name in [volume] if volume else self.volumes(policy):
            directory = self._directory(policy, volume_name)
            if not directory.is_dir():
                continue
            prefix = f"{volume_name}-"
            for name in sorted(os.listdir(directory)):
                if name.startswith(prefix) and name.endswith(MANIFEST_SUFFIX):
                    archive_id = name[len(prefix) : -len(MANIFEST_SUFFIX)]
                    yield ArchiveKey(policy, volume_name, archive_id)

    def open_archive(self, key: ArchiveKey, file_name: str) -> BinaryIO:
        return open(self._directory(key.policy, key.volume) / file_name, "rb")

    def write_record(self, key: ArchiveKey, suffix: str, data: bytes) -> None:
        _write_atomically(self._path(key, suffix), data)

    def read_record(self, key: ArchiveKey, suffix: str) -> bytes | None:
        try:
            return self._path(key, suffix).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: ArchiveKey, file_name: str) -> None:
        self._path(key, MANIFEST_SUFFIX).unlink(missing_ok=True)
        _fsync_directory(self._directory(key.policy, key.volume))
        (self._directory(key.policy, key.volume) / file_name).unlink(missing_ok=True)
        self._path(key, DRILL_SUFFIX).unlink(missing_ok=True)

    def remove_garbage(self, policy: str, volume: str) -> list[str]:
        directory = self._directory(policy, volume)
        if not directory.is_dir():
            return []
        names = os.listdir(directory)
        committed = {_archive_id(name, volume) for name in names if name.endswith(MANIFEST_SUFFIX)}
        removed = []
        for name in names:
            archive_id = _archive_id(name, volume)
            if archive_id is None:
                continue  # not ours: never delete what volkeep did not write
            if name.endswith(PARTIAL) or archive_id not in committed:
                (directory / name).unlink(missing_ok=True)
                removed.append(name)
        return removed
