"""Recovery without volkeep: scripts/volkeep-rebuild-tar.sh rebuilds a deduplicated
archive's tar with sh, coreutils, zstd and age only (docs/format-dedup.md).

The chunk repositories here are written by the dedup library as a backup will write them,
with recipes of every version (1, 2, and 3: the lines in pieces); the tars are made by
Python's tarfile (GNU and PAX formats) and by the busybox tar of the helper image, from a
real volume.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pyrage
import pytest
import zstandard
from pyrage import x25519

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.packs import ChunkWriter, PackEntry, index_key, open_pack, pack_key, read_index
from daemon.config.keys import parse_recipient
from tests.e2e.conftest import ROOT, mountpoint
from tests.support.dedup import store_tar, write_blob
from tests.support.tree import build_fidelity_tree

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "volkeep-rebuild-tar.sh"
VERSIONS = [1, 2, 3]  # every recipe version stays readable


def python_tar(tar_format: int) -> bytes:
    stream = io.BytesIO()
    random = hashlib.shake_256(b"script")
    with tarfile.open(fileobj=stream, mode="w", format=tar_format) as archive:
        for name, data in [
            ("./empty", b""),
            ("./large", random.digest(5 << 20)),
            ("./" + "/".join(["n" * 90] * 4) + "/file", b"long name"),
            ("./zeros", bytes(1 << 20)),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./hard")
        link.type, link.linkname = tarfile.LNKTYPE, "./large"
        archive.addfile(link)
        symlink = tarfile.TarInfo("./symlink")
        symlink.type, symlink.linkname = tarfile.SYMTYPE, "../" * 40 + "far"
        archive.addfile(symlink)
    return stream.getvalue()


def directories_tar(count: int) -> bytes:
    """A tar of `count` directories and a small file in every tenth: some 700 bytes of
    recipe lines a member, so that 400 members make a version 3 recipe of two pieces (a
    piece is cut at 256 KiB when no M line ends one earlier)."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for number in range(count):
            directory = tarfile.TarInfo(f"./dir-{number:04}")
            directory.type = tarfile.DIRTYPE
            archive.addfile(directory)
            if number % 10 == 0:
                data = b"file %d\n" % number
                info = tarfile.TarInfo(f"./dir-{number:04}/file")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return stream.getvalue()


@pytest.fixture
def busybox_tar(api, volumes, helper_image) -> bytes:
    """The tar the helper image's busybox writes of a volume holding every kind of object."""
    volume = volumes("script")
    build_fidelity_tree(mountpoint(api, volume))
    command = ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/v:ro"]
    command += [helper_image, "tar", "-c", "-f", "-", "-C", "/v", "."]
    return subprocess.run(command, capture_output=True, check=True).stdout


def rebuild(
    chunks: Path, recipe: Path, output: Path, identity: Path | None = None
) -> subprocess.CompletedProcess[str]:
    arguments = [str(chunks), str(recipe), str(output)] + ([str(identity)] if identity else [])
    return subprocess.run(["sh", str(SCRIPT), *arguments], capture_output=True, text=True)


def age_keys(tmp_path: Path) -> tuple[list, Path]:
    identity = x25519.Identity.generate()
    path = tmp_path / "identity.txt"
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return [parse_recipient(str(identity.to_public()))], path


def recipe_text(recipe: Path, identity: Path | None = None) -> bytes:
    """A recipe file's lines: decrypted (with the identity), then decompressed."""
    stored = recipe.read_bytes()
    if identity is not None:
        key = x25519.Identity.from_str(identity.read_text().strip())
        stored = pyrage.decrypt(stored, [key])
    return zstandard.ZstdDecompressor().decompressobj().decompress(stored)


def write_recipe(recipe: Path, lines: list[bytes]) -> None:
    """Write a recipe file in clear, as a policy that does not encrypt stores it."""
    text = b"".join(lines)
    recipe.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(text))


def store_chunk(chunks: Path, config: ChunkConfig, data: bytes) -> str:
    """Store one chunk in a pack and an index of its own, as a backup stores a new chunk
    (in clear); return its id."""

    def store_pack(pack) -> None:
        write_blob(chunks / pack_key(pack.name), pack.data)

    writer = ChunkWriter(config, (), set(), store_pack)
    with writer.index:
        chunk_id = writer.add(data)
        writer.finish()
        write_blob(chunks / index_key(writer.index.sha256), writer.index.stored())
    return chunk_id


