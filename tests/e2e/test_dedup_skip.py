"""Deduplicated backups that skip unchanged files (docs/format-dedup.md, "Skipping unchanged
files") end to end: the real engine and helper, volkeep as a real process.

What is asserted is data: the bytes the helper streamed (the manifest's `files`), the tar
an export writes against a full tar the helper writes of the same volume, and the tree a
restore brings back against the source.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import time
from pathlib import Path

import docker
import pytest
import zstandard

from daemon.archive.packs import PackEntry, open_pack, pack_key, read_index
from daemon.archive.recipe import write_spliced
from tests.e2e.conftest import Workspace, mountpoint
from tests.e2e.test_dedup import backup, chunks_dir, export, manifest_of, restored
from tests.support import manifests
from tests.support.tree import build_fidelity_tree, differences, snapshot

pytestmark = pytest.mark.e2e


def helper_tar(helper_image: str, volume: str) -> bytes:
    """The tar a helper writes of the whole volume, as a backup's full read asks it."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/src:ro",
         helper_image, "tar", "-c", "-f", "-", "-C", "/src", "."],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout  # fmt: skip


def settle() -> None:
    """Let the clock pass the second of the last change: a file changed in the second its
    listing began is read again (the racy rule), which these tests do not measure."""
    time.sleep(1.1)


def build(root: Path) -> None:
    build_fidelity_tree(root)
    (root / "data").mkdir()
    for number in range(30):
        (root / "data" / f"file-{number}.bin").write_bytes(
            hashlib.shake_256(b"%d" % number).digest(200_000)
        )
    os.link(root / "data" / "file-3.bin", root / "data" / "file-3-linked.bin")
    settle()


def test_a_repeat_backup_of_an_unchanged_volume_reads_no_file_and_exports_the_same_tar(
    api: docker.APIClient, volumes, workspace: Workspace, helper_image: str
) -> None:
    volume = volumes("same")
    root = mountpoint(api, volume)
    build(root)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    first = backup(workspace)
    second = backup(workspace)

    full, repeat = (manifest_of(workspace, volume, archive)["files"] for archive in (first, second))
    assert full["reused"] == 0 and full["read_bytes"] > 10 << 20
    assert repeat["read"] == 0 and repeat["read_bytes"] == 0, repeat
    assert repeat["reused"] == manifest_of(workspace, volume, second)["entries"]["count"]
    assert repeat["full_read"] == full["listed"]
    whole = helper_tar(helper_image, volume)
    assert export(workspace, volume, second) == export(workspace, volume, first) == whole
    assert differences(snapshot(root), restored(api, workspace, volume, second)) == []


def test_added_removed_renamed_and_rewritten_files_are_read_and_the_tar_is_a_full_ones(
    api: docker.APIClient, volumes, workspace: Workspace, helper_image: str
) -> None:
    volume = volumes("changes")
    root = mountpoint(api, volume)
    build(root)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    backup(workspace)
    data = root / "data"
    (data / "file-1.bin").unlink()
    (data / "file-2.bin").rename(data / "renamed-2.bin")
    (data / "added.txt").write_text("added\n")
    os.link(data / "file-4.bin", data / "file-4-linked.bin")  # a new name for an old file
    (data / "file-3.bin").unlink()  # the first name of a linked pair goes
    os.unlink(root / "rel_link")
    os.symlink("zero", root / "rel_link")
    # the same size and mtime, another content: its ctime moved
    target = data / "file-5.bin"
    stat = target.stat()
    target.write_bytes(hashlib.shake_256(b"other").digest(stat.st_size))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    settle()
    second = backup(workspace)

    files = manifest_of(workspace, volume, second)["files"]
    assert 0 < files["read"] < 20 and files["reused"] > 100, files
    assert export(workspace, volume, second) == helper_tar(helper_image, volume)
    assert differences(snapshot(root), restored(api, workspace, volume, second)) == []


def test_full_read_every_0_reads_every_file_each_time(
    api: docker.APIClient, volumes, workspace: Workspace, helper_image: str
) -> None:
    volume = volumes("always")
    root = mountpoint(api, volume)
    build(root)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup", "full_read_every": 0}})
    backup(workspace)
    second = backup(workspace)

    summary = manifest_of(workspace, volume, second)
    assert summary["files"]["reused"] == 0
    assert summary["files"]["read"] == summary["entries"]["count"]
    assert summary["files"]["full_read"] == summary["files"]["listed"]
    assert summary["tar"]["sha256"] is None  # not taken: the chunks are checked by their ids
    assert export(workspace, volume, second) == helper_tar(helper_image, volume)


def recipe_lines(workspace: Workspace, volume: str, archive_id: str) -> list[bytes]:
    """The lines of an archive's recipe (not encrypted), in clear."""
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.recipe.zst"
    with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as plain:
        return plain.read().splitlines()


