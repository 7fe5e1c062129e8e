"""The blob store interface every storage backend implements.

A blob store keeps named blobs: keys are `/`-separated paths relative to the storage's
root (`host/policy/volume/volume-20261128T030000Z.tar.zst`). It knows nothing of archives,
manifests, ids or hosts: every rule of the repository (SPEC §4, §5) lives above it, in
`daemon.repository.store`, once for all backends. A backend is a handful of calls, proven by one
shared conformance suite (tests/e2e/test_blob_stores.py).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class BlobMissing(FileNotFoundError):
    """The blob does not exist."""


class BlobExists(FileExistsError):
    """A conditional create found the blob already there."""


class StoreUnavailable(OSError):
    """The store cannot be reached or refuses the request (a message for the operator in
    `strerror`, never a secret)."""


@dataclass(frozen=True)
class Incomplete:
    """An upload that was begun and neither committed nor aborted: a running one, or a
    crash's leftover. The store says what it knows; the repository judges
    (`daemon.repository.garbage`)."""

    key: str  # the blob it would become
    touched: datetime  # when it was last written to (a file) or begun (a multipart upload)
    owner: str | None  # the writing process (`daemon.system.owner`), if the store records it
    handle: str  # what `remove_incomplete` needs: the temporary file's name, the upload id


class Upload(Protocol):
    """A blob being written as a stream: invisible until `commit`, gone after `abort`.

    `commit` publishes it whole and atomically (synced file renamed into place, or a
    completed multipart upload). `abort` never raises.
    """

    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class BlobReader(Protocol):
    """A blob opened for reading, in order."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class BlobStore(Protocol):
    name: str

    def describe(self) -> str:
        """Return where the store is, for messages (a path or a URL, never a secret)."""
        ...

    def create(self, key: str) -> Upload:
        """Begin a streamed upload of a new blob named `key`."""
        ...

    def put(
        self,
        key: str,
        data: bytes | bytearray | Iterable[bytes],
        *,
        exclusive: bool = False,
        classed: bool = False,
    ) -> None:
        """Write a small blob whole and atomically. With `exclusive`, create it only if
        absent (conditional create: `If-None-Match: *`); raise BlobExists otherwise. With
        `classed`, the blob is bulk data (a pack) and goes to the storage's class, as a
        streamed blob does."""
        ...

    def get(self, key: str) -> bytes:
        """Return a small blob whole. Raise BlobMissing."""
        ...

    def open(self, key: str) -> BlobReader:
        """Open a blob for streamed reading. Raise BlobMissing."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Return the blob's size in bytes, without reading it. Raise BlobMissing."""
        ...

    def modified(self, key: str) -> datetime:
        """Return when the blob was last written (UTC). Raise BlobMissing."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yield the keys of the committed blobs under `prefix` (a directory ending in `/`,
        or "" for all), at any depth, in no particular order; every page is read."""
        ...

    def list_directory(self, directory: str) -> Iterator[str]:
        """Yield the names directly in `directory` (ending in `/`, or "" for the root), in
        no particular order, every page read: each committed blob's name, and each
        subdirectory's name followed by `/` (a subdirectory holds at least one blob, or
        once did). Nothing deeper is read."""
        ...

    def delete(self, key: str) -> None:
        """Delete the blob; a missing blob is no error."""
        ...

    def incomplete(self, directory: str) -> builtins.list[Incomplete]:
        """Return the uploads begun and neither committed nor aborted whose key is directly
        in `directory` (ending in `/`; not in its subdirectories), running ones included."""
        ...

    def remove_incomplete(self, upload: Incomplete) -> None:
        """Remove an upload `incomplete` returned (delete the file, abort the multipart
        upload); one already gone is no error."""
        ...
