"""The storage interface every backend implements.

An archive is a pair of objects: the archive file and its manifest. The manifest is
written last and is the commit marker (SPEC §4, §5.1): a backend lists, opens and counts
only archives whose manifest exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True, order=True)
class ArchiveKey:
    policy: str
    volume: str
    id: str  # the UTC start time, e.g. "20261128T030000Z"

    def file_name(self, suffix: str) -> str:
        return f"{self.volume}-{self.id}{suffix}"


MANIFEST_SUFFIX = ".manifest.json"
DRILL_SUFFIX = ".drill.json"


class ArchiveUpload(Protocol):
    """An archive being written: invisible until `commit`, gone after `abort`."""

    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    name: str

    def describe(self) -> str:
        """Return where the storage is, for messages (a path or a URL without secrets)."""
        ...

    def allocate_id(self, policy: str, volume: str, stamp: str) -> ArchiveKey:
        """Given a UTC time stamp, return a key no archive of this volume uses yet."""
        ...

    def new_archive(self, key: ArchiveKey, suffix: str) -> ArchiveUpload: ...

    def write_manifest(self, key: ArchiveKey, data: bytes | Iterable[bytes]) -> None:
        """Publish the manifest atomically: this commits the archive."""
        ...

    def read_manifest(self, key: ArchiveKey) -> bytes: ...

    def committed(self, policy: str, volume: str | None = None) -> Iterator[ArchiveKey]:
        """Yield the keys of the archives that have a manifest."""
        ...

    def volumes(self, policy: str) -> list[str]: ...

    def open_archive(self, key: ArchiveKey, file_name: str) -> BinaryIO: ...

    def write_record(self, key: ArchiveKey, suffix: str, data: bytes) -> None:
        """Publish a record beside the archive (a drill verdict) atomically."""
        ...

    def read_record(self, key: ArchiveKey, suffix: str) -> bytes | None: ...

    def delete(self, key: ArchiveKey, file_name: str) -> None:
        """Delete the manifest first (uncommitting), then the archive and its records."""
        ...

    def remove_garbage(self, policy: str, volume: str) -> list[str]:
        """Remove partial uploads and archives without a manifest; return their names.

        Call only while holding the volume's lock: a running backup's files look the same.
        """
        ...
