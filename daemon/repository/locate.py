"""Which copy: the first of a policy's storages, in its order, that holds a committed,
intact copy of an archive (SPEC promise 14). Restore, drill and `list --files` come here.

A copy is taken when its manifest (the commit marker) reads and the archive file it names
is there with the size the manifest records: one manifest read and one stat (a HEAD on
S3) per storage tried. A storage that cannot be listed, a copy without a manifest (an
upload never committed), an unreadable manifest, a missing or cut archive file: each is
passed over in one log line (event "copy passed over", naming the storage and why) and
the next storage is tried.

The SHA-256 of the stored bytes can only be checked by reading them all, so it is checked
as the copy is used (`daemon.repository.verify`). `CopySearch.first` runs the use: a copy
whose reading fails on its own account (`COPY_FAULTS`: damaged, unsafe, not what its
manifest lists, or its storage failing mid-read) is passed over the same way and the next
copy is used. Only when none is left does the search fail, naming every copy it passed
over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import structlog

from daemon.archive.manifest import Manifest
from daemon.errors import ArchiveFault, OperationError, StorageFailure
from daemon.repository.layout import MANIFEST_SUFFIX, ArchiveKey, newest_backup
from daemon.repository.store import Repository, committed
from daemon.storage.base import BlobMissing

log = structlog.get_logger()
T = TypeVar("T")
# What reading one copy can find that another copy may not share.
COPY_FAULTS = (ArchiveFault, StorageFailure)


@dataclass(frozen=True)
class Located:
    """A committed copy whose manifest reads and whose archive file has the recorded size;
    `manifest` is its summary (the entries are read by whoever uses the copy)."""

    repository: Repository
    key: ArchiveKey
    manifest: Manifest


class CopySearch:
    """The copies of one archive (an id; None or "latest": the newest backup any storage
    holds) in a policy's storages, in its order."""

    def __init__(
        self, repositories: Iterable[Repository], policy: str, volume: str, archive_id: str | None
    ) -> None:
        self.repositories = list(repositories)
        self.policy = policy
        self.volume = volume
        self.wanted = None if archive_id in (None, "latest") else archive_id
        self.resolved = self.wanted  # the id, once "latest" is resolved
        self.passed_over: list[str] = []  # "storage 'local': why", in the order met
        self._files: dict[str, dict[ArchiveKey, set[str]]] | None = None
        self._copies: Iterator[Located] | None = None
        self._current: Located | None = None  # the copy that served last, or is tried now

    def first(self, use: Callable[[Located], T]) -> tuple[Located, T]:
        """Given how to use a copy, call it with each intact copy in turn and return the
        copy that served and what `use` returned. A copy whose use raises one of
        `COPY_FAULTS` is passed over for good; the copy that served stays the current one,
        where the next `first` begins (check a copy, then restore from it). Raise
        OperationError naming every copy passed over if none served; whatever else `use`
        raises, at once."""
        while (copy := self._current_copy()) is not None:
            try:
                return copy, use(copy)
            except COPY_FAULTS as fault:
                self.pass_over(copy.repository, fault.message)
                self._current = None
        raise self.nothing_left()

    def _current_copy(self) -> Located | None:
        if self._current is None:
            if self._copies is None:
                self._copies = self._intact_copies()
            self._current = next(self._copies, None)
        return self._current

    def first_intact(self) -> Located:
        """Return the first copy that looks intact (committed, manifest readable, archive
        file of the recorded size). Raise OperationError naming the copies passed over if
        there is none."""
        return self.first(lambda copy: copy)[0]

    @property
    def archive_id(self) -> str:
        """The id searched for: the one asked for, else the newest backup of any storage
        that can be listed (none dated in the future). Raise OperationError if there is
        none."""
        if self.wanted is not None:
            return self.wanted
        listed = [key for files in self._listed().values() for key in committed(files)]
        newest = newest_backup(listed)
        if newest is None:
            raise self.nothing_left(
                "every archive is dated in the future (a clock ahead?): name one with --archive ID"
                if any(not key.is_safety for key in listed)
                else None
            )
        return newest.id

    def _intact_copies(self) -> Iterator[Located]:
        """Yield each storage's copy that looks intact, in the policy's order, passing over
        (see `pass_over`) the copies that do not."""
        self.resolved = self.archive_id
        listed = self._listed()
        for repository in self.repositories:
            files = listed.get(repository.name)
            key = next((key for key in files or {} if key.id == self.resolved), None)
            if files is None or key is None:
                continue
            why = _flaw(repository, key, files[key])
            if isinstance(why, str):
                self.pass_over(repository, why)
                continue
            yield Located(repository, key, why)

    def pass_over(self, repository: Repository, why: str) -> None:
        """Say in one line that the copy in `repository` is not used, and why."""
        log.warning(
            "copy passed over",
            storage=repository.name,
            reason=why,
            policy=self.policy,
            volume=self.volume,
            archive=self.resolved,
        )
        self.passed_over.append(f"storage {repository.name!r}: {why}")

    def nothing_left(self, why: str | None = None) -> OperationError:
        """Return the error of a search that found no copy to use: `why`, else what was
        not found where, then every copy passed over."""
        if why is None:
            names = ", ".join(repository.name for repository in self.repositories)
            where = f"storage {names!r}" if len(self.repositories) == 1 else f"storages {names}"
            if self.passed_over and self.resolved is not None:
                why = f"no intact copy of the archive in {where}"
            else:
                why = f"{'no such archive' if self.wanted else 'no archive'} in {where}"
        reasons = "".join(f"; {reason}" for reason in self.passed_over)
        return OperationError(
            f"{why}{reasons} (see volkeep list)",
            policy=self.policy,
            volume=self.volume,
            archive=self.resolved,
        )

    def _listed(self) -> dict[str, dict[ArchiveKey, set[str]]]:
        """Each storage's archive files of the volume, listed once; a storage that cannot be
        listed is passed over (and absent)."""
        if self._files is None:
            self._files = {}
            for repository in self.repositories:
                try:
                    self._files[repository.name] = repository.files(self.policy, self.volume)
                except OSError as error:
                    failure = repository.failure(error, "cannot list the archives")
                    self.pass_over(repository, failure.message)
        return self._files


