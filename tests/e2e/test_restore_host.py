"""Restore onto the host (issue 22): a whole archive into a directory, one file to standard
output; without the Docker engine, under the same path-safety rules as a volume restore."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.e2e.test_encryption import age, flip_byte, new_key, write_identity
from tests.support.hostile import HOSTILE_MEMBERS, plant_archive
from tests.support.tree import build_fidelity_tree, differences, snapshot

pytestmark = pytest.mark.e2e

NO_ENGINE = "unix:///nonexistent/docker.sock"  # proves that no helper, no volume is used


def without_engine(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run volkeep with no Docker engine it could reach; keep stdout as bytes."""
    environment = {**os.environ, "DOCKER_HOST": NO_ENGINE}
    return subprocess.run(
        workspace.command(*args), capture_output=True, timeout=300, cwd=ROOT, env=environment
    )


def backed_up_tree(api, volumes, workspace: Workspace, **policy: object) -> str:  # type: ignore[no-untyped-def]
    source = volumes("tree")
    build_fidelity_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source], **policy}})
    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    return source


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_an_archive_restores_into_a_host_directory_object_for_object_without_docker(
    api, volumes, workspace, encrypted
):
    policy: dict[str, object] = {}
    if encrypted:
        secret, public = new_key()
        identity = write_identity(workspace.root / "identity.txt", secret)
        policy["encryption"] = age([public], identity)
    source = backed_up_tree(api, volumes, workspace, **policy)
    directory = workspace.root / "restored" / "here"  # created, parents too

    restore = without_engine(
        workspace, "restore", "app", "--volume", source, "--to-dir", str(directory)
    )

    assert restore.returncode == 0, restore.stderr
    assert differences(snapshot(mountpoint(api, source)), snapshot(directory)) == []
    assert f"into {directory}".encode() in restore.stdout


def test_a_directory_that_holds_something_needs_force_and_nothing_is_written_through_its_symlinks(
    api, volumes, workspace, tmp_path
):
    source = volumes("data")
    (mountpoint(api, source) / "data").write_text("from the archive")
    (mountpoint(api, source) / "sub").mkdir()
    (mountpoint(api, source) / "sub" / "file").write_text("under a directory")
    workspace.write_config({"app": {"volumes": [source]}})
    assert workspace.run("backup", "app").returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("precious")
    directory = tmp_path / "target"
    directory.mkdir()
    (directory / "data").symlink_to(outside / "precious")  # a file of the archive's name
    (directory / "sub").symlink_to(outside)  # a directory of the archive's name
    command = ("restore", "app", "--volume", source, "--to-dir", str(directory))

    refused = without_engine(workspace, *command)
    assert refused.returncode == 1
    assert b"not empty; use --force" in refused.stderr
    assert os.readlink(directory / "data") == str(outside / "precious")

    forced = without_engine(workspace, *command, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (directory / "data").read_text() == "from the archive"
    assert not (directory / "data").is_symlink() and not (directory / "sub").is_symlink()
    assert (directory / "sub" / "file").read_text() == "under a directory"
    assert sorted(path.name for path in outside.iterdir()) == ["precious"]
    assert (outside / "precious").read_text() == "precious"


def test_hostile_archives_are_refused_and_the_directory_is_removed_again(
    api, volumes, workspace, tmp_path
):
    source = volumes("hostile")
    workspace.write_config({"app": {"volumes": [source]}})
    outside = tmp_path / "outside"
    outside.mkdir()
    for index, (name, build) in enumerate(HOSTILE_MEMBERS.items()):
        archive_id = plant_archive(workspace.storage, "app", source, index, build, outside)
        directory = tmp_path / f"target{index}"
        result = without_engine(
            workspace, "restore", "app", "--volume", source, "--archive", archive_id,
            "--to-dir", str(directory),
        )  # fmt: skip
        assert result.returncode == 1, (name, result.stderr)
        assert b"refused" in result.stderr, (name, result.stderr)
        assert b"Traceback" not in result.stderr
        assert not directory.exists(), f"{name}: the directory was left behind"
    assert list(outside.iterdir()) == []


def test_one_file_goes_to_stdout_and_nothing_else(api, volumes, workspace):
    source = backed_up_tree(api, volumes, workspace)
    root = mountpoint(api, source)
    wanted = next(
        path for path in sorted(root.rglob("*")) if path.is_file() and not path.is_symlink()
        and path.stat().st_size > 0
    )  # fmt: skip
    relative = str(wanted.relative_to(root))

    restore = without_engine(
        workspace, "restore", "app", "--volume", source, f"--path={relative}", "--stdout"
    )

    assert restore.returncode == 0, restore.stderr
    assert restore.stdout == wanted.read_bytes()


def test_stdout_refuses_what_is_not_one_regular_file_of_the_volume(api, volumes, workspace):
    source = volumes("data")
    (mountpoint(api, source) / "dir").mkdir()
    (mountpoint(api, source) / "dir" / "file").write_text("x")
    (mountpoint(api, source) / "link").symlink_to("dir/file")
    workspace.write_config({"app": {"volumes": [source]}})
    assert workspace.run("backup", "app").returncode == 0
    restore = ("restore", "app", "--volume", source, "--stdout", "--path")

    for path, expected in (
        ("dir", b"holds a dir at 'dir'"),
        ("link", b"holds a symlink at 'link'"),
        ("missing", b"holds nothing at 'missing'"),
        ("../etc/passwd", b"must stay inside the volume"),
        ("/etc/passwd", b"must stay inside the volume"),
    ):
        result = without_engine(workspace, *restore, path)
        assert result.returncode == 2, (path, result.stderr)
        assert expected in result.stderr, (path, result.stderr)
        assert result.stdout == b""
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.archive_format("tar")
def test_a_damaged_archive_leaves_no_directory_that_looks_restored(api, volumes, workspace):
    source = backed_up_tree(api, volumes, workspace, compression="none")
    (stored,) = workspace.archive_dir("app", source).glob("*.tar")
    flip_byte(stored, stored.stat().st_size // 2)  # inside a file's data: found at the end
    directory = workspace.root / "target"

    restore = without_engine(
        workspace, "restore", "app", "--volume", source, "--to-dir", str(directory)
    )

    assert restore.returncode == 1
    assert b"SHA-256 mismatch" in restore.stderr, restore.stderr
    assert not directory.exists()
