"""A version 3 recipe: a version 2 recipe's lines kept in pieces, and the recipe file says
which bytes of which pieces to splice (docs/format-dedup.md, "Version 3: the recipe spliced
from pieces")."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterator

import pytest

from daemon.actions.unchanged import RecipeLines
from daemon.archive import recipe as recipe_module
from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.recipe import (
    SPLICED_HEADER,
    MemberMark,
    PieceRef,
    RecipeBuilder,
    RecipeError,
    member_lines,
    read_recipe,
    rebuild_tar,
    write_spliced,
)
from daemon.archive.tarstream import Member

CONFIG = ChunkConfig.new()


def small_files_tar(count: int, changed: set[int] = frozenset(), seed: bytes = b"v3") -> bytes:
    """A tar of `count` small files in directories of 100; those in `changed` differ."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for number in range(count):
            data = hashlib.shake_256(seed + b"%d" % number).digest(200 + number % 300)
            if number in changed:
                data = b"changed " + data
            info = tarfile.TarInfo(f"./d{number // 100}/file-{number}")
            info.size, info.mtime = len(data), 1_700_000_000 + number
            archive.addfile(info, io.BytesIO(data))
    return stream.getvalue()


def mark(member: Member) -> MemberMark:
    """An M line as a listing gives it: the inode and ctime, here from the path and size."""
    number = int(member.path.rsplit("-", 1)[1]) if "-" in member.path else 0
    return MemberMark(1000 + number, 1_700_000_000 + member.size)


class Store:
    """Chunks and pieces by id, in memory; which pieces were stored, in order."""

    def __init__(self) -> None:
        self.chunks: dict[str, bytes] = {}
        self.pieces: list[str] = []

    def chunk(self, data: memoryview | bytes) -> str:
        chunk_id = CONFIG.chunk_id(data)
        self.chunks[chunk_id] = bytes(data)
        return chunk_id

    def piece(self, data: bytes) -> str:
        self.pieces.append(chunk_id := self.chunk(data))
        return chunk_id

    def write(self, tar: bytes, version: int = 3) -> bytes:
        recipe = io.BytesIO()
        builder = RecipeBuilder(
            CONFIG.chunker, self.chunk, recipe, mark, self.piece if version == 3 else None
        )
        builder.feed(tar)
        builder.finish()
        return recipe.getvalue()

    def spelled(self, recipe: bytes) -> bytes:
        """The version 2 text a version 3 recipe stands for."""
        out = io.BytesIO()
        text = io.BytesIO(recipe)
        assert text.readline() == SPLICED_HEADER.encode()
        write_spliced(text, self.chunks.__getitem__, out)
        return out.getvalue()

    def rebuild(self, recipe: bytes) -> bytes:
        out = io.BytesIO()
        steps = read_recipe(lines(recipe), self.chunks.__getitem__)
        rebuild_tar(steps, self.chunks.__getitem__, out)
        return out.getvalue()


def lines(recipe: bytes) -> Iterator[str]:
    return iter(io.StringIO(recipe.decode("ascii"), newline="\n"))


def test_a_version_3_recipe_spells_the_version_2_recipe_byte_for_byte_and_rebuilds_the_tar():
    tar = small_files_tar(3000)
    store = Store()
    recipe = store.write(tar)
    assert recipe.startswith(SPLICED_HEADER.encode())
    kinds = {line[:1] for line in recipe.splitlines()[1:]}
    assert kinds == {b"P", b"S", b"T"}  # every line of the tar in pieces
    assert store.spelled(recipe) == Store().write(tar, version=2)
    assert store.rebuild(recipe) == tar
    sizes = [len(store.chunks[piece]) for piece in store.pieces]
    assert len(sizes) > 10
    assert all(size < recipe_module.PIECE_MAX + 1024 for size in sizes)
    assert all(size >= recipe_module.PIECE_MIN for size in sizes[:-1])


def test_pieces_end_at_the_same_members_so_a_changed_member_changes_only_its_piece():
    store = Store()
    store.write(small_files_tar(3000))
    before = set(store.pieces)
    store.pieces.clear()
    store.write(small_files_tar(3000, changed={1500}))
    after = store.pieces
    assert len(set(after) - before) == 1, "only the piece that holds the changed file is new"
    assert len(after) > 10


