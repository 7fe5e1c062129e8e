"""A chunk repository in a local directory, written by the dedup library as a backup will
write it (docs/format-dedup.md): the config, packs, the index, and a recipe file."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

from daemon.archive.chunkconfig import CONFIG_KEY, ChunkConfig, seal_config
from daemon.archive.packs import ChunkWriter, SealedPack, index_key, pack_key
from daemon.archive.recipe import MemberMark, RecipeBuilder
from daemon.archive.spool import SpooledSection
from daemon.archive.tarstream import Member
from daemon.config.keys import Recipient


def unlisted(member: Member) -> MemberMark:
    return MemberMark(None, None)


def write_blob(path: Path, data: bytes | bytearray | Iterable[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        for piece in [data] if isinstance(data, bytes | bytearray) else data:
            file.write(piece)


def store_tar(
    tar: bytes,
    directory: Path,
    recipe: Path,
    config: ChunkConfig,
    recipients: Sequence[Recipient] = (),
    known: set[str] | None = None,
    piece_size: int = 100_000,
    version: int = 1,
) -> ChunkWriter:
    """Store a tar as a backup would, fed in pieces of `piece_size`: the config (if
    missing), its new chunks in packs under `directory`, the index, and its recipe in
    `recipe`, of that version (2: members marked, as unlisted; 3: marked, and its lines in
    pieces); return the writer (its counts)."""
    if not (directory / CONFIG_KEY).exists():
        write_blob(directory / CONFIG_KEY, seal_config(config, recipients))

    def store_pack(pack: SealedPack) -> None:
        write_blob(directory / pack_key(pack.name), pack.data)

    writer = ChunkWriter(config, recipients, set() if known is None else known, store_pack)
    with writer.index, SpooledSection(recipients) as section:
        marks = None if version == 1 else unlisted
        pieces = partial(writer.add, piece=True) if version == 3 else None
        builder = RecipeBuilder(config.chunker, writer.add, section, marks, pieces)
        stream = io.BytesIO(tar)
        while piece := stream.read(piece_size):
            builder.feed(piece)
        builder.finish()
        section.finish()
        writer.finish()
        write_blob(directory / index_key(writer.index.sha256), writer.index.stored())
        write_blob(recipe, section.stored())
    return writer
