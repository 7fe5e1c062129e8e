"""The content digests a drill compares for a deduplicated archive whose entries carry none
(`volkeep-entries-2`): each regular file's chunk-list digest (`daemon.archive.chunkdigest`),
taken from the archive's recipe on one side and from the bytes read back on the other.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass

import zstandard

from daemon.archive.chunkconfig import ChunkConfigError
from daemon.archive.chunkdigest import ChunkListDigest, with_chunk_digests
from daemon.archive.digest import HashingReader
from daemon.archive.encryption import NoIdentityMatches
from daemon.archive.packs import PackFormatError
from daemon.archive.recipe import RecipeError, marked_lines, member_lines
from daemon.archive.sealing import opener, section_reader
from daemon.archive.tarstream import Member
from daemon.config.keys import EncryptionError
from daemon.errors import KeyMissing
from daemon.repository.chunks import ChunkStore, DamagedChunks, archive_chunks
from daemon.repository.store import archive_error, key_missing
from daemon.repository.verify import StoredArchive

READ_SIZE = 1 << 16


@dataclass(frozen=True)
class RecipeDigests:
    """A deduplicated archive's entries, each regular file with its chunk-list digest from
    the recipe as `sha256`; each iteration reads the manifest's entries and the recipe
    again (a version 3 recipe's pieces too). The recipe's stored bytes are checked against
    the manifest's size and SHA-256 after its last line. Iterating raises OperationError
    (ArchiveFault if the recipe, a piece or the chunk config is damaged or missing, or the
    recipe is not the entries', StorageFailure if the storage fails)."""

    archive: StoredArchive

    def __iter__(self) -> Iterator[Member]:
        repository, key, manifest = (
            self.archive.repository,
            self.archive.key,
            self.archive.manifest,
        )
        if manifest.encryption is not None and self.archive.identities is None:
            raise key_missing(key, manifest.recipients)
        decrypt = (
            opener(self.archive.identities, manifest.recipients)
            if self.archive.identities is not None and manifest.encryption is not None
            else None
        )
        chunks = ChunkStore(repository, key.policy, key.namespace)
        opening = self.archive.identities if manifest.encryption is not None else None
        try:
            with (
                closing(repository.open_archive(key, manifest)) as stored,
                archive_chunks(
                    chunks, opening, manifest.recipients, self.archive.spool_dir
                ) as reads,
            ):
                hashing = HashingReader(stored)
                with section_reader(hashing, decrypt) as plain:
                    text = io.BufferedReader(plain, READ_SIZE)  # type: ignore[type-var]
                    members = member_lines(marked_lines(text, reads.piece))
                    yield from with_chunk_digests(manifest.entries, members)
                while hashing.read(READ_SIZE):
                    pass
        except (RecipeError, PackFormatError, ChunkConfigError, zstandard.ZstdError) as error:
            raise archive_error(key, f"corrupt archive: {error}") from None
        except NoIdentityMatches as error:
            raise archive_error(key, str(error), KeyMissing) from None
        except EncryptionError as error:
            raise archive_error(key, str(error)) from None
        except OSError as error:
            raise repository.failure(error, "cannot read the archive", key) from None
        if (hashing.size, hashing.hexdigest()) != (manifest.size, manifest.sha256):
            raise archive_error(
                key, "archive SHA-256 mismatch: the stored bytes are not what was written"
            )


def read_back_digest(archive: StoredArchive) -> Callable[[], ChunkListDigest]:
    """Given a deduplicated archive, return what makes the digest of a file read back
    (for TarScanner's `digest`): its chunk repository's chunker and chunk id. Raise
    OperationError if the repository's config cannot be read (ArchiveFault if damaged or
    missing, StorageFailure if the storage fails)."""
    repository, key, manifest = archive.repository, archive.key, archive.manifest
    chunks = ChunkStore(repository, key.policy, key.namespace)
    opening = archive.identities if manifest.encryption is not None else None
    try:
        config = chunks.read_config(opening, manifest.recipients)
    except DamagedChunks as error:
        raise archive_error(key, str(error)) from None
    except OSError as error:
        raise repository.failure(error, "cannot read the chunk repository's config", key) from None
    if config is None:
        raise archive_error(key, f"chunk repository {chunks.directory} has no config")

    def digest() -> ChunkListDigest:
        return ChunkListDigest(config.chunker, config.chunk_id)

    return digest
