"""Reading archives back from storage: find one, check it whole, stream it.

`verify_archive` is the check every restore and drill runs before anything is written:
the stored bytes against the manifest's size and SHA-256, every member header against the
path-safety rules, and the members against the manifest's entries.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import zstandard

from daemon.archive.compare import Comparison, compare_trees
from daemon.archive.compression import SUFFIXES, decompressing_reader
from daemon.archive.digest import HashingReader
from daemon.archive.manifest import Manifest, ManifestError
from daemon.archive.safety import PathGuard, UnsafeMember
from daemon.archive.tarstream import Member, TarFormatError, TarScanner
from daemon.errors import HostileArchive, OperationError
from daemon.readahead import read_ahead
from daemon.storage import ArchiveKey, Storage

READ_SIZE = 1 << 20
SAFETY_SUFFIX = "-safety"


class MembersDiffer(OperationError):
    """The archive's members are not the objects its manifest lists."""

    def __init__(self, key: ArchiveKey, comparison: Comparison) -> None:
        summary = comparison.summary() or "in order"
        super().__init__(
            f"the archive's members differ from its manifest's entries: {summary}",
            policy=key.policy,
            volume=key.volume,
            archive=key.id,
        )
        self.comparison = comparison


@dataclass(frozen=True)
class Verified:
    key: ArchiveKey
    manifest: Manifest


def backup_keys(storage: Storage, policy: str, volume: str) -> list[ArchiveKey]:
    """Given a volume, return the keys of its committed backups (no safety archives),
    newest first."""
    keys = (key for key in storage.committed(policy, volume) if not key.id.endswith(SAFETY_SUFFIX))
    return sorted(keys, reverse=True)


def find_key(storage: Storage, policy: str, volume: str, archive_id: str | None) -> ArchiveKey:
    """Given an archive id (None or "latest": the newest backup), return its key.

    Safety archives are only found by their id. An archive file whose manifest is gone is
    found too, so that reading it says "manifest missing". Raise OperationError if there is
    none.
    """
    if archive_id in (None, "latest"):
        keys = backup_keys(storage, policy, volume)
        if not keys:
            raise OperationError("no archive in the storage", policy=policy, volume=volume)
        return keys[0]
    key = ArchiveKey(policy, volume, archive_id)
    if key in set(storage.committed(policy, volume)):
        return key
    if "/" not in archive_id and _has_archive_file(storage, key):
        return key
    raise OperationError(
        "no such archive (see volkeep list)", policy=policy, volume=volume, archive=archive_id
    )


def _has_archive_file(storage: Storage, key: ArchiveKey) -> bool:
    for suffix in SUFFIXES.values():
        try:
            storage.open_archive(key, key.file_name(suffix)).close()
        except FileNotFoundError:
            continue
        return True
    return False


def find_archive(
    storage: Storage, policy: str, volume: str, archive_id: str | None
) -> tuple[ArchiveKey, Manifest]:
    """Given an archive id (None or "latest": the newest backup), return its key and manifest.

    Raise OperationError if there is none, or if its manifest is missing or unreadable.
    """
    key = find_key(storage, policy, volume, archive_id)
    return key, read_manifest(storage, key)


def read_manifest(storage: Storage, key: ArchiveKey, *, entries: bool = True) -> Manifest:
    """Return the archive's manifest (without its entries if `entries` is off).

    Raise OperationError if it is missing or unreadable."""
    try:
        return Manifest.from_json(storage.read_manifest(key), entries=entries)
    except FileNotFoundError:
        raise _error(key, "manifest missing") from None
    except ManifestError as error:
        raise _error(key, str(error)) from None


def _error(key: ArchiveKey, message: str) -> OperationError:
    return OperationError(message, policy=key.policy, volume=key.volume, archive=key.id)


