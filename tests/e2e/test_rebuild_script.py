"""Recovery without volkeep: scripts/volkeep-rebuild-tar.sh rebuilds a deduplicated
archive's tar with sh, coreutils, zstd and age only (docs/format-dedup.md).

The chunk repositories here are written by the dedup library as a backup will write them;
the tars are made by Python's tarfile (GNU and PAX formats) and by the busybox tar of the
helper image, from a real volume.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from pyrage import x25519

from daemon.archive.chunkconfig import ChunkConfig
from daemon.config.keys import parse_recipient
from tests.e2e.conftest import ROOT, mountpoint
from tests.support.dedup import store_tar
from tests.support.tree import build_fidelity_tree

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "volkeep-rebuild-tar.sh"


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


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
@pytest.mark.parametrize("source", ["gnu", "pax", "busybox"])
def test_the_script_rebuilds_the_tar_byte_for_byte(request, tmp_path, source, encrypted):
    if source == "busybox":
        tar = request.getfixturevalue("busybox_tar")
    else:
        tar = python_tar(tarfile.GNU_FORMAT if source == "gnu" else tarfile.PAX_FORMAT)
    recipients, identity = age_keys(tmp_path) if encrypted else ([], None)
    chunks, recipe, output = tmp_path / "chunks", tmp_path / "archive.recipe", tmp_path / "out.tar"
    store_tar(tar, chunks, recipe, ChunkConfig.new(), recipients)

    result = rebuild(chunks, recipe, output, identity)

    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == hashlib.sha256(tar).hexdigest()
    assert not Path(f"{output}.part").exists()


def test_the_script_rebuilds_an_archive_whose_chunks_other_archives_stored(tmp_path):
    config, known = ChunkConfig.new(), set()
    chunks = tmp_path / "chunks"
    first = python_tar(tarfile.PAX_FORMAT)
    store_tar(first, chunks, tmp_path / "first.recipe", config, known=known)
    second = first.replace(b"long name", b"LONG NAME")  # one small file changed
    writer = store_tar(second, chunks, tmp_path / "second.recipe", config, known=known)
    assert writer.new_chunks == 1
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
