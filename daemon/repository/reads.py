"""Many small reads of one storage at once: the manifests and verdicts of a volume's
archives.

A prune after each backup reads the summary of every archive it judges, and `list` and
`status` read one or two blobs an archive; each is a round trip to the storage (20-60 ms
to a remote S3), so a volume keeping seventeen archives paid a second for them one after
another. `read_each` keeps READERS of them in flight.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from daemon.archive.manifest import Manifest
from daemon.errors import OperationError
from daemon.repository.layout import ArchiveKey
from daemon.repository.store import Repository

READERS = 4  # reads in flight at once: as many as an S3 storage keeps connections open
T = TypeVar("T")
R = TypeVar("R")


def read_each(read: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """Given a function that reads one small blob and what to read, yield what it returns
    for each, in their order, READERS reads at a time. What a read raises is raised at its
    turn; each read runs in the caller's context (the values its log lines are bound to).
    Reads not begun when the caller stops are not made."""
    items = list(items)
    if len(items) < 2:
        yield from map(read, items)
        return
    pool = ThreadPoolExecutor(min(READERS, len(items)), thread_name_prefix="volkeep-reads")
    try:
        futures = [pool.submit(contextvars.copy_context().run, read, item) for item in items]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def read_summaries(
    repository: Repository, keys: Iterable[ArchiveKey]
) -> Iterator[Manifest | OperationError]:
    """Given archives of the repository, yield the summary of each one's manifest (no
    entries), or the OperationError that says why it cannot be read, in their order,
    READERS at a time."""

    def summary(key: ArchiveKey) -> Manifest | OperationError:
        try:
            return repository.read_manifest(key, entries=False)
        except OperationError as error:
            return error

    return read_each(summary, keys)