def test_members_taken_by_their_pieces_are_spliced_not_stored_again():
    store = Store()
    tar = small_files_tar(3000)
    first = store.write(tar)
    text = store.spelled(first)
    # where each S line's bytes are in the spelled text, as a backup's PreviousArchive has it
    found = write_spliced(
        io.BytesIO(first.split(b"\n", 1)[1]), store.chunks.__getitem__, io.BytesIO()
    )
    members = list(member_lines(io.BytesIO(text)))
    store.pieces.clear()
    recipe = io.BytesIO()
    builder = RecipeBuilder(CONFIG.chunker, store.chunk, recipe, mark, store.piece)
    for lines_of in members:  # member by member, then the end blocks
        offset, ref = next(
            (offset, ref) for offset, ref in found
            if offset <= lines_of.start < offset + ref.stop - ref.start
        )  # fmt: skip
        assert lines_of.stop <= offset + ref.stop - ref.start, "small members: in one piece"
        skip = ref.start - offset
        taken = ref._replace(start=lines_of.start + skip, stop=lines_of.stop + skip)
        builder.take_pieces([taken], lines_of.tar_size)
    builder.finish()
    second = recipe.getvalue()
    assert store.pieces == [], "nothing new to store"
    assert second.count(b"\nS ") == len(found) < len(members) / 50, "one S line a piece"
    assert len(second) < 100 * len(found)
    assert store.spelled(second) == text
    assert store.rebuild(second) == tar


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: re.sub(rb"\nS (\d+) 0 \d+\n", rb"\nS \1 0 1\n", text, count=1), "whole"),
        (lambda text: re.sub(rb"\nS (\d+) 0 ", rb"\nS \1 1 ", text, count=1), "whole lines"),
        (lambda text: re.sub(rb"\nS \d+ ", b"\nS 999 ", text, count=1), "damaged recipe line"),
        (lambda text: re.sub(rb"\nP ([0-9a-f]+) (\d+)", rb"\nP \1 7", text, count=1), "length"),
        (lambda text: text.replace(b"\nP ", b"\nP x", 1), "damaged recipe line"),
    ],
    ids=["cut inside a line", "starts inside a line", "undeclared", "length", "damaged P"],
)
def test_a_damaged_version_3_recipe_is_refused(edit, message):
    store = Store()
    recipe = store.write(small_files_tar(300))
    damaged = edit(recipe)
    assert damaged != recipe
    with pytest.raises(RecipeError, match=message):
        store.rebuild(damaged)


def test_a_piece_that_holds_an_end_line_is_refused():
    store = Store()
    tar = small_files_tar(10)
    text = store.write(tar, version=2).split(b"\n", 1)[1]  # every line, the T line too
    piece = store.chunk(text)
    recipe = SPLICED_HEADER.encode() + b"P %s %d\nS 0 0 %d\n" % (
        piece.encode(),
        len(text),
        len(text),
    )
    with pytest.raises(RecipeError, match="end line"):
        store.rebuild(recipe + b"T %d -\n" % len(tar))


def test_a_version_3_recipe_read_without_its_pieces_is_refused():
    store = Store()
    recipe = store.write(small_files_tar(10))
    with pytest.raises(RecipeError, match="version 3 is read with its pieces"):
        list(read_recipe(lines(recipe)))


def test_a_member_longer_than_a_piece_is_cut_at_a_line_end():
    store = Store()
    parameters = recipe_module.ChunkerParameters(min_size=64, avg_size=256, max_size=1024)
    data = hashlib.shake_256(b"long").digest(6 << 20)  # some 25,000 chunk lines
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("./big")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    tar = stream.getvalue()
    recipe = io.BytesIO()
    builder = RecipeBuilder(parameters, store.chunk, recipe, mark, store.piece)
    builder.feed(tar)
    builder.finish()
    pieces = [store.chunks[piece] for piece in store.pieces]
    assert len(pieces) >= 4
    for piece in pieces[:-1]:
        assert piece.endswith(b"\n")
        end = len(piece) - 1
        assert end >= recipe_module.PIECE_MAX - 1
        assert b"\n" not in piece[recipe_module.PIECE_MAX - 1 : end], "the first line end after"
    assert store.rebuild(recipe.getvalue()) == tar


class Taken:
    """What a backup's RecipeLines hands its chunked archive: lines, or pieces' bytes."""

    def __init__(self) -> None:
        self.lines = b""
        self.pieces: list[PieceRef] = []

    def take_lines(self, text: bytes, tar_size: int) -> None:
        self.lines += text

    def take_pieces(self, spliced: list[PieceRef], tar_size: int) -> None:
        self.pieces += spliced


@pytest.mark.parametrize("held", ["all", "none"])
def test_members_taken_are_spliced_from_held_pieces_and_copied_from_any_other(held):
    store = Store()
    first = store.write(small_files_tar(3000))
    text = io.BytesIO()
    found = write_spliced(io.BytesIO(first.split(b"\n", 1)[1]), store.chunks.__getitem__, text)
    members = list(member_lines(io.BytesIO(text.getvalue())))
    taken = Taken()
    pieces = {ref.chunk_id for _, ref in found} if held == "all" else set()
    text.seek(0)
    lines = RecipeLines(text, members[-1], taken, found, pieces)
    wanted = members[10:1500] + members[1501:-1]  # one member in the middle read again
    for member in wanted:
        lines.take(member.start, member.stop, member.tar_size)
    lines.take_trailer()
    expected = b"".join(text.getvalue()[m.start : m.stop] for m in [*wanted, members[-1]])
    if held == "all":
        assert taken.lines == b""
        spelled = b"".join(store.chunks[ref.chunk_id][ref.start : ref.stop] for ref in taken.pieces)
        assert spelled == expected
    else:
        assert taken.pieces == []
        assert taken.lines == expected
