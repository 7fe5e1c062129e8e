"""A regular file's content identity in a deduplicated repository: the SHA-256 of its
chunk ids (docs/format-dedup.md, "How a drill proves content").

A deduplicated archive's entries (`volkeep-entries-2`) carry no content digest: its recipe
names each file's content as a list of chunks, each by its id (keyed BLAKE3 of the plain
chunk), and those ids are checked against the chunks' bytes on every read. A drill
compares one digest per file, so both sides compute the same one:

- the archive's side, from the recipe: the chunk ids of each member's `C` lines
  (`with_chunk_digests`);
- the side read back, from the file's bytes: cut with the repository's chunker parameters
  and each chunk hashed with its keyed hash (`ChunkListDigest`), exactly as a backup cuts
  and names them.

The digest is SHA-256 over the chunk ids' 32 raw bytes each, in order (an empty file has no
chunk: the SHA-256 of nothing). Two files with the same digest have the same chunk ids in
the same order, so the same bytes (short of a BLAKE3 collision under a secret key). One
byte changed changes the id of the chunk that holds it, hence the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

from daemon.archive.chunking import ChunkerParameters, FileChunker
from daemon.archive.recipe import MemberLines, RecipeError
from daemon.archive.tarstream import Member


def chunk_list_digest(chunk_ids: Iterable[str]) -> str:
    """Given a file's chunk ids (hex) in order, return its content identity (hex)."""
    digest = hashlib.sha256()
    for chunk_id in chunk_ids:
        digest.update(bytes.fromhex(chunk_id))
    return digest.hexdigest()


class ChunkListDigest:
    """A file's content identity taken as its bytes are fed (`update`, as hashlib's
    objects take them, so that a TarScanner computes it as it would a SHA-256): the
    content cut with `parameters`, each chunk named by `chunk_id`."""

    def __init__(
        self, parameters: ChunkerParameters, chunk_id: Callable[[memoryview], str]
    ) -> None:
        self._chunk_id = chunk_id
        self._digest = hashlib.sha256()
        self._chunker = FileChunker(parameters, self._add)

    def _add(self, chunk: memoryview) -> None:
        self._digest.update(bytes.fromhex(self._chunk_id(chunk)))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._chunker.feed(data)

    def hexdigest(self) -> str:
        """Return the identity of the content fed; call it once, after the last byte."""
        self._chunker.finish()
        return self._digest.hexdigest()


def with_chunk_digests(
    entries: Iterable[Member], members: Iterator[MemberLines]
) -> Iterator[Member]:
    """Given an archive's entries and its version 2 recipe's members (`member_lines`), both
    in the tar's order, yield the entries with each regular file's `sha256` set to its
    content identity (`chunk_list_digest` of its chunk ids). Raise RecipeError if the
    recipe's members are not the entries (another count, chunks for a member that holds
    no content)."""
    for entry in entries:
        lines = next(members, None)
        if lines is None or lines.mark is None:
            raise RecipeError("the recipe has fewer members than the manifest has entries")
        if entry.type == "file":
            entry.sha256 = chunk_list_digest(lines.chunk_ids)  # each entry read is new
        elif lines.chunk_ids:
            raise RecipeError(f"chunks in the recipe for {entry.type} {entry.path!r}")
        yield entry
    rest = next(members, None)
    if rest is None or rest.mark is not None:
        raise RecipeError("the recipe has more members than the manifest has entries")
