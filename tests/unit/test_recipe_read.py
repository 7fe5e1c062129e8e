"""Reading a recipe back for a partial restore (daemon.archive.recipe.without_contents)."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from daemon.archive.chunking import ChunkerParameters
from daemon.archive.recipe import (
    ChunkStep,
    EndStep,
    MemberMark,
    RecipeBuilder,
    RecipeError,
    read_recipe,
    tar_pieces,
    without_contents,
)
from daemon.archive.tarstream import Member


def two_files_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, seed in (("kept/a.bin", b"a"), ("x" * 120 + "/b.bin", b"b")):  # b: PAX path
            data = hashlib.shake_256(seed).digest(300_000)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def recipe_of(tar: bytes) -> tuple[list[str], dict[str, bytes]]:
    chunks: dict[str, bytes] = {}

    def store(chunk: memoryview) -> str:
        chunk_id = hashlib.sha256(chunk).hexdigest()
        chunks[chunk_id] = bytes(chunk)
        return chunk_id

    out = io.BytesIO()
    builder = RecipeBuilder(ChunkerParameters(), store, out, marks=lambda _: MemberMark(1, 2))
    builder.feed(tar)
    builder.finish()
    return out.getvalue().decode().splitlines(keepends=True), chunks


def test_the_content_of_members_not_wanted_is_zeros_and_none_of_their_chunks_is_read() -> None:
    tar = two_files_tar()
    lines, chunks = recipe_of(tar)
    asked: list[str] = []

    def chunk(chunk_id: str) -> bytes:
        asked.append(chunk_id)
        return chunks[chunk_id]

    def wanted(member: Member) -> bool:
        return member.path.startswith("kept/")

    steps = list(without_contents(read_recipe(iter(lines)), wanted))
    rebuilt = b"".join(tar_pieces(iter(steps), chunk))
    assert len(rebuilt) == len(tar)
    with tarfile.open(fileobj=io.BytesIO(rebuilt)) as archive:
        names = archive.getnames()
        kept = archive.extractfile(names[0])
        skipped = archive.extractfile(names[1])
        assert kept is not None and skipped is not None
        assert kept.read() == hashlib.shake_256(b"a").digest(300_000)
        assert skipped.read() == bytes(300_000)
    # only the kept member's chunks were read; the end line's SHA-256 is not checked
    every_chunk = {s.chunk_id for s in read_recipe(iter(lines)) if isinstance(s, ChunkStep)}
    assert asked and set(asked) < every_chunk
    assert isinstance(steps[-1], EndStep) and steps[-1].sha256 is None


def test_with_every_member_wanted_the_steps_are_the_recipes() -> None:
    lines, _ = recipe_of(two_files_tar())
    assert list(without_contents(read_recipe(iter(lines)), lambda _: True)) == list(
        read_recipe(iter(lines))
    )


def test_members_all_refused_read_no_chunk_at_all() -> None:
    lines, _ = recipe_of(two_files_tar())
    steps = without_contents(read_recipe(iter(lines)), lambda member: False)
    assert not any(isinstance(step, ChunkStep) for step in steps)


def test_a_recipe_read_without_the_digest_rebuilds_the_tar_and_refuses_a_recorded_one() -> None:
    tar = two_files_tar()
    lines, chunks = recipe_of(tar)  # version 2: the end line records no SHA-256
    assert b"".join(tar_pieces(read_recipe(iter(lines)), chunks.__getitem__, digested=False)) == tar
    # an end line that records one, read without taking it: refused, not taken on trust
    claimed = [*lines[:-1], lines[-1].replace(" -", " " + hashlib.sha256(tar).hexdigest())]
    steps = read_recipe(iter(claimed))
    with pytest.raises(RecipeError, match="SHA-256"):
        b"".join(tar_pieces(steps, chunks.__getitem__, digested=False))
