"""A chunk repository's config record: how its chunks are cut, named and packed
(docs/format-dedup.md, "The config record").

A chunk's id is BLAKE3 in keyed mode over the chunk's plain bytes, with a secret key of 32
random bytes drawn when the repository is created: without the key, a store (or anyone
reading it) cannot tell whether it holds a known file by hashing that file. The record
holding the key is encrypted to the policy's age recipients when the policy encrypts, and
is plain JSON otherwise (the chunks are then in clear anyway).

The record is written once, before any pack, and never changed: every id in the
repository depends on its key and chunker parameters.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3

from daemon.archive.chunking import ChunkerParameters
from daemon.archive.encryption import decrypting_reader, encrypting_writer
from daemon.config.keys import Identities, Recipient

FORMAT = "volkeep-chunks"
VERSION = 1
KEY_SIZE = 32
PACK_SIZE = 8 << 20  # a pack is closed once its chunks reach this many stored bytes
CHUNK_LEVEL = 3  # zstd level of each chunk; the same as whole archives
AGE_MAGIC = b"age-encryption.org/v1\n"
CONFIG_KEY = "config"  # the record's key under the chunk repository's directory


class ChunkConfigError(ValueError):
    """A config record that cannot be read: damaged, of an unknown version, or sealed
    without identities to open it."""


@dataclass(frozen=True)
class ChunkConfig:
    """What a repository's chunks depend on. `key` never reaches a log line or a repr."""

    key: bytes = field(repr=False)
    chunker: ChunkerParameters = field(default_factory=ChunkerParameters)
    pack_size: int = PACK_SIZE
    chunk_level: int = CHUNK_LEVEL

    @classmethod
    def new(cls) -> ChunkConfig:
        """Return the config of a new repository: a fresh random key, the default
        parameters."""
        return cls(secrets.token_bytes(KEY_SIZE))

    def chunk_id(self, data: bytes | bytearray | memoryview) -> str:
        """Given a chunk's plain bytes, return its id: keyed BLAKE3, 64 hex digits."""
        return blake3.blake3(data, key=self.key).hexdigest()

    def to_json(self) -> bytes:
        document = {
            "format": FORMAT,
            "version": VERSION,
            "chunker": self.chunker.to_json(),
            "chunk_id": {"algorithm": "blake3-keyed", "key": self.key.hex()},
            "chunk_compression": {"algorithm": "zstd", "level": self.chunk_level},
            "pack_size": self.pack_size,
        }
        return json.dumps(document, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> ChunkConfig:
        """Given a config record in clear, return it. Raise ChunkConfigError."""
        try:
            document = json.loads(raw)
            if document.get("format") != FORMAT:
                raise ValueError("not a volkeep chunk repository config")
            if document.get("version") != VERSION:
                raise ValueError(f"version {document.get('version')!r}, this volkeep reads 1")
            chunk_id = document["chunk_id"]
            if chunk_id.get("algorithm") != "blake3-keyed":
                raise ValueError(f"unknown chunk id {chunk_id.get('algorithm')!r}")
            key = bytes.fromhex(chunk_id["key"])
            if len(key) != KEY_SIZE:
                raise ValueError(f"a chunk id key of {len(key)} bytes")
            compression = document["chunk_compression"]
            if compression.get("algorithm") != "zstd":
                raise ValueError(f"unknown chunk compression {compression.get('algorithm')!r}")
            return cls(
                key,
                ChunkerParameters.from_json(document["chunker"]),
                int(document["pack_size"]),
                int(compression["level"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ChunkConfigError(f"unreadable chunk repository config: {error}") from None


def seal_config(config: ChunkConfig, recipients: Sequence[Recipient]) -> bytes:
    """Given a config and the policy's recipients (none: the policy does not encrypt),
    return the record's stored bytes: the JSON, as an age file if there are recipients."""
    if not recipients:
        return config.to_json()
    stored = io.BytesIO()
    writer = encrypting_writer(stored, recipients)
    try:
        writer.write(config.to_json())
        writer.finish()
    finally:
        writer.close()
    return stored.getvalue()


def open_config(
    stored: bytes, identities: Identities | None, encrypted_to: Sequence[str] = ()
) -> ChunkConfig:
    """Given a config record's stored bytes (and the identities if it is sealed), return
    the config. Raise ChunkConfigError; EncryptionError if the identities cannot open it."""
    if not stored.startswith(AGE_MAGIC):
        return ChunkConfig.from_json(stored)
    if identities is None:
        raise ChunkConfigError("the chunk repository config is encrypted: it needs an identity")
    with decrypting_reader(io.BytesIO(stored), identities, encrypted_to=encrypted_to) as plain:
        return ChunkConfig.from_json(plain.read())
