"""Reading archives back from storage: find one, check it whole, stream it.

`verify_archive` is the check every restore and drill runs before anything is written:
the stored bytes against the manifest's size and SHA-256, every member header against the
path-safety rules, and the members against the manifest's entries.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import zstandard

from daemon.archive.chunkconfig import ChunkConfigError
from daemon.archive.compare import Comparison, compare_trees
from daemon.archive.compression import Readable, decompressing_reader
from daemon.archive.digest import HashingReader
from daemon.archive.encryption import NoIdentityMatches, decrypting_reader
from daemon.archive.manifest import DEDUPLICATED, Manifest
from daemon.archive.packs import PackFormatError
from daemon.archive.recipe import RecipeError
from daemon.archive.safety import PathGuard, UnsafeMember
from daemon.archive.tarstream import Emit, Include, Member, TarFormatError, TarScanner
from daemon.config.keys import EncryptionError, Identities
from daemon.errors import ArchiveFault, HostileArchive, KeyMissing
from daemon.repository.chunks import ChunkStore, recipe_tar
from daemon.repository.layout import ArchiveKey
from daemon.repository.store import Repository, archive_error, key_missing
from daemon.system.readahead import read_ahead

READ_SIZE = 1 << 20
# What damaged stored bytes raise as they are read back.
DAMAGE = (
    zstandard.ZstdError,
    zlib.error,
    EOFError,
    RecipeError,
    PackFormatError,
    ChunkConfigError,
    UnicodeDecodeError,
)


class MembersDiffer(ArchiveFault):
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
class StoredArchive:
    """An archive and what reading it needs: its storage, its manifest, the identities."""

    repository: Repository
    key: ArchiveKey
    manifest: Manifest
    identities: Identities | None = None
    # the state dir: where a comparison that must sort spills, and the chunk index cache
    spool_dir: Path | None = None


def _stream(
    repository: Repository,
    key: ArchiveKey,
    manifest: Manifest,
    identities: Identities | None,
    scanner: TarScanner,
    spool_dir: Path | None = None,
    contents: Include | None = None,
) -> Iterator[None]:
    """Feed the archive's tar stream to the scanner, yielding after each piece; check the
    stored bytes against the manifest at the end. Errors name the archive; the storage
    failing is a StorageFailure naming the storage (never the archive's fault). With
    `contents`, the members whose content it refuses may come with zero bytes for
    content (see `_tar_pieces`)."""
    try:
        with closing(repository.open_archive(key, manifest)) as stored:
            hashing = HashingReader(stored)
            pieces = _tar_pieces(
                repository, key, manifest, identities, hashing, spool_dir, contents
            )
            try:
                # Reading, hashing and decompressing run a few pieces ahead, in a thread,
                # while this one parses and digests.
                for piece in read_ahead(pieces, 4):
                    scanner.feed(piece)
                    yield
            except (*DAMAGE, TarFormatError, EncryptionError):
                _hash_the_rest(hashing)  # a damaged archive is not a truncated one
                raise
            if not scanner.ended:
                _hash_the_rest(hashing)
    except UnsafeMember as error:
        raise HostileArchive(
            f"refused: {error}", policy=key.policy, volume=key.volume, archive=key.id
        ) from None
    except (zstandard.ZstdError, zlib.error, EOFError) as error:
        _check_digest(key, manifest, hashing)
        raise archive_error(key, f"corrupt archive: cannot decompress ({error})") from None
    except (RecipeError, PackFormatError, ChunkConfigError, UnicodeDecodeError) as error:
        _check_digest(key, manifest, hashing)
        raise archive_error(key, f"corrupt archive: {error}") from None
    except TarFormatError as error:
        _check_digest(key, manifest, hashing)
        raise archive_error(key, f"corrupt archive: {error}") from None
    except NoIdentityMatches as error:
        raise archive_error(key, str(error), KeyMissing) from None
    except EncryptionError as error:  # age authenticates every chunk: this is tampering
        raise archive_error(key, str(error)) from None
    except OSError as error:  # the stored bytes could not be read
        raise repository.failure(error, "cannot read the archive", key) from None
    _check_digest(key, manifest, hashing)
    try:
        scanner.close()
    except TarFormatError as error:
        raise archive_error(key, f"truncated archive: {error}") from None


def _tar_pieces(
    repository: Repository,
    key: ArchiveKey,
    manifest: Manifest,
    identities: Identities | None,
    stored: HashingReader,
    state_dir: Path | None,
    contents: Include | None = None,
) -> Iterator[bytes]:
    """Given an archive's stored bytes being read, return its tar stream in pieces: the
    archive file decrypted and decompressed, or, for a deduplicated archive, the tar its
    recipe rebuilds from the chunks (`recipe_tar`), without reading the chunks of the
    members whose content `contents` refuses (they come as zero bytes). Raise
    OperationError if it is encrypted and there is no identity."""
    if manifest.layout != DEDUPLICATED:
        reader = decompressing_reader(
            manifest.compression, _opened(key, manifest, identities, stored)
        )
        return iter(partial(reader.read, READ_SIZE), b"")
    if manifest.encryption is not None and identities is None:
        raise key_missing(key, manifest.recipients)
    chunks = ChunkStore(repository, key.policy, key.namespace)
    opening = identities if manifest.encryption is not None else None
    return recipe_tar(chunks, stored, opening, manifest.recipients, state_dir, contents)


def _opened(
    key: ArchiveKey, manifest: Manifest, identities: Identities | None, stored: HashingReader
) -> Readable:
    """Given the stored bytes, return the compressed stream: decrypted as it passes if the
    archive is encrypted. Raise OperationError if it is and there is no identity."""
    if manifest.encryption is None:
        return stored
    if identities is None:
        raise key_missing(key, manifest.recipients)
    return decrypting_reader(stored, identities, encrypted_to=manifest.recipients)


def _hash_the_rest(hashing: HashingReader) -> None:
    """Read the stored bytes after a stream that stopped early, for the right verdict."""
    while hashing.read(READ_SIZE):
        pass


def _check_digest(key: ArchiveKey, manifest: Manifest, hashing: HashingReader) -> None:
    if hashing.size < manifest.size:
        raise archive_error(key, f"truncated archive: {hashing.size} of {manifest.size} bytes")
    if hashing.size != manifest.size or hashing.hexdigest() != manifest.sha256:
        raise archive_error(
            key, "archive SHA-256 mismatch: the stored bytes are not what was written"
        )


def _checked(
    archive: StoredArchive,
    *,
    emit: Emit | None = None,
    include: Include | None = None,
    contents: Include | None = None,
    done: Callable[[Member], None] | None = None,
) -> Iterator[None]:
    """Read the archive once, yielding after each piece: every member header against the
    path-safety rules and, in order, against the manifest's entries; the stored bytes
    against the manifest's size and SHA-256 at the end. Members `include` refuses are
    checked but not emitted, and so are those `contents` refuses: their chunks are not even
    read; `done` is called for each emitted member once its bytes have passed. Raise
    OperationError (HostileArchive, MembersDiffer) at the first fault.

    Members are checked against the entries as they pass, without keeping them: only when
    they differ is the archive read again, to say how.
    """
    repository, key, manifest, identities = (
        archive.repository,
        archive.key,
        archive.manifest,
        archive.identities,
    )
    entries = iter(manifest.entries)  # streamed beside the archive
    expected = (entry.path for entry in entries)
    guard = PathGuard()
    differs = False

    def admit(member: Member) -> bool:
        nonlocal differs
        guard.check(member)
        differs = differs or next(expected, None) != member.path
        if contents is not None and not contents(member):
            return False  # its content is not read: zero bytes stand for it
        return include is None or include(member)

    # Contents are not digested here: the SHA-256 of the stored bytes vouches for them.
    scanner = TarScanner(emit=emit, include=admit, done=done, digests=False)
    try:
        yield from _stream(
            repository, key, manifest, identities, scanner, archive.spool_dir, contents
        )
        differs = differs or next(expected, None) is not None
    finally:
        close = getattr(entries, "close", None)
        if close is not None:
            close()
    if differs:
        comparison = compare_trees(
            manifest.entries,
            _ArchiveMembers(archive),
            hard_links=manifest.hardlinks != 0,
            spool_dir=archive.spool_dir,
        )
        raise MembersDiffer(key, comparison)


@dataclass(frozen=True)
class _ArchiveMembers:
    """The archive's members, read again from the storage at each iteration."""

    archive: StoredArchive

    def __iter__(self) -> Iterator[Member]:
        archive = self.archive
        members: list[Member] = []
        # as the entries do: a deduplicated archive's may carry no content digest
        scanner = TarScanner(done=members.append, digests=archive.manifest.content_digests)
        stream = _stream(
            archive.repository,
            archive.key,
            archive.manifest,
            archive.identities,
            scanner,
            archive.spool_dir,
        )
        for _ in stream:
            yield from members
            members.clear()


def verify_archive(archive: StoredArchive) -> None:
    """Read the whole archive and check it (see `_checked`) without writing anything.
    Raise OperationError if it is damaged, unsafe or does not match its manifest."""
    for _ in _checked(archive):
        pass


def archive_chunks(
    archive: StoredArchive, include: Include | None = None, contents: Include | None = None
) -> Iterator[bytes]:
    """Yield the archive's tar stream (the members both `include` and `contents` keep; the
    chunks of the members `contents` refuses are not even read), checked as it passes (see
    `_checked`): a fault raises before the faulty member's bytes are yielded, and the
    SHA-256 of the whole is checked after the last piece, so a consumer must treat what it
    received as unproven until the iterator is exhausted."""
    for _, piece in routed_archive_chunks(archive, lambda member: 0, include, contents):
        yield piece


Route = Callable[[Member | None], int]


def routed_archive_chunks(
    archive: StoredArchive,
    route: Route,
    include: Include | None = None,
    contents: Include | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield the archive's tar stream as `archive_chunks` does, cut at member boundaries into
    several streams: pieces (stream, bytes), where `route(member)` names the stream of a
    kept member's bytes (its extended headers, header, data and padding) and `route(None)`
    that of the bytes outside any member (global headers, the end marker). Each stream's
    pieces come in the archive's order; the checks run once, on the whole stream."""
    pending: dict[int, list[bytes | memoryview]] = {}
    outside = current = route(None)

    def admit(member: Member) -> bool:
        nonlocal current
        kept = include is None or include(member)
        current = route(member) if kept else outside
        return kept

    def finished(member: Member) -> None:
        nonlocal current
        current = outside

    def keep(data: bytes | bytearray | memoryview) -> None:
        # Pieces of decompressed data are immutable bytes and are kept as they are; only
        # the scanner's own header buffer (a bytearray it reuses) must be copied.
        piece = bytes(data) if isinstance(data, bytearray) else data
        pending.setdefault(current, []).append(piece)

    checking = _checked(archive, emit=keep, include=admit, contents=contents, done=finished)
    for _ in checking:
        yield from _joined(pending)
    yield from _joined(pending)


def _joined(pending: dict[int, list[bytes | memoryview]]) -> Iterator[tuple[int, bytes]]:
    """Yield each stream's pending pieces joined into one, and forget them."""
    for stream, pieces in pending.items():
        yield stream, b"".join(pieces)
    pending.clear()
