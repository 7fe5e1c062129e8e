"""A storage that is down is asked once per operation, not once per step.

Each request to a storage that cannot be reached costs its retries (S3: `max_attempts`,
with a backoff between them); a backup asks a storage many things (the newest archive, the
ids taken, the host's claim, the id's claim, the upload), so a dead storage cost a backup
the retries many times over. A `LatchedStore` wraps a storage's blob store for one
operation (a `Repository` is made for one): the first StoreUnavailable is remembered and
raised again by every later call, at once, without asking the storage. The operation goes
on with its other storages and names the failed one, as it would have after each retry.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TypeVar

import structlog

from daemon.storage.base import BlobReader, BlobStore, Incomplete, StoreUnavailable, Upload

log = structlog.get_logger()
T = TypeVar("T")


class LatchedStore:
    """A BlobStore that, once its store raised StoreUnavailable, raises that again at every
    later call without asking the store."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.name = store.name
        self.unavailable: StoreUnavailable | None = None
        self._lock = threading.Lock()

    def call(self, method: Callable[..., T], *args: object, **keywords: object) -> T:
        """Given a method of the store and its arguments, return what it returns. Raise the
        StoreUnavailable it raises, and from then on, at once, the same for every call."""
        if self.unavailable is not None:
            raise self.unavailable.with_traceback(None)
        try:
            return method(*args, **keywords)
        except StoreUnavailable as error:
            with self._lock:  # reads run several at once (`read_each`): one warning
                first = self.unavailable is None
                self.unavailable = self.unavailable or error
            if first:
                log.warning(
                    "storage unavailable: it is asked nothing more in this operation",
                    storage=self.name,
                    error=error.strerror or str(error),
                )
            raise

    def describe(self) -> str:
        return self.store.describe()

    def create(self, key: str) -> Upload:
        return _LatchedUpload(self, self.call(self.store.create, key))

    def put(
        self,
        key: str,
        data: bytes | bytearray | Iterable[bytes],
        *,
        exclusive: bool = False,
        classed: bool = False,
    ) -> None:
        self.call(self.store.put, key, data, exclusive=exclusive, classed=classed)

    def get(self, key: str) -> bytes:
        return self.call(self.store.get, key)

    def open(self, key: str) -> BlobReader:
        return self.call(self.store.open, key)

    def exists(self, key: str) -> bool:
        return self.call(self.store.exists, key)

    def size(self, key: str) -> int:
        return self.call(self.store.size, key)

    def modified(self, key: str) -> datetime:
        return self.call(self.store.modified, key)

    def list(self, prefix: str) -> Iterator[str]:
        return self._latched(self.store.list(prefix))

    def _latched(self, names: Iterator[str]) -> Iterator[str]:
        """Given a listing of the store, not begun, yield its names, each read through
        `call`."""
        while True:
            try:
                yield self.call(next, names)
            except StopIteration:
                return

    def list_directory(self, directory: str) -> Iterator[str]:
        return self._latched(self.store.list_directory(directory))

    def delete(self, key: str) -> None:
        self.call(self.store.delete, key)

    def incomplete(self, directory: str) -> builtins.list[Incomplete]:
        return self.call(self.store.incomplete, directory)

    def remove_incomplete(self, upload: Incomplete) -> None:
        self.call(self.store.remove_incomplete, upload)


class _LatchedUpload:
    """An upload of a latched store: its failure latches the store too."""

    def __init__(self, latch: LatchedStore, upload: Upload) -> None:
        self._latch = latch
        self.upload = upload

    def write(self, data: bytes | bytearray | memoryview, /) -> object:
        return self._latch.call(self.upload.write, data)

    def commit(self) -> None:
        self._latch.call(self.upload.commit)

    def abort(self) -> None:
        self.upload.abort()  # never raises, and must run even when the store is latched
