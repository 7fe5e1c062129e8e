"""A file's chunk-list digest (docs/format-dedup.md, "How a drill proves content"): taken
from a recipe on one side and from the bytes read back on the other, it is the same for the
same content and differs for one byte changed."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.chunkdigest import ChunkListDigest, chunk_list_digest, with_chunk_digests
from daemon.archive.recipe import MemberMark, RecipeBuilder, RecipeError, member_lines
from daemon.archive.tarstream import Member, TarScanner
from tests.unit.test_recipe import sample_tar

CONFIG = ChunkConfig(bytes(range(32)))


def recipe_of(tar: bytes) -> tuple[bytes, list[Member]]:
    """Given a tar, return its version 2 recipe (chunk ids under CONFIG) and its members
    as a backup's entries hold them (no content digest)."""
    recipe = io.BytesIO()
    builder = RecipeBuilder(
        CONFIG.chunker, CONFIG.chunk_id, recipe, marks=lambda _: MemberMark(None, None)
    )
    for start in range(0, len(tar), 100_000):
        builder.feed(tar[start : start + 100_000])
    builder.finish()
    entries: list[Member] = []
    scanner = TarScanner(done=entries.append, digests=False)
    scanner.feed(tar)
    scanner.close()
    return recipe.getvalue(), entries


def from_recipe(tar: bytes) -> dict[str, str | None]:
    recipe, entries = recipe_of(tar)
    members = member_lines(io.BytesIO(recipe))
    return {entry.path: entry.sha256 for entry in with_chunk_digests(entries, members)}


def read_back(tar: bytes, piece: int = 7_777) -> dict[str, str | None]:
    """The digests a drill's read-back computes, the tar fed in odd pieces."""
    members: list[Member] = []
    scanner = TarScanner(
        done=members.append, digest=lambda: ChunkListDigest(CONFIG.chunker, CONFIG.chunk_id)
    )
    for start in range(0, len(tar), piece):
        scanner.feed(tar[start : start + piece])
    scanner.close()
    return {member.path: member.sha256 for member in members}


def test_the_recipe_and_the_bytes_read_back_give_each_file_the_same_digest() -> None:
    tar = sample_tar(tarfile.PAX_FORMAT)

    expected = from_recipe(tar)

    assert expected == read_back(tar) == read_back(tar, piece=1 << 20)
    assert expected["large.bin"] != expected["zeros"]
    assert expected["empty"] == hashlib.sha256().hexdigest()  # no chunk
    assert expected["."] is None and expected["link"] is None  # no content


def test_one_byte_changed_changes_that_file_s_digest_only() -> None:
    tar = sample_tar(tarfile.GNU_FORMAT)
    where = tar.index(hashlib.shake_256(b"one").digest(3 << 20)[:64]) + (2 << 20)
    changed = tar[:where] + bytes([tar[where] ^ 1]) + tar[where + 1 :]

    expected, found = from_recipe(tar), read_back(changed)

    assert [path for path in expected if expected[path] != found[path]] == ["large.bin"]


def test_the_digest_is_sha256_of_the_chunk_ids() -> None:
    recipe, _ = recipe_of(sample_tar(tarfile.PAX_FORMAT))
    ids = [line.split()[1].decode() for line in recipe.splitlines() if line.startswith(b"C ")]

    assert chunk_list_digest(ids) == hashlib.sha256(b"".join(map(bytes.fromhex, ids))).hexdigest()


@pytest.mark.parametrize("change", [lambda e: e[:-1], lambda e: [*e, e[-1]]], ids=["fewer", "more"])
def test_a_recipe_whose_members_are_not_the_entries_is_refused(change) -> None:
    recipe, entries = recipe_of(sample_tar(tarfile.PAX_FORMAT))

    with pytest.raises(RecipeError, match="members than the manifest has entries"):
        list(with_chunk_digests(change(entries), member_lines(io.BytesIO(recipe))))