def read_chunk(chunks: Path, chunk_id: str) -> bytes:
    """A chunk's plain bytes, from a repository in clear, located through its indexes."""
    for index in (chunks / "index").iterdir():
        with open(index, "rb") as source:
            for entry in read_index(index.name, source, None):
                if entry.chunk_id == chunk_id:
                    stored = (chunks / pack_key(entry.pack)).read_bytes()
                    where = PackEntry(
                        chunk_id, entry.offset, entry.stored_length, entry.plain_length
                    )
                    return open_pack(entry.pack, stored, None).chunk(where)
    raise AssertionError(f"chunk {chunk_id} is in no index")


def split_splices(chunks: Path, lines: list[bytes]) -> list[bytes]:
    """A version 3 recipe's lines with each S line of more than one line cut in two S
    lines, at the last line end before its middle: the same text, spliced in parts (as a
    backup that takes members from its previous archive splices them)."""
    pieces = [line.split()[1].decode() for line in lines if line.startswith(b"P ")]
    split: list[bytes] = []
    for line in lines:
        if line.startswith(b"S "):
            number, start, stop = (int(field) for field in line.split()[1:])
            text = read_chunk(chunks, pieces[number])
            cut = text.rfind(b"\n", start, (start + stop) // 2) + 1
            if cut > start:
                split.append(b"S %d %d %d\n" % (number, start, cut))
                line = b"S %d %d %d\n" % (number, cut, stop)
        split.append(line)
    return split


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
@pytest.mark.parametrize("source", ["gnu", "pax", "busybox"])
def test_the_script_rebuilds_the_tar_byte_for_byte(request, tmp_path, source, encrypted, version):
    if source == "busybox":
        tar = request.getfixturevalue("busybox_tar")
    else:
        tar = python_tar(tarfile.GNU_FORMAT if source == "gnu" else tarfile.PAX_FORMAT)
    recipients, identity = age_keys(tmp_path) if encrypted else ([], None)
    chunks, recipe, output = tmp_path / "chunks", tmp_path / "archive.recipe", tmp_path / "out.tar"
    store_tar(tar, chunks, recipe, ChunkConfig.new(), recipients, version=version)
    text = recipe_text(recipe, identity)
    assert text.startswith(b"volkeep-recipe %d\n" % version)
    if version == 3:  # the lines are in pieces, spliced
        assert b"\nP " in text and b"\nS " in text and b"\nC " not in text

    result = rebuild(chunks, recipe, output, identity)

    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == hashlib.sha256(tar).hexdigest()
    assert not Path(f"{output}.part").exists()


def test_the_script_splices_pieces_in_parts(tmp_path):
    """A version 3 recipe of several pieces, each spliced in two parts (the second
    starting after a line end inside the piece), rebuilds the same tar."""
    tar = directories_tar(400)
    chunks, recipe, output = tmp_path / "chunks", tmp_path / "archive.recipe", tmp_path / "out.tar"
    store_tar(tar, chunks, recipe, ChunkConfig.new(), version=3)
    lines = recipe_text(recipe).splitlines(keepends=True)
    assert sum(line.startswith(b"P ") for line in lines) >= 2
    split = split_splices(chunks, lines)
    assert sum(line.startswith(b"S ") for line in split) > sum(
        line.startswith(b"S ") for line in lines
    )
    write_recipe(recipe, split)

    result = rebuild(chunks, recipe, output)

    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == tar


def stop_inside_a_line(lines, chunks, config):
    """The first S line's range ends one byte before its last line's end."""
    at = next(at for at, line in enumerate(lines) if line.startswith(b"S "))
    number, start, stop = (int(field) for field in lines[at].split()[1:])
    lines[at] = b"S %d %d %d\n" % (number, start, stop - 1)
    range_ = f"bytes [{start}, {stop - 1}) of piece {number}"
    return lines, f"line {at + 1}: {range_} do not end at a line's end"


def start_inside_a_line(lines, chunks, config):
    """A range inside a piece starts one byte after a line's start."""
    lines = split_splices(chunks, lines)
    at = [at for at, line in enumerate(lines) if line.startswith(b"S ")][1]
    number, start, stop = (int(field) for field in lines[at].split()[1:])
    lines[at] = b"S %d %d %d\n" % (number, start + 1, stop)
    range_ = f"bytes [{start + 1}, {stop}) of piece {number}"
    return lines, f"line {at + 1}: {range_} do not start at a line's start"


def undeclared_piece(lines, chunks, config):
    """The first S line names a piece number no P line declares."""
    declared = sum(line.startswith(b"P ") for line in lines)
    at = next(at for at, line in enumerate(lines) if line.startswith(b"S "))
    _, start, stop = lines[at].split()[1:]
    lines[at] = b"S %d %s %s\n" % (declared, start, stop)
    return lines, f"line {at + 1}: piece {declared} is declared by no P line before it"


def end_line_in_a_piece(lines, chunks, config):
    """A piece that holds the T line (the recipe file's, moved into it)."""
    end = lines[-1]
    text = b"Z 512\n" + end
    chunk_id = store_chunk(chunks, config, text)
    lines = [
        lines[0],
        b"P %s %d\n" % (chunk_id.encode(), len(text)),
        b"S 0 0 %d\n" % len(text),
        end,
    ]
    return lines, f"piece 0 (chunk {chunk_id}) holds a T line (the end line is the recipe file's)"


@pytest.mark.parametrize(
    "damage", [stop_inside_a_line, start_inside_a_line, undeclared_piece, end_line_in_a_piece]
)
def test_the_script_refuses_a_damaged_version_3_recipe(tmp_path, damage):
    chunks, recipe, output = tmp_path / "chunks", tmp_path / "archive.recipe", tmp_path / "out.tar"
    config = ChunkConfig.new()
    store_tar(directories_tar(400), chunks, recipe, config, version=3)
    lines = recipe_text(recipe).splitlines(keepends=True)
    damaged, problem = damage(lines, chunks, config)
    write_recipe(recipe, damaged)

    result = rebuild(chunks, recipe, output)

    assert result.returncode == 1
    prefix = "" if problem.startswith("piece") else f"{recipe}, "
    assert result.stderr == f"volkeep-rebuild-tar: {prefix}{problem}\n"
    assert not output.exists() and not Path(f"{output}.part").exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_script_rebuilds_an_archive_whose_chunks_other_archives_stored(tmp_path, version):
    config, known = ChunkConfig.new(), set()
    chunks = tmp_path / "chunks"
    first = python_tar(tarfile.PAX_FORMAT)
    store_tar(first, chunks, tmp_path / "first.recipe", config, known=known, version=version)
    second = first.replace(b"long name", b"LONG NAME")  # one small file changed
    writer = store_tar(
        second, chunks, tmp_path / "second.recipe", config, known=known, version=version
    )
    # the file's one chunk (and in version 3 the one piece, which names that chunk)
    assert writer.new_chunks == (2 if version == 3 else 1)
    assert len(list((chunks / "index").iterdir())) == 2

    for name, tar in [("first", first), ("second", second)]:
        output = tmp_path / f"{name}.tar"
        result = rebuild(chunks, tmp_path / f"{name}.recipe", output)
        assert result.returncode == 0, result.stderr
        assert output.read_bytes() == tar


def test_the_script_refuses_a_damaged_pack_and_leaves_no_output(tmp_path):
    chunks, recipe, output = tmp_path / "chunks", tmp_path / "archive.recipe", tmp_path / "out.tar"
    store_tar(python_tar(tarfile.GNU_FORMAT), chunks, recipe, ChunkConfig.new())
    pack = next((chunks / "packs").glob("*/*"))
    data = bytearray(pack.read_bytes())
    data[1000] ^= 0x01
    pack.write_bytes(bytes(data))

    result = rebuild(chunks, recipe, output)

    assert result.returncode == 1
    assert result.stderr == f"volkeep-rebuild-tar: {pack}: damaged (its SHA-256 is not its name)\n"
    assert not output.exists() and not Path(f"{output}.part").exists()


def test_the_script_names_a_wrong_identity(tmp_path):
    recipients, _ = age_keys(tmp_path)
    chunks, recipe = tmp_path / "chunks", tmp_path / "archive.recipe"
    store_tar(python_tar(tarfile.GNU_FORMAT), chunks, recipe, ChunkConfig.new(), recipients)
    (tmp_path / "other").mkdir()
    _, other = age_keys(tmp_path / "other")

    result = rebuild(chunks, recipe, tmp_path / "out.tar", other)

    assert result.returncode == 1
    assert f"{recipe}: age cannot decrypt it" in result.stderr
    assert not (tmp_path / "out.tar").exists()