def test_a_repeat_backup_splices_the_previous_recipes_pieces_which_outlive_its_archive(
    api: docker.APIClient,
    volumes,
    workspace: Workspace,
    helper_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recipe version 3: the second backup's recipe names the first one's pieces for the
    members it took, and stores a piece only for what it read; once the first archive is
    pruned and collected, those pieces stay (the second recipe uses them) and the second
    archive still exports the helper's tar and restores."""
    monkeypatch.setenv("VOLKEEP_GC_MARGIN", "0")
    volume = volumes("spliced")
    root = mountpoint(api, volume)
    build(root)
    for number in range(2000):  # enough lines for a few pieces
        (root / "data" / f"small-{number}.txt").write_text(f"small file {number}\n")
    settle()
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    first = backup(workspace)
    (root / "data" / "small-1000.txt").write_text("changed\n")
    settle()
    second = backup(workspace)

    pieces = {}
    for archive in (first, second):
        lines = recipe_lines(workspace, volume, archive)
        assert lines[0] == b"volkeep-recipe 3"
        assert {line[:1] for line in lines[1:]} == {b"P", b"S", b"T"}
        pieces[archive] = {line.split()[1] for line in lines if line.startswith(b"P ")}
    assert len(pieces[first]) >= 3
    shared = pieces[first] & pieces[second]
    assert len(shared) >= len(pieces[first]) - 1, "only the changed file's piece is not shared"
    added = manifest_of(workspace, volume, second)["chunks"]
    assert isinstance(added, dict) and added["new"] <= 3, added  # its piece, one chunk

    policy = {"volumes": [volume], "format": "dedup", "retention": {"keep_last": 1}}
    workspace.write_config({"app": policy})
    for _ in range(2):  # condemn, then free
        result = workspace.run("prune", "app")
        assert result.returncode == 0, result.stderr
    assert not list(workspace.archive_dir("app", volume).glob(f"*{first}*"))
    assert export(workspace, volume, second) == helper_tar(helper_image, volume)
    assert differences(snapshot(root), restored(api, workspace, volume, second)) == []


def as_version_2(workspace: Workspace, volume: str, archive_id: str) -> None:
    """Rewrite an archive's recipe as volkeep wrote it before version 3 (its lines spelled
    out from its pieces, zstd), and its manifest's record of the recipe's bytes."""
    chunks = chunks_dir(workspace)
    where = {
        entry.chunk_id: entry
        for index in (chunks / "index").iterdir()
        for entry in read_index(index.name, index.open("rb"), None)
    }

    def piece(chunk_id: str) -> bytes:
        entry = where[chunk_id]
        pack = open_pack(entry.pack, (chunks / pack_key(entry.pack)).read_bytes(), None)
        return pack.chunk(
            PackEntry(chunk_id, entry.offset, entry.stored_length, entry.plain_length)
        )

    lines = recipe_lines(workspace, volume, archive_id)
    assert lines[0] == b"volkeep-recipe 3"
    text = io.BytesIO()
    write_spliced((line + b"\n" for line in lines[1:]), piece, text)
    stored = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(text.getvalue())
    directory = workspace.archive_dir("app", volume)
    (directory / f"{volume}-{archive_id}.recipe.zst").write_bytes(stored)
    manifest = directory / f"{volume}-{archive_id}.manifest.json"
    summary = manifests.summary(manifest)
    summary["archive"] |= {"size": len(stored), "sha256": hashlib.sha256(stored).hexdigest()}
    manifests.rewrite_summary(manifest, summary)


def test_an_archive_of_recipe_version_2_still_drills_restores_exports_and_is_taken_from(
    api: docker.APIClient, volumes, workspace: Workspace, helper_image: str
) -> None:
    """Formats are forever: a recipe written before version 3 (every line in the recipe
    file) still drills, restores and exports, and the next backup takes its unchanged
    files from it (copying their lines into pieces of its own)."""
    volume = volumes("version2")
    root = mountpoint(api, volume)
    build(root)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    first = backup(workspace)
    as_version_2(workspace, volume, first)
    assert recipe_lines(workspace, volume, first)[0] == b"volkeep-recipe 2"

    drill = workspace.run("drill", "app", "--volume", volume, "--archive", first)
    assert drill.returncode == 0, drill.stderr
    assert export(workspace, volume, first) == helper_tar(helper_image, volume)
    assert differences(snapshot(root), restored(api, workspace, volume, first)) == []

    (root / "data" / "file-7.bin").write_bytes(b"changed")
    settle()
    second = backup(workspace)
    files = manifest_of(workspace, volume, second)["files"]
    assert isinstance(files, dict) and files["read"] == 1 and files["reused"] > 30, files
    assert recipe_lines(workspace, volume, second)[0] == b"volkeep-recipe 3"
    assert export(workspace, volume, second) == helper_tar(helper_image, volume)
    assert differences(snapshot(root), restored(api, workspace, volume, second)) == []