def _stream(
    storage: Storage, key: ArchiveKey, manifest: Manifest, scanner: TarScanner
) -> Iterator[None]:
    """Feed the archive's tar stream to the scanner, yielding after each piece; check the
    stored bytes against the manifest at the end. Errors name the archive."""
    try:
        with storage.open_archive(key, manifest.archive_file) as stored:
            hashing = HashingReader(stored)
            reader = decompressing_reader(manifest.compression, hashing)  # type: ignore[arg-type]
            try:
                # Reading, hashing and decompressing run a few pieces ahead, in a thread,
                # while this one parses and digests.
                for piece in read_ahead(iter(partial(reader.read, READ_SIZE), b""), 4):
                    scanner.feed(piece)
                    yield
            except (zstandard.ZstdError, zlib.error, EOFError, TarFormatError):
                _hash_the_rest(hashing)  # a damaged archive is not a truncated one
                raise
            if not scanner.ended:
                _hash_the_rest(hashing)
    except FileNotFoundError:
        raise _error(key, "archive file missing") from None
    except UnsafeMember as error:
        raise HostileArchive(
            f"refused: {error}", policy=key.policy, volume=key.volume, archive=key.id
        ) from None
    except (zstandard.ZstdError, zlib.error, EOFError) as error:
        _check_digest(key, manifest, hashing)
        raise _error(key, f"corrupt archive: cannot decompress ({error})") from None
    except TarFormatError as error:
        _check_digest(key, manifest, hashing)
        raise _error(key, f"corrupt archive: {error}") from None
    _check_digest(key, manifest, hashing)
    try:
        scanner.close()
    except TarFormatError as error:
        raise _error(key, f"truncated archive: {error}") from None


def _hash_the_rest(hashing: HashingReader) -> None:
    """Read the stored bytes after a stream that stopped early, for the right verdict."""
    while hashing.read(READ_SIZE):
        pass


def _check_digest(key: ArchiveKey, manifest: Manifest, hashing: HashingReader) -> None:
    if hashing.size < manifest.size:
        raise _error(key, f"truncated archive: {hashing.size} of {manifest.size} bytes")
    if hashing.size != manifest.size or hashing.hexdigest() != manifest.sha256:
        raise _error(key, "archive SHA-256 mismatch: the stored bytes are not what was written")


def verify_archive(storage: Storage, key: ArchiveKey, manifest: Manifest) -> Verified:
    """Read the whole archive; return it checked if it is intact, safe and matches its
    manifest. Raise OperationError (HostileArchive for unsafe members, MembersDiffer for
    members that are not the manifest's entries) otherwise.

    Members are checked against the entries as they pass, without keeping them: only when
    they differ is the archive read again, to say how.
    """
    expected = (entry.path for entry in manifest.entries)
    differs = False

    def check(member: Member) -> None:
        nonlocal differs
        differs = differs or next(expected, None) != member.path

    # Contents are not digested here: the SHA-256 of the stored bytes vouches for them.
    scanner = TarScanner(include=PathGuard().admit, done=check, digests=False)
    for _ in _stream(storage, key, manifest, scanner):
        pass
    if differs or next(expected, None) is not None:
        members: list[Member] = []
        for _ in _stream(storage, key, manifest, TarScanner(done=members.append)):
            pass
        raise MembersDiffer(key, compare_trees(manifest.entries, members))
    return Verified(key, manifest)


def archive_chunks(storage: Storage, checked: Verified) -> Iterator[bytes]:
    """Yield the checked archive's tar stream, guarded again member by member (the stored
    file could change between the check and now) and re-hashed."""
    pending: list[bytes | memoryview] = []

    def keep(data: bytes | bytearray | memoryview) -> None:
        # Pieces of decompressed data are immutable bytes and are kept as they are; only
        # the scanner's own header buffer (a bytearray it reuses) must be copied.
        pending.append(bytes(data) if isinstance(data, bytearray) else data)

    scanner = TarScanner(emit=keep, include=PathGuard().admit, digests=False)
    for _ in _stream(storage, checked.key, checked.manifest, scanner):
        if pending:
            yield b"".join(pending)
            pending.clear()
    if pending:
        yield b"".join(pending)
