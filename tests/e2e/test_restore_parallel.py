"""A whole restore extracted in parallel streams (daemon.archive.split) comes back object
for object as it was: read-only directories holding files, directories' owners, modes and
mtimes, hard links whose two names fall into different streams; a drill of it passes; and
a fault found in the middle of the archive fails it as one stream would, leaving no
target behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.e2e.test_which_copy import damage
from tests.support.tree import MTIME_1975, MTIME_2090, build_fidelity_tree, differences, snapshot

pytestmark = pytest.mark.e2e
FORMATS = [
    pytest.param(None, id="dedup"),
    pytest.param("tar", id="tar", marks=pytest.mark.archive_format("tar")),
]


def build_wide_tree(root: Path) -> None:
    """The fidelity tree and over a thousand files in 24 directories: every fourth read-only
    and owned by 999, each with a recorded mtime and hard links to files of the directory
    before it; a few files of some MiB among them."""
    build_fidelity_tree(root)
    directories = [root / "wide" / f"d{number:02}" for number in range(24)]
    for number, directory in enumerate(directories):
        directory.mkdir(parents=True)
        for file in range(50):
            size = (2 << 20) + file if file == 0 and number % 6 == 0 else 100 + file * number
            (directory / f"f{file:02}").write_bytes(os.urandom(size))
        if number:
            os.link(directories[number - 1] / "f01", directory / "hard_to_previous")
    for number, directory in enumerate(directories):
        if number % 4 == 0:
            os.chown(directory, 999, 999)
            os.chmod(directory, 0o555)
        os.utime(directory, (MTIME_1975 + number, MTIME_1975 + number))
    os.utime(root / "wide", (MTIME_2090, MTIME_2090))


def backed_up_wide(api: docker.APIClient, volumes, workspace: Workspace, name: str) -> str:  # type: ignore[no-untyped-def]
    source = volumes(name)
    build_wide_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})
    assert (backup := workspace.run("backup", "app")).returncode == 0, backup.stderr
    return source


def extracted_in_streams(stderr: str) -> list[int]:
    """The stream counts the log says the restores extracted in, in parallel."""
    return [
        record["streams"]
        for line in stderr.splitlines()
        if line.startswith("{")
        and (record := json.loads(line)).get("event") == "extracting in parallel streams"
    ]


@pytest.mark.parametrize("archive_format", FORMATS)
def test_a_wide_volume_restores_and_drills_exactly_through_parallel_streams(
    api: docker.APIClient, volumes, workspace: Workspace, archive_format: str | None
) -> None:
    source = backed_up_wide(api, volumes, workspace, "wide")
    target = source + "_restored"
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 0, restore.stderr
        assert extracted_in_streams(restore.stderr) == [2] or os.cpu_count() != 2
        assert extracted_in_streams(restore.stderr)  # split, whatever the CPU count
        before, after = snapshot(mountpoint(api, source)), snapshot(mountpoint(api, target))
        assert differences(before, after) == []
    finally:
        api.remove_volume(target, force=True)
    drill = workspace.run("drill", "app")
    assert drill.returncode == 0, drill.stderr
    assert extracted_in_streams(drill.stderr)


def largest(paths: list[Path]) -> Path:
    return max(paths, key=lambda path: path.stat().st_size)


@pytest.mark.parametrize("archive_format", FORMATS)
def test_a_fault_mid_archive_fails_the_parallel_restore_and_leaves_no_target(
    api: docker.APIClient, volumes, workspace: Workspace, archive_format: str | None
) -> None:
    source = backed_up_wide(api, volumes, workspace, "wide_fault")
    stored = [path for path in workspace.storage.rglob("*") if path.is_file()]
    if archive_format == "tar":  # the SHA-256 tells, after the last piece
        damage(largest([path for path in stored if ".tar." in path.name]))
    else:  # the pack's chunks tell, in the middle of the stream
        damage(largest([path for path in stored if "packs" in path.parts]))
    target = source + "_restored"
    restore = workspace.run("restore", "app", "--volume", source, "--to", target)
    assert restore.returncode == 1
    assert extracted_in_streams(restore.stderr)
    lines = [line for line in restore.stderr.splitlines() if line.startswith("volkeep:")]
    assert lines and ("SHA-256" in lines[-1] or "corrupt" in lines[-1] or "pack" in lines[-1])
    assert target not in {volume["Name"] for volume in api.volumes()["Volumes"] or []}
