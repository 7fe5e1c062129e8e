"""An archive's recipe rebuilds its tar byte for byte (docs/format-dedup.md, "The recipe")."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator

import pytest

from daemon.archive import recipe as recipe_module
from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.chunking import ChunkerParameters
from daemon.archive.packs import ChunkWriter, SealedPack, open_pack
from daemon.archive.recipe import (
    ChunkStep,
    EndStep,
    MemberMark,
    RecipeBuilder,
    RecipeError,
    member_lines,
    read_recipe,
    rebuild_tar,
)
from daemon.archive.tarstream import Member, TarFormatError, TarScanner


def member(archive: tarfile.TarFile, name: str, data: bytes | None = None, **fields) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = fields.pop("mtime", 1_700_000_000)
    for key, value in fields.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    archive.addfile(info, io.BytesIO(data) if data is not None else None)


def sample_tar(tar_format: int, seed: bytes = b"one") -> bytes:
    """A tar of every kind of member a volume holds, in the given tarfile format."""
    random = hashlib.shake_256(seed)
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tar_format) as archive:
        member(archive, ".", type=tarfile.DIRTYPE, mode=0o755)
        member(archive, "./empty", b"")
        member(archive, "./small.txt", b"hello\n")
        member(archive, "./large.bin", random.digest(3 << 20))
        member(archive, "./zeros", bytes(300_000))
        long_name = "./" + "/".join(["d" * 60] * 5) + "/" + "f" * 120
        member(archive, long_name, b"long name\n")
        member(archive, "./hard", type=tarfile.LNKTYPE, linkname="./small.txt")
        member(archive, "./link", type=tarfile.SYMTYPE, linkname="../" * 30 + "x" * 120)
        member(archive, "./ünïcødé-日本", b"names\n", uid=999, gid=999, uname="", gname="")
        for number in range(50):
            member(archive, f"./many/{number}", random.digest(5000 + number)[-number - 1 :])
    return stream.getvalue()


class Repository:
    """Packs in memory, and the ChunkWriter and recipe of each tar stored."""

    def __init__(self, config: ChunkConfig | None = None) -> None:
        self.config = config or ChunkConfig.new()
        self.packs: dict[str, bytes] = {}
        self.known: set[str] = set()
        self.located: dict[str, tuple[str, int]] = {}

    def store(self, tar: bytes, piece: int = 65_536) -> tuple[bytes, ChunkWriter]:
        """Store a tar fed in pieces of `piece` bytes; return its recipe in clear."""
        recipe = io.BytesIO()

        def keep(pack: SealedPack) -> None:
            self.packs[pack.name] = pack.data
            for number, entry in enumerate(pack.entries):
                self.located[entry.chunk_id] = (pack.name, number)

        writer = ChunkWriter(self.config, [], self.known, keep)
        builder = RecipeBuilder(self.config.chunker, writer.add, recipe)
        for start in range(0, len(tar), piece):
            builder.feed(tar[start : start + piece])
        builder.finish()
        writer.finish()
        writer.close()
        return recipe.getvalue(), writer

    def chunk(self, chunk_id: str) -> bytes:
        name, number = self.located[chunk_id]
        pack = open_pack(name, self.packs[name], None)
        return pack.chunk(pack.entries[number])

    def rebuild(self, recipe: bytes) -> bytes:
        out = io.BytesIO()
        rebuild_tar(read_recipe(lines(recipe)), self.chunk, out)
        return out.getvalue()


def lines(recipe: bytes) -> Iterator[str]:
    return iter(io.StringIO(recipe.decode("ascii"), newline="\n"))


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("piece", [511, 65_536, 1 << 22])
def test_a_tar_is_rebuilt_byte_for_byte_from_its_recipe(tar_format, piece):
    tar = sample_tar(tar_format)
    repository = Repository()
    recipe, _ = repository.store(tar, piece)
    assert repository.rebuild(recipe) == tar
    assert recipe.decode().splitlines()[-1] == f"T {len(tar)} {hashlib.sha256(tar).hexdigest()}"


def test_a_ustar_tar_fed_a_byte_at_a_time_is_rebuilt_byte_for_byte():
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        member(archive, "./a", os.urandom(70_000))
        member(archive, "./b", type=tarfile.SYMTYPE, linkname="a")
    tar = stream.getvalue() + b"record padding after the end is kept too"
    repository = Repository()
    recipe, _ = repository.store(tar, 1)
    assert repository.rebuild(recipe) == tar


def test_file_content_is_in_chunks_and_everything_else_in_the_recipe():
    content = os.urandom(1 << 20)
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
        member(archive, "./data", content, pax_headers={"comment": "x" * 600})
    tar = stream.getvalue()
    repository = Repository()
    recipe, writer = repository.store(tar)
    steps = list(read_recipe(lines(recipe)))
    raw = b"".join(step for step in steps if isinstance(step, bytes))
    zeros = sum(step for step in steps if isinstance(step, int))
    assert writer.plain_bytes == len(content)
    assert content[:4096] not in raw  # no content in the recipe itself
    assert len(raw) + zeros + len(content) == len(tar)
    # a header is one R line: raw lines end at the stream's block boundaries
    assert all(len(step) == 512 for step in steps if isinstance(step, bytes))


def test_the_same_files_with_new_mtimes_store_no_new_chunk():
    repository = Repository()
    first, _ = repository.store(sample_tar(tarfile.PAX_FORMAT))
    stream = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(sample_tar(tarfile.PAX_FORMAT))) as source,
        tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for info in source.getmembers():
            info.mtime += 3600
            archive.addfile(info, source.extractfile(info) if info.isfile() else None)
    touched = stream.getvalue()
    second, writer = repository.store(touched)
    assert writer.new_chunks == 0
    assert repository.rebuild(second) == touched
    assert repository.rebuild(first) == sample_tar(tarfile.PAX_FORMAT)


def test_a_small_change_in_a_large_file_stores_few_new_chunks():
    repository = Repository()
    original = sample_tar(tarfile.GNU_FORMAT)
    repository.store(original)
    changed = bytearray(original)
    offset = original.index(hashlib.shake_256(b"one").digest(3 << 20)[:64]) + 1_500_000
    changed[offset : offset + 100] = os.urandom(100)
    _, writer = repository.store(bytes(changed))
    assert writer.new_chunks <= 2
    assert writer.new_plain_bytes < 600_000


def test_a_stream_that_is_not_a_whole_tar_is_refused():
    tar = sample_tar(tarfile.GNU_FORMAT)
    with pytest.raises(TarFormatError):
        Repository().store(tar[:700_000])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("volkeep-recipe 1", "volkeep-recipe 9"), "version 1, 2 or 3"),
        (lambda text: text.replace("\nZ ", "\nM 1 2\nZ ", 1), "damaged recipe line"),
        (lambda text: text[: text.rindex("T ")], "cut short"),
        (lambda text: text + "Z 5\n", "after the end line"),
        (lambda text: text.replace("\nZ ", "\nZ x", 1), "damaged recipe line"),
        (lambda text: text.replace("\nR ", "\nR !", 1), "damaged recipe line"),
    ],
)
def test_a_damaged_recipe_is_refused(edit, message):
    repository = Repository()
    recipe, _ = repository.store(sample_tar(tarfile.GNU_FORMAT))
    with pytest.raises(RecipeError, match=message):
        repository.rebuild(edit(recipe.decode()).encode())


def test_a_tar_that_differs_from_its_recipe_end_is_refused():
    repository = Repository()
    recipe, _ = repository.store(sample_tar(tarfile.GNU_FORMAT))
    text = recipe.decode()
    wrong = text[: text.rindex("T ")] + f"T 1 {'0' * 64}\n"
    with pytest.raises(RecipeError, match="size or SHA-256"):
        repository.rebuild(wrong.encode())


def test_custom_chunker_parameters_cut_files_by_them():
    config = ChunkConfig(os.urandom(32), ChunkerParameters(4096, 16384, 65536))
    repository = Repository(config)
    recipe, _ = repository.store(sample_tar(tarfile.GNU_FORMAT))
    steps = list(read_recipe(lines(recipe)))
    assert max(step.length for step in steps if hasattr(step, "length")) <= 65536
    assert repository.rebuild(recipe) == sample_tar(tarfile.GNU_FORMAT)


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("piece", [511, 65_536])
def test_a_marked_recipe_splits_into_its_members_and_reusing_them_rebuilds_the_tar(
    tar_format, piece
):
    tar = sample_tar(tar_format)
    repository = Repository()
    repository.store(tar)  # its chunks, for the rebuild below
    marked = io.BytesIO()
    writer = ChunkWriter(repository.config, [], set(), lambda pack: None)
    seen: list[str] = []

    def mark(member: Member) -> MemberMark:
        seen.append(member.path)
        return MemberMark(len(seen), 1000 + len(seen))

    builder = RecipeBuilder(repository.config.chunker, writer.add, marked, mark)
    for start in range(0, len(tar), piece):
        builder.feed(tar[start : start + piece])
    builder.finish()
    text = marked.getvalue()
    members = list(member_lines(io.BytesIO(text)))
    assert len(members) == len(seen) + 1 and len(seen) == 59  # then the end-of-archive blocks
    assert members[2].mark == MemberMark(3, 1003)
    assert members[-1].mark is None and members[-1].end is not None
    assert members[-1].end.sha256 is None  # a marked recipe takes no SHA-256 of the tar
    assert sum(lines.tar_size for lines in members) == len(tar)
    steps = list(read_recipe(lines(text)))
    chunk_ids = [step.chunk_id for step in steps if isinstance(step, ChunkStep)]
    assert [chunk_id for lines in members for chunk_id in lines.chunk_ids] == chunk_ids

    # a recipe made of those members' lines taken whole, a few at a time, is the same tar;
    # its SHA-256 unknown
    reused = io.BytesIO()
    again = RecipeBuilder(repository.config.chunker, writer.add, reused, mark)
    for first in range(0, len(members), 3):
        run = members[first : first + 3]
        again.take_lines(
            text[run[0].start : run[-1].stop], sum(lines_of.tar_size for lines_of in run)
        )
    again.finish()
    assert reused.getvalue().decode().splitlines()[-1] == f"T {len(tar)} -"
    assert repository.rebuild(reused.getvalue()) == tar


def test_a_marked_recipe_ends_with_its_size_and_no_sha256_of_the_tar_taken(monkeypatch):
    # A version 2 recipe (every backup's) does not hash the whole tar: its chunks are
    # checked by their ids and the recipe by the manifest's SHA-256.
    class NoHashing:
        @staticmethod
        def sha256() -> None:
            raise AssertionError("the tar's SHA-256 was taken")

    tar = sample_tar(tarfile.PAX_FORMAT)
    repository = Repository()
    repository.store(tar)  # its chunks, for the rebuild below
    monkeypatch.setattr(recipe_module, "hashlib", NoHashing)
    marked = io.BytesIO()
    writer = ChunkWriter(repository.config, [], set(), lambda pack: None)
    builder = RecipeBuilder(
        repository.config.chunker, writer.add, marked, lambda member: MemberMark(1, 2)
    )
    builder.feed(tar)
    builder.finish()
    monkeypatch.undo()
    assert builder.hexdigest() is None
    assert marked.getvalue().decode().splitlines()[-1] == f"T {len(tar)} -"
    assert repository.rebuild(marked.getvalue()) == tar


def test_a_marked_recipe_of_a_stream_that_is_not_a_whole_tar_is_refused():
    config = Repository().config
    writer = ChunkWriter(config, [], set(), lambda pack: None)
    for stream in (b"", sample_tar(tarfile.GNU_FORMAT)[:1024]):
        marks = lambda member: MemberMark(1, 2)  # noqa: E731
        builder = RecipeBuilder(config.chunker, writer.add, io.BytesIO(), marks)
        builder.feed(stream)
        with pytest.raises(TarFormatError):
            builder.finish()


@pytest.mark.parametrize(
    "damage",
    [
        (b"R AAAA\n", b"R AA*A\n"),  # not base64
        (b"R AAAA\n", b"R AAA=A\n"),  # not a whole base64 quantum
        (b"M 1 2\n", b"M 1 x\n"),
        (b"Z 3\n", b"Z 0\n"),
        (b"T 515 -\n", b"T 515 -\nR AAAA\n"),  # a line after the end
        (b"T 515 -\n", b""),  # cut short
        (b"volkeep-recipe 2\n", b"volkeep-recipe 1\n"),  # M lines need version 2
    ],
)
def test_a_damaged_recipe_is_refused_when_its_members_lines_are_read(damage):
    recipe = b"volkeep-recipe 2\nR AAAA\nZ 3\nM 1 2\nZ 509\nT 515 -\n"
    good, bad = damage
    assert [
        (lines.start, lines.stop, lines.tar_size) for lines in member_lines(io.BytesIO(recipe))
    ] == [(17, 34, 6), (34, 40, 509)]
    assert list(read_recipe(lines(recipe)))[-1] == EndStep(515, None)
    with pytest.raises(RecipeError):
        list(member_lines(io.BytesIO(recipe.replace(good, bad))))
    with pytest.raises(RecipeError):
        list(read_recipe(lines(recipe.replace(good, bad))))


BLOCK = base64.b64encode(bytes(range(256)) * 2)  # a whole block: 684 characters, "=" last


@pytest.mark.parametrize(
    ("raw_line", "size"),
    [
        (b"R " + BLOCK + b"\n", 512),
        (b"R " + BLOCK[:-4] + b"AA==\n", 511),
        (b"R " + BLOCK[:100] + b"*" + BLOCK[101:] + b"\n", None),
        (b"R " + BLOCK[:100] + b" " + BLOCK[101:] + b"\n", None),
        (b"RA" + BLOCK[:99] + b" " + BLOCK[100:] + b"\n", None),
        (b"R " + BLOCK[:-2] + b"=\n=", None),
        (b"R " + BLOCK[:-1] + b"\n=", None),
        (b"R " + BLOCK[:-1] + b"A\n", None),  # 684 characters without padding: 513 bytes
    ],
)
def test_a_whole_blocks_raw_line_is_checked_as_read_recipe_checks_it(raw_line, size):
    """An R line of a whole block (a header) is checked in place, not by `_raw_size`."""
    recipe = b"volkeep-recipe 2\n" + raw_line + b"M 1 2\nT %d -\n" % (size or 0)
    if size is None:
        with pytest.raises(RecipeError, match="line 2: damaged"):
            list(member_lines(io.BytesIO(recipe)))
        with pytest.raises(RecipeError):
            list(read_recipe(lines(recipe)))
        return
    [member, _] = member_lines(io.BytesIO(recipe))
    assert (member.start, member.stop, member.tar_size) == (17, 17 + len(raw_line) + 6, size)
    assert sum(len(step) for step in read_recipe(lines(recipe)) if isinstance(step, bytes)) == size


def test_a_tar_of_many_small_files_reaches_the_recipe_s_sink_in_few_writes():
    """The recipe's lines go to its zstd in batches, not one write per member's header (a
    write released and took back the GIL from the packing threads, 9,000 times for the
    benchmark's volume); the recipe is the same, and rebuilds the tar."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for number in range(2000):
            member(archive, f"./small/{number}", b"%d\n" % number)
    tar = stream.getvalue()
    writes: list[int] = []

    class CountingSink(io.BytesIO):
        def write(self, data) -> int:  # type: ignore[override]
            writes.append(len(data))
            return super().write(data)

    recipe = CountingSink()
    config = ChunkConfig.new()
    writer = ChunkWriter(config, [], set(), lambda pack: None)
    builder = RecipeBuilder(config.chunker, writer.add, recipe)
    for start in range(0, len(tar), 1 << 20):
        builder.feed(tar[start : start + (1 << 20)])
    builder.finish()
    writer.finish()
    writer.close()
    assert len(writes) <= 40
    assert recipe.getvalue() == Repository(config).store(tar)[0]


def test_the_recipe_s_scanner_is_the_backup_s_one_parse_and_keeps_its_filter_and_order():
    """A backup feeds the helper's tar to the recipe's own scanner (one parse of the
    stream, not one for the entries and another for the recipe): members its filter
    refuses are left out, `include` is called before the member is taken and `done` after
    its M line, and the recipe is the one of the filtered tar fed whole."""
    tar = sample_tar(tarfile.PAX_FORMAT)
    config = ChunkConfig.new()
    events: list[str] = []
    recipe = io.BytesIO()

    def include(member: Member) -> bool:
        events.append(f"include {member.path}")
        return not member.path.startswith("many/1")

    def mark(member: Member) -> MemberMark:
        events.append(f"mark {member.path}")
        return MemberMark(1, 2)

    writer = ChunkWriter(config, [], set(), lambda pack: None)
    builder = RecipeBuilder(config.chunker, writer.add, recipe, mark)
    scanner = builder.scanner(include, lambda member: events.append(f"done {member.path}"))
    for start in range(0, len(tar), 1000):
        scanner.feed(tar[start : start + 1000])
    scanner.close()
    builder.finish()
    writer.finish()
    writer.close()
    filtered = io.BytesIO()
    TarScanner(emit=filtered.write, include=include).feed(tar)
    again = io.BytesIO()
    other = RecipeBuilder(
        config.chunker, ChunkWriter(config, [], set(), lambda p: None).add, again, mark
    )
    other.feed(filtered.getvalue())
    other.finish()
    assert recipe.getvalue() == again.getvalue()
    assert builder.size == len(filtered.getvalue())
    assert events[:6] == [
        "include .",
        "mark .",
        "done .",
        "include empty",
        "mark empty",
        "done empty",
    ]
    assert "include many/10" in events and "mark many/10" not in events
