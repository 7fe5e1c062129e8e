"""Deduplicated archives store no content digest per file (`volkeep-entries-2`,
docs/format-dedup.md, "How a drill proves content"), and their drills still prove every
byte: the real engine, real volumes, volkeep as a real process. A difference is made in the
drill's own scratch volume (`tests.support.scratch_edit`), between the restore and the
read-back, so that only the drill's comparison can find it.

Archives written before (format 3 with `volkeep-entries-1`: a SHA-256 per file) still
drill, restore and list, and the next backup takes its unchanged files from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support import manifests
from tests.support.tree import build_fidelity_tree, differences, snapshot

pytestmark = pytest.mark.e2e
EDITED = ("big.bin", "owned999")  # several chunks; one chunk


def backed_up(api: docker.APIClient, volumes, workspace: Workspace) -> tuple[str, str, Path]:
    """Back up the fidelity tree deduplicated; return the volume, the archive id and the
    manifest's path."""
    volume = volumes("app_data")
    build_fidelity_tree(mountpoint(api, volume))
    # let the clock pass the tree's second: a file changed in the second its backup lists it
    # is "racy", and the next backup reads it again instead of taking it from this archive
    time.sleep(1.1)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    result = workspace.run("backup", "app")
    assert result.returncode == 0, result.stderr
    archive_id = json.loads(workspace.run("list", "app", "--json").stdout)[0]["id"]
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.manifest.json"
    return volume, archive_id, path


def drill_with_a_byte_changed(
    workspace: Workspace, volume: str, archive_id: str, path: str
) -> subprocess.CompletedProcess[str]:
    """Drill the archive with the middle byte of `path` inverted in its scratch volume."""
    command = workspace.command("drill", "app", "--volume", volume, "--archive", archive_id)
    command[1:3] = ["-m", "tests.support.scratch_edit", path]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def verdict(workspace: Workspace, volume: str, archive_id: str) -> dict[str, object]:
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.drill.json"
    document: dict[str, object] = json.loads(path.read_bytes())
    return document


def test_a_deduplicated_archive_keeps_no_content_digest_and_its_drill_proves_every_byte(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id, manifest = backed_up(api, volumes, workspace)

    assert manifests.summary(manifest)["entries"]["encoding"] == "volkeep-entries-2"
    entries = manifests.entries(manifest)
    assert {entry["path"] for entry in entries} >= set(EDITED)
    assert [entry for entry in entries if entry["sha256"] is not None] == []

    clean = workspace.run("drill", "app", "--volume", volume, "--archive", archive_id)
    assert clean.returncode == 0, clean.stderr
    assert verdict(workspace, volume, archive_id)["passed"] is True

    for path in EDITED:
        drill = drill_with_a_byte_changed(workspace, volume, archive_id, path)
        assert drill.returncode == 1, drill.stderr
        record = verdict(workspace, volume, archive_id)
        assert (record["passed"], record["differences"]) == (False, [f"/{path} content"])
        assert f"/{path} content" in drill.stderr


def test_a_format_3_archive_with_content_digests_still_drills_restores_and_lists(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id, manifest = backed_up(api, volumes, workspace)
    root = mountpoint(api, volume)
    # the manifest as volkeep wrote it before volkeep-entries-2: each regular file's SHA-256
    manifests.rewrite_entries(
        manifest,
        lambda member: (
            dataclasses.replace(
                member, sha256=hashlib.sha256((root / member.path).read_bytes()).hexdigest()
            )
            if member.type == "file"
            else member
        ),
        digests=True,
    )
    assert manifests.summary(manifest)["format"] == 3
    assert manifests.summary(manifest)["entries"]["encoding"] == "volkeep-entries-1"
    big = next(entry for entry in manifests.entries(manifest) if entry["path"] == "big.bin")
    assert big["sha256"] == hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()

    clean = workspace.run("drill", "app", "--volume", volume, "--archive", archive_id)
    assert clean.returncode == 0, clean.stderr
    drill = drill_with_a_byte_changed(workspace, volume, archive_id, "big.bin")
    assert drill.returncode == 1, drill.stderr
    assert verdict(workspace, volume, archive_id)["differences"] == ["/big.bin content"]

    target = f"{volume}_restored"
    try:
        restore = workspace.run(
            "restore", "app", "--volume", volume, "--archive", archive_id, "--to", target
        )
        assert restore.returncode == 0, restore.stderr
        assert differences(snapshot(root), snapshot(mountpoint(api, target))) == []
    finally:
        api.remove_volume(target, force=True)
    listed = workspace.run(
        "list", "app", "--volume", volume, "--archive", archive_id, "--files", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    shown = {entry["path"]: entry["sha256"] for entry in json.loads(listed.stdout)}
    assert shown["big.bin"] == big["sha256"]

    # the next backup takes the unchanged files from it, and writes volkeep-entries-2
    result = workspace.run("backup", "app")
    assert result.returncode == 0, result.stderr
    newest = json.loads(workspace.run("list", "app", "--json").stdout)[0]["id"]
    path = workspace.archive_dir("app", volume) / f"{volume}-{newest}.manifest.json"
    document = manifests.summary(path)
    assert document["entries"]["encoding"] == "volkeep-entries-2"
    assert document["files"]["reused"] > document["files"]["read"]
    drill = workspace.run("drill", "app", "--volume", volume, "--archive", newest)
    assert drill.returncode == 0, drill.stderr


def test_members_that_differ_from_entries_without_digests_are_named_and_no_content_blamed(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id, manifest = backed_up(api, volumes, workspace)
    manifests.rewrite_entries(
        manifest,
        lambda member: (
            dataclasses.replace(member, path="renamed") if member.path == "owned999" else member
        ),
    )

    drill = workspace.run("drill", "app", "--volume", volume, "--archive", archive_id)

    assert drill.returncode == 1, drill.stderr
    record = verdict(workspace, volume, archive_id)
    assert sorted(record["differences"]) == ["/owned999 unexpected", "/renamed missing"]
