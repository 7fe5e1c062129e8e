"""One archive stream, a copy in each of a policy's storages (SPEC promise 9).

The backup compresses (and encrypts) once and writes the stored bytes to every copy. Each
copy begins, commits and publishes its manifest on its own: a storage that fails is
dropped from the stream with its error, the others go on. Only when no copy is left does
the stream stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from daemon.errors import OperationError
from daemon.repository.layout import ArchiveKey
from daemon.repository.store import Repository
from daemon.storage import Upload

log = structlog.get_logger()


@dataclass
class Copy:
    repository: Repository
    upload: Upload | None = None
    error: OperationError | None = None
    complete: bool = False  # the archive file is published (the manifest may not be)


class Copies:
    """The copies of one new archive, written as one stream."""

    def __init__(self, repositories: Iterable[Repository], key: ArchiveKey, suffix: str) -> None:
        """Begin the upload of the archive file in each repository. (The volume's garbage
        is removed after the backup, never before: a backup does not wait for it.)"""
        self.key = key
        self.copies = [Copy(repository) for repository in repositories]
        for copy in self.copies:
            self._attempt(copy, "cannot begin the archive", lambda copy: self._begin(copy, suffix))
        self._require_one()

    def _begin(self, copy: Copy, suffix: str) -> None:
        copy.upload = copy.repository.begin(self.key, suffix)

    @property
    def live(self) -> list[Copy]:
        return [copy for copy in self.copies if copy.error is None]

    @property
    def published(self) -> list[Repository]:
        return [copy.repository for copy in self.live]

    @property
    def failures(self) -> list[OperationError]:
        return [copy.error for copy in self.copies if copy.error is not None]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        for copy in self.live:
            self._attempt(copy, "cannot write the archive", lambda copy: _upload(copy).write(data))
        self._require_one()

    def each(self, doing: str, action: Callable[[Repository], object]) -> None:
        """Run `action` on every live copy's repository (`doing` says what, for its error):
        a copy whose action raises OSError is dropped with its error, the others go on.
        Raise OperationError if no copy is left."""
        for copy in self.live:
            self._attempt(copy, doing, lambda copy: action(copy.repository))
        self._require_one()

    def commit(self) -> None:
        """Complete every live copy's archive file (synced and renamed, or the multipart
        upload completed)."""
        for copy in self.live:
            self._attempt(copy, "cannot complete the archive", self._complete)
        self._require_one()

    def _complete(self, copy: Copy) -> None:
        _upload(copy).commit()
        copy.complete = True

    def publish(self, manifest_chunks: Callable[[], Iterable[bytes]]) -> None:
        """Write the manifest, the commit marker, to every copy whose archive is complete."""
        for copy in self.live:
            self._attempt(
                copy,
                "cannot write the manifest",
                lambda copy: copy.repository.commit(self.key, manifest_chunks()),
            )
        self._require_one()

    def abort(self) -> None:
        for copy in self.copies:
            self._give_up(copy)

    def _give_up(self, copy: Copy) -> None:
        """Abort the copy's upload and drop its claim; once its archive file is published,
        the claim stays: it tells garbage collection whose the file is."""
        if not copy.complete:
            copy.repository.give_up(self.key, copy.upload)

    def _attempt(self, copy: Copy, doing: str, step: Callable[[Copy], object]) -> None:
        try:
            step(copy)
        except OSError as error:
            copy.error = copy.repository.failure(error, doing)
            self._give_up(copy)
            if len(self.copies) > 1:
                log.error("one storage failed, the others go on", error=copy.error.message)

    def _require_one(self) -> None:
        if not self.live:
            failures = self.failures
            if len(failures) == 1:
                raise failures[0]
            raise OperationError("; ".join(failure.message for failure in failures))


def _upload(copy: Copy) -> Upload:
    assert copy.upload is not None  # a live copy has begun
    return copy.upload
