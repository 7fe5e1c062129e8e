"""Sealed manifest entries: an encrypted archive's per-object entries (every path and
digest of the volume) are stored zstd-compressed and age-encrypted to the archive's own
recipients, inside its manifest; the manifest's summary stays clear (SPEC §4)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import zstandard

from daemon.archive.encryption import (
    Identities,
    Recipient,
    decrypting_reader,
    encrypting_writer,
)
from daemon.archive.manifest import Unseal


def seal(lines: bytes, recipients: Sequence[Recipient]) -> bytes:
    """Given the entries as JSON lines, return them sealed to the recipients."""
    sealed = io.BytesIO()
    with encrypting_writer(sealed, recipients) as writer:
        writer.write(zstandard.ZstdCompressor(level=10).compress(lines))
        writer.finish()
    return sealed.getvalue()


def unsealer(identities: Identities, encrypted_to: Sequence[str]) -> Unseal:
    """Given identities, return the function that opens sealed entries with them. It raises
    EncryptionError (NoIdentityMatches, ArchiveModified) when they cannot be opened."""

    def unseal(sealed: bytes) -> bytes:
        with decrypting_reader(io.BytesIO(sealed), identities, encrypted_to=encrypted_to) as plain:
            return zstandard.ZstdDecompressor().decompress(plain.read(), max_output_size=1 << 34)

    return unseal
