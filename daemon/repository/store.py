"""The archives one host keeps in one storage: reading them, the commit marker, deletion.

A storage is a blob store (`daemon.storage`); a `Repository` knows what its blobs mean
(layout and ids: `daemon.repository.layout`):

- The commit marker. An archive exists when its manifest does; the manifest is written
  last with a conditional create. Archive files without a manifest, and uploads never
  completed, are garbage (`daemon.repository.garbage`).
- Claims. While a process writes an archive's files, or deletes them, it claims the id
  (`<volume>-<id>.claim.json`, a conditional create naming the process): no two processes
  write one id, and what a crash leaves is known to be its dead owner's.
- Deletion removes the manifest first (uncommitting), then the archive and its record.
- Hosts. A repository opened for another host (`--host`) reads that host's archives and
  may record a drill beside them; it never allocates, deletes or collects garbage
  (promise 10). This host's own claims its namespace with its marker before the first
  write (`require_own`, `daemon.repository.hosts`): a name another machine claims is
  refused before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from daemon.archive.encryption import NoIdentityMatches
from daemon.archive.manifest import EntriesSealed, Manifest, ManifestError, read_entries
from daemon.archive.sealing import opener
from daemon.archive.tarstream import Member
from daemon.config.keys import Identities
from daemon.errors import ArchiveFault, KeyMissing, OperationError, StorageFailure
from daemon.repository.hosts import HostRecord, claim_namespace
from daemon.repository.latch import LatchedStore
from daemon.repository.layout import (
    CLAIM_SUFFIX,
    DRILL_SUFFIX,
    MANIFEST_SUFFIX,
    ArchiveKey,
    split_name,
    volume_directory,
)
from daemon.rules.verdict import DrillRecord
from daemon.storage.base import BlobExists, BlobMissing, BlobReader, BlobStore, Upload
from daemon.system.owner import this_process

CLAIM_FORMAT = 1


class Repository:
    """The archives one host keeps in one storage (`own`: this host's, writable; `marker`:
    makes the record that claims its namespace before the first write, None: no claim).

    A repository is made for one operation: once its storage is unavailable, it is asked
    nothing more (`daemon.repository.latch`)."""

    def __init__(
        self,
        store: BlobStore,
        host: str,
        *,
        own: bool,
        marker: Callable[[], HostRecord] | None = None,
    ) -> None:
        self.store: BlobStore = LatchedStore(store)
        self.host = host
        self.own = own
        self.marker = marker
        self._claimed = False

    @property
    def name(self) -> str:
        return self.store.name

    def describe(self) -> str:
        return self.store.describe()

    def namespaces(self) -> tuple[str, ...]:
        """This host's namespace, and the layout before host names if this host is the
        local one."""
        return (self.host, "") if self.own else (self.host,)

    # Reading

    def volumes(self, policy: str) -> list[str]:
        """Return the volumes this host has archive files of under the policy. Each
        directory is listed on its own, never the policy's tree: a policy's chunk
        repository (`_chunks/`, which no volume name can be) may hold hundreds of
        thousands of packs."""
        found = set()
        for namespace in self.namespaces():
            top = f"{namespace}/{policy}/" if namespace else f"{policy}/"
            for name in self.store.list_directory(top):
                if name.endswith("/") and not name.startswith("_"):
                    volume = name.removesuffix("/")
                    if self._names_in(top + name, volume):
                        found.add(volume)
        return sorted(found)

    def _names_in(self, directory: str, volume: str) -> list[tuple[str, str]]:
        """Return the (id, suffix) of each of the volume's archive files directly in
        `directory`."""
        return [
            split
            for name in self.store.list_directory(directory)
            if (split := split_name(name, volume)) is not None
        ]

    def files(self, policy: str, volume: str) -> dict[ArchiveKey, set[str]]:
        """Return every archive id of the volume with the suffixes of its files."""
        files: dict[ArchiveKey, set[str]] = {}
        for namespace in self.namespaces():
            for key, suffixes in self.files_in(namespace, policy, volume).items():
                files.setdefault(key, set()).update(suffixes)
        return files

    def files_in(self, namespace: str, policy: str, volume: str) -> dict[ArchiveKey, set[str]]:
        """Return every archive id of the volume in one namespace with the suffixes of its
        files: those directly in its directory (a deeper one is another host's, whose name
        is a policy's, under the layout before host names)."""
        directory = volume_directory(namespace, policy, volume)
        files: dict[ArchiveKey, set[str]] = {}
        for archive_id, suffix in self._names_in(directory, volume):
            files.setdefault(ArchiveKey(policy, volume, archive_id, namespace), set()).add(suffix)
        return files

    def archives(self, policy: str, volume: str) -> list[ArchiveKey]:
        """Return the volume's committed archives (backups and safety), newest first."""
        return committed(self.files(policy, volume))

    def backups(self, policy: str, volume: str) -> list[ArchiveKey]:
        """Return the volume's committed backups (no safety archives), newest first."""
        return committed_backups(self.files(policy, volume))

    def read_manifest(
        self, key: ArchiveKey, *, entries: bool = True, identities: Identities | None = None
    ) -> Manifest:
        """Return the archive's manifest: its summary, and (unless `entries` is off) its
        entries, streamed from the storage at each iteration; the sealed entries of an
        encrypted archive are opened with `identities`.

        Raise OperationError if it is missing or unreadable, if its entries are sealed and
        no identity is given or none opens them, or if it names an archive file that is not
        this archive's (a hostile manifest must not point elsewhere). Iterating the entries
        raises OperationError too (StorageFailure if the storage fails)."""
        with (
            self._reading_manifest(key),
            contextlib.closing(self.store.open(key.blob(MANIFEST_SUFFIX))) as raw,
        ):
            manifest = Manifest.read(raw)
        split = split_name(manifest.archive_file, key.volume)
        if split is None or split[0] != key.id or split[1] in (MANIFEST_SUFFIX, DRILL_SUFFIX):
            raise archive_error(
                key, f"manifest names a foreign archive file {manifest.archive_file!r}"
            )
        if entries:
            if manifest.encryption is not None and identities is None:
                raise key_missing(key, manifest.recipients)
            manifest.entries = StoredEntries(self, key, identities, tuple(manifest.recipients))
            if manifest.encryption is not None:  # a wrong identity is said before any work
                with contextlib.closing(iter(manifest.entries)) as opened:
                    next(opened, None)
        return manifest

    def manifest_entries(
        self, key: ArchiveKey, identities: Identities | None, recipients: Sequence[str]
    ) -> Generator[Member, None, None]:
        """Yield the entries of the archive's manifest, streamed (see `read_manifest`)."""
        decrypt = opener(identities, recipients) if identities is not None else None
        with (
            self._reading_manifest(key),
            contextlib.closing(self.store.open(key.blob(MANIFEST_SUFFIX))) as raw,
        ):
            yield from read_entries(raw, decrypt)

    @contextlib.contextmanager
    def _reading_manifest(self, key: ArchiveKey) -> Iterator[None]:
        """Turn what reading a manifest raises into the OperationError that names it."""
        try:
            yield
        except BlobMissing:
            raise archive_error(key, "manifest missing") from None
        except EntriesSealed as sealed:
            raise key_missing(key, sealed.recipients) from None
        except NoIdentityMatches as error:
            raise archive_error(key, str(error), KeyMissing) from None
        except ManifestError as error:
            raise archive_error(key, str(error)) from None
        except OSError as error:
            raise self.failure(error, "cannot read the manifest", key) from None

    def open_archive(self, key: ArchiveKey, manifest: Manifest) -> BlobReader:
        """Open the archive file for reading. Raise OperationError if it is missing."""
        try:
            return self.store.open(key.directory + manifest.archive_file)
        except BlobMissing:
            raise archive_error(key, "archive file missing") from None
        except OSError as error:
            raise self.failure(error, "cannot read the archive", key) from None

    def read_drill(self, key: ArchiveKey) -> DrillRecord | None:
        """Return the archive's drill record, or None if it was never drilled, or the
        record cannot be read (an unreadable verdict is no proof)."""
        try:
            return DrillRecord.from_bytes(self.store.get(key.blob(DRILL_SUFFIX)))
        except (OSError, ValueError):
            return None

    def write_drill(self, key: ArchiveKey, record: DrillRecord) -> None:
        """Record a drill's verdict beside the archive. Raise OperationError."""
        try:
            self.store.put(key.blob(DRILL_SUFFIX), record.to_bytes())
        except OSError as error:
            raise self.failure(error, "cannot write the drill record", key) from None

    # Writing (this host's own namespace only)

    def require_own(self) -> None:
        """Before a write or prune in this host's namespace: raise OperationError if the
        namespace is another host's, NamespaceClaimed if its marker is another machine's
        (claiming it first if it is free: `claim_namespace`), OSError if the store fails."""
        if not self.own:
            raise OperationError(f"the archives of host {self.host!r} are read-only here")
        if self.marker is not None and not self._claimed:
            claim_namespace(self.store, self.marker())
            self._claimed = True

    def claim(self, key: ArchiveKey) -> bool:
        """Claim a new archive's id for this process with a conditional create of its claim;
        return False if another process claims it, or if the archive is committed already
        (the manifest is looked for, not listed: a listing may lag behind). Raise OSError."""
        self.require_own()
        try:
            self.store.put(key.blob(CLAIM_SUFFIX), _claim_record(), exclusive=True)
        except BlobExists:
            return False
        if self.store.exists(key.blob(MANIFEST_SUFFIX)):
            self.release(key)
            return False
        return True

    def claim_owner(self, key: ArchiveKey) -> str | None:
        """Return the process that claims the archive's id (an owner of
        `daemon.system.owner`), or None if there is no claim or it cannot be read. Raise
        OSError if the storage fails."""
        try:
            record = json.loads(self.store.get(key.blob(CLAIM_SUFFIX)))
        except (BlobMissing, ValueError):
            return None
        owner = record.get("owner") if isinstance(record, dict) else None
        return owner if isinstance(owner, str) else None

    def release(self, key: ArchiveKey) -> None:
        """Remove the claim of the archive's id. Raise OSError."""
        self.require_own()
        self.store.delete(key.blob(CLAIM_SUFFIX))

    def give_up(self, key: ArchiveKey, upload: Upload | None) -> None:
        """Abort a new archive's upload, if begun, then remove the claim of its id if this
        process holds it. Never raise: what cannot be removed now is garbage, removed once
        this process is gone."""
        if upload is not None:
            upload.abort()
        with contextlib.suppress(OSError):
            if self.claim_owner(key) == this_process():
                self.release(key)

    def begin(self, key: ArchiveKey, suffix: str) -> Upload:
        """Begin the upload of a new archive's file, under this process's claim of its id
        (made now if it could not be made when the id was chosen). Raise OSError
        (BlobExists if another process claims the id)."""
        self.require_own()
        if self.claim_owner(key) != this_process() and not self.claim(key):
            raise BlobExists(errno.EEXIST, f"archive id {key.id} is claimed by another process")
        return self.store.create(key.blob(suffix))

    def commit(self, key: ArchiveKey, manifest_chunks: Iterable[bytes]) -> None:
        """Write the manifest, the commit marker, with a conditional create: the archive
        exists from now on; then release the id's claim. Raise OSError (BlobExists if the
        id was taken meanwhile)."""
        self.require_own()
        self.store.put(key.blob(MANIFEST_SUFFIX), manifest_chunks, exclusive=True)
        # a claim that cannot be removed now is garbage, removed once this process is gone
        with contextlib.suppress(OSError):
            self.release(key)

    def delete(self, key: ArchiveKey, manifest: Manifest) -> None:
        """Under this process's claim of the id (a crash halfway leaves files garbage
        collection knows are abandoned), delete the manifest first (uncommitting), then the
        archive file and its record, then the claim. Raise OSError."""
        self.require_own()
        self.store.put(key.blob(CLAIM_SUFFIX), _claim_record())
        self.store.delete(key.blob(MANIFEST_SUFFIX))
        self.store.delete(key.directory + manifest.archive_file)
        self.store.delete(key.blob(DRILL_SUFFIX))
        self.release(key)

    # Errors

    def failure(self, error: OSError, doing: str, key: ArchiveKey | None = None) -> StorageFailure:
        """Given the error the store raised, return the one line to report, naming the
        storage."""
        reason = error.strerror or str(error) or type(error).__name__
        message = f"{doing} in storage {self.name!r} ({self.describe()}): {reason}"
        if key is None:
            return StorageFailure(message)
        return StorageFailure(message, policy=key.policy, volume=key.volume, archive=key.id)


def _claim_record() -> bytes:
    """Return the claim this process writes: `{"format":1,"owner":"<host>:<pid>:<start>"}`."""
    record = {"format": CLAIM_FORMAT, "owner": this_process()}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def committed(files: dict[ArchiveKey, set[str]]) -> list[ArchiveKey]:
    """Given a volume's archive files (`Repository.files`), return its committed archives
    (backups and safety), newest first."""
    return sorted((key for key, suffixes in files.items() if MANIFEST_SUFFIX in suffixes),
                  reverse=True)  # fmt: skip


def committed_backups(files: dict[ArchiveKey, set[str]]) -> list[ArchiveKey]:
    """Given a volume's archive files, return its committed backups (no safety archives),
    newest first."""
    return [key for key in committed(files) if not key.is_safety]


@dataclass(frozen=True)
class StoredEntries:
    """A committed manifest's entries: each iteration streams them from the storage."""

    repository: Repository
    key: ArchiveKey
    identities: Identities | None
    recipients: tuple[str, ...]

    def __iter__(self) -> Generator[Member, None, None]:
        return self.repository.manifest_entries(self.key, self.identities, self.recipients)


def archive_error(
    key: ArchiveKey, message: str, kind: type[OperationError] = ArchiveFault
) -> OperationError:
    """Given an archive and what is wrong with it (by default the archive's own fault),
    return the error addressed to it."""
    return kind(message, policy=key.policy, volume=key.volume, archive=key.id)


def key_missing(key: ArchiveKey, recipients: list[str]) -> OperationError:
    """Given an encrypted archive and its recipients, return the error for a restore or
    drill that has no identity to open it (no verdict on the archive)."""
    message = (
        f"the archive is encrypted to {', '.join(recipients) or 'age recipients'}: restoring "
        "or drilling it needs one of their identities (encryption.age.identity_file)"
    )
    return archive_error(key, message, KeyMissing)