def _flaw(repository: Repository, key: ArchiveKey, suffixes: set[str]) -> Manifest | str:
    """Given a copy and the suffixes of its files, return its manifest's summary if the
    copy looks intact, else why it does not."""
    if MANIFEST_SUFFIX not in suffixes:
        return "it holds files of the archive but no manifest (an upload never committed)"
    try:
        manifest = repository.read_manifest(key, entries=False)
        size = repository.store.size(key.directory + manifest.archive_file)
    except OperationError as error:
        return error.message
    except BlobMissing:
        return "archive file missing"
    except OSError as error:
        return repository.failure(error, "cannot read the archive", key).message
    if size != manifest.size:
        return f"the archive file is {size} bytes, its manifest records {manifest.size}"
    return manifest


def locate(
    repositories: list[Repository], policy: str, volume: str, archive_id: str | None
) -> tuple[Repository, ArchiveKey]:
    """Given a policy's repositories in its order, a volume and an archive id (None or
    "latest": the newest backup in any of them), return the first repository that holds
    an intact-looking copy of it, and its key (see `CopySearch.first_intact`). Raise
    OperationError if there is none."""
    copy = CopySearch(repositories, policy, volume, archive_id).first_intact()
    return copy.repository, copy.key


def newest_readable_backup(
    repositories: Iterable[Repository], policy: str, volume: str
) -> Located | None:
    """Given a policy's storages in its order and a volume, return the volume's newest
    backup (no safety archive) whose manifest reads, in the first storage that holds one,
    with that summary; None if there is none. A storage that cannot be listed, and a
    manifest that cannot be read, are passed over: this is an estimate's or a comparison's
    starting point, never a restore's."""
    for repository in repositories:
        try:
            keys = repository.backups(policy, volume)
        except OSError:
            continue
        for key in keys:
            try:
                return Located(repository, key, repository.read_manifest(key, entries=False))
            except OperationError:
                continue
    return None
