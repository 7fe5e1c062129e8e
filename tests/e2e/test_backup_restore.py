"""The foundation, as an operator's session: back up a volume, list it, restore it, compare."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support import manifests
from tests.support.own_host import on_a_host_of_its_own, own_host_name, pinned_host
from tests.support.tree import build_fidelity_tree, differences, snapshot


def archives(workspace: Workspace, *args: str) -> list[dict[str, object]]:
    result = workspace.run("list", *args, "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def test_round_trip_keeps_every_object_kind(api, volumes, workspace):
    source = volumes("fidelity")
    build_fidelity_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})

    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    target = source + "_restored"
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 0, restore.stderr
        before = snapshot(mountpoint(api, source))
        after = snapshot(mountpoint(api, target))
        assert differences(before, after) == []
        assert len(after) > 130
    finally:
        api.remove_volume(target, force=True)


@pytest.mark.archive_format("tar")
def test_list_reads_only_the_storage(api, volumes, workspace):
    source = volumes("listed")
    (mountpoint(api, source) / "file").write_text("content")
    workspace.write_config({"app": {"volumes": [source]}})
    assert workspace.run("backup", "app").returncode == 0
    shutil.rmtree(workspace.state_dir)

    listed = archives(workspace)

    assert [entry["volume"] for entry in listed] == [source]
    entry = listed[0]
    assert set(entry) >= {"id", "policy", "volume", "created", "size", "sha256", "compression"}
    assert entry["compression"] == "zstd" and entry["encrypted"] is False
    stored = next(workspace.archive_dir("app", source).glob("*.tar.zst"))
    assert entry["size"] == stored.stat().st_size
    assert stored.stat().st_mode & 0o777 == 0o600


def test_exclude_patterns_leave_matching_paths_out(api, volumes, workspace):
    source = volumes("exclude")
    root = mountpoint(api, source)
    for path in ["cache/a", "sub/cache/b", "keep.txt", "x.tmp", "sub/y.tmp", "sub/keep"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(path)
    workspace.write_config(
        {"app": {"volumes": [source], "exclude": ["cache/", "*.tmp"], "compression": "gzip"}}
    )
    assert workspace.run("backup", "app").returncode == 0
    target = source + "_restored"
    try:
        assert workspace.run("restore", "app", "--volume", source, "--to", target).returncode == 0
        restored = sorted(str(p.relative_to(mountpoint(api, target))) for p in
                          mountpoint(api, target).rglob("*"))  # fmt: skip
        assert restored == ["keep.txt", "sub", "sub/keep"]
    finally:
        api.remove_volume(target, force=True)


def test_restore_into_non_empty_volume_needs_force_and_keeps_a_safety_archive(
    api, volumes, workspace
):
    source = volumes("source")
    (mountpoint(api, source) / "data").write_text("from the backup")
    target = volumes("busy")
    (mountpoint(api, target) / "precious").write_text("current content")
    workspace.write_config({"app": {"volumes": [source, target]}})
    assert workspace.run("backup", "app", "--volume", source).returncode == 0

    refused = workspace.run("restore", "app", "--volume", source, "--to", target)

    assert refused.returncode == 1
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert (mountpoint(api, target) / "precious").read_text() == "current content"

    forced = workspace.run("restore", "app", "--volume", source, "--to", target, "--force")

    assert forced.returncode == 0, forced.stderr
    assert sorted(os.listdir(mountpoint(api, target))) == ["data"]
    safety = [entry for entry in archives(workspace) if entry["volume"] == target]
    assert len(safety) == 1 and safety[0]["kind"] == "safety"
    # the safety archive restores the previous content
    back = workspace.run(
        "restore", "app", "--volume", target, "--archive", str(safety[0]["id"]), "--force"
    )
    assert back.returncode == 0, back.stderr
    assert (mountpoint(api, target) / "precious").read_text() == "current content"


def test_restore_creates_a_missing_target_and_latest_is_the_newest(api, volumes, workspace):
    source = volumes("versions")
    workspace.write_config({"app": {"volumes": [source]}})
    for content in ("first", "second"):
        (mountpoint(api, source) / "version").write_text(content)
        assert workspace.run("backup", "app").returncode == 0
        time.sleep(1.1)  # archive ids have one-second resolution
    target = source + "_new"
    try:
        result = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert result.returncode == 0, result.stderr
        assert (mountpoint(api, target) / "version").read_text() == "second"
    finally:
        api.remove_volume(target, force=True)


@pytest.mark.archive_format("tar")
def test_kill_9_mid_backup_leaves_no_listed_archive_and_the_next_run_cleans_up(
    api, volumes, workspace
):
    source = volumes("large")
    with open(mountpoint(api, source) / "random.bin", "wb") as large:
        for _ in range(600):
            large.write(os.urandom(1 << 20))
    # other suites' volkeep processes on this machine would remove the killed backup's
    # helper before the next run could (tests/support/own_host.py)
    host = own_host_name()
    workspace.write_config({"app": {"volumes": [source]}}, daemon=pinned_host())
    process = subprocess.Popen(
        on_a_host_of_its_own(host, workspace.command("backup", "app")), stderr=subprocess.DEVNULL
    )
    directory = workspace.archive_dir("app", source)
    deadline = time.monotonic() + 60

    def streaming() -> bool:
        partial = list(directory.glob(".*.partial"))
        return bool(partial) and partial[0].stat().st_size > 0

    while not streaming() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streaming(), "the backup never started writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    assert archives(workspace) == []
    leftovers = api.containers(all=True, filters={"label": f"volkeep.volume={source}"})
    assert leftovers, "expected the killed backup's helper to be left behind"

    next_run = subprocess.run(
        on_a_host_of_its_own(host, workspace.command("backup", "app")),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert next_run.returncode == 0, next_run.stderr

    assert api.containers(all=True, filters={"label": f"volkeep.volume={source}"}) == []
    assert list(directory.glob(".*.partial")) == []
    assert len(archives(workspace)) == 1


def test_hostile_archives_are_refused_and_nothing_is_written(api, volumes, workspace, tmp_path):
    from tests.support.hostile import HOSTILE_MEMBERS, plant_archive

    source = volumes("hostile")
    workspace.write_config({"app": {"volumes": [source]}})
    outside = tmp_path / "outside"
    outside.mkdir()
    for index, (name, build) in enumerate(HOSTILE_MEMBERS.items()):
        archive_id = plant_archive(workspace.storage, "app", source, index, build, outside)
        target = f"{source}_t{index}"
        result = workspace.run(
            "restore", "app", "--volume", source, "--archive", archive_id, "--to", target
        )
        assert result.returncode == 1, (name, result.stderr)
        assert "refused" in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
        with_target = [v["Name"] for v in api.volumes()["Volumes"] or [] if v["Name"] == target]
        assert with_target == [], f"{name}: the target volume was left behind"
    assert list(outside.iterdir()) == []


def test_bad_input_gets_one_clear_line_and_the_right_exit_code(api, volumes, workspace):
    source = volumes("present")
    workspace.write_config({"app": {"volumes": [source, "vkt_absent_volume"]}})

    unknown_policy = workspace.run("backup", "nope")
    assert unknown_policy.returncode == 2 and "unknown policy 'nope'" in unknown_policy.stderr

    missing_volume = workspace.run("backup", "app")
    assert missing_volume.returncode == 1
    assert "vkt_absent_volume" in missing_volume.stderr
    assert "Traceback" not in missing_volume.stderr
    assert [entry["volume"] for entry in archives(workspace)] == [source]  # the other one ran

    no_archive = workspace.run("restore", "app", "--volume", "vkt_absent_volume")
    assert no_archive.returncode == 1 and "no archive" in no_archive.stderr

    dead = subprocess.run(
        workspace.command("backup", "app"),
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert dead.returncode == 1
    assert dead.stderr.strip().startswith("volkeep: the Docker engine does not answer")
    assert len(dead.stderr.strip().splitlines()) == 1


@pytest.mark.archive_format("tar")
def test_corrupt_archive_is_refused_before_the_target_is_touched(api, volumes, workspace):
    source = volumes("corrupt")
    (mountpoint(api, source) / "file").write_bytes(os.urandom(1 << 20))
    workspace.write_config({"app": {"volumes": [source]}})
    assert workspace.run("backup", "app").returncode == 0
    stored = next(workspace.archive_dir("app", source).glob("*.tar.zst"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    (mountpoint(api, source) / "file").write_text("changed since")

    result = workspace.run("restore", "app", "--volume", source, "--force")

    assert result.returncode == 1
    assert "SHA-256 mismatch" in result.stderr or "corrupt archive" in result.stderr
    assert (mountpoint(api, source) / "file").read_text() == "changed since"


def test_full_storage_fails_cleanly_and_publishes_nothing(api, volumes, workspace):
    source = volumes("nospace")
    with open(mountpoint(api, source) / "random.bin", "wb") as large:
        large.write(os.urandom(4 << 20))
    workspace.storage.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(workspace.storage)], check=True
    )
    try:
        workspace.write_config({"app": {"volumes": [source]}})
        result = workspace.run("backup", "app")
        assert result.returncode == 1
        assert "No space left on device" in result.stderr
        assert "Traceback" not in result.stderr
        leftovers = [p for p in Path(workspace.storage).rglob("*") if p.is_file()]
        # the host's marker (docs/fleet.md) claims its name before the first byte of an
        # archive, and the chunk repository's config (docs/format-dedup.md) comes before
        # its first pack: nothing of the archive is left
        host = workspace.archive_dir("app", source).parents[1]
        assert sorted(str(path.relative_to(host)) for path in leftovers) == [
            ".volkeep-host.json",
            "app/_chunks/config",
        ]
        assert api.containers(all=True, filters={"label": f"volkeep.volume={source}"}) == []
    finally:
        subprocess.run(["umount", str(workspace.storage)], check=True)


def test_helpers_run_locked_down(api, volumes, workspace, helper_image):
    """The helper's configuration as the engine reports it: read-only, no network, no caps."""
    from daemon.engine.helpers import Mount, helper_container

    source = volumes("locked")
    with helper_container(api, helper_image, ["true"], [Mount(source, "/src")]) as helper:
        info = api.inspect_container(helper)
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["DAC_READ_SEARCH"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["LogConfig"]["Type"] == "none"
    assert [m["ReadOnly"] for m in host["Mounts"]] == [True]
    try:
        api.inspect_container(helper)
        raise AssertionError("the helper outlived its block")
    except docker.errors.NotFound:
        pass


def test_a_gnu_tar_helper_also_keeps_extended_attributes_and_sub_second_mtimes(
    api, volumes, workspace
):
    subprocess.run([ROOT / "scripts" / "build-helper-image.sh", "--gnu-tar"], check=True)
    workspace.helper_image = "volkeep-helper:gnutar"
    source = volumes("gnu")
    root = mountpoint(api, source)
    build_fidelity_tree(root)
    os.setxattr(root / "small.txt", "user.origin", b"volkeep test")
    os.utime(root / "zero", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    workspace.write_config({"app": {"volumes": [source]}})
    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    manifest = manifests.summary(next(workspace.archive_dir("app", source).glob("*.manifest.json")))
    assert manifest["tar"]["flavour"] == "gnu"
    target = source + "_restored"
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 0, restore.stderr
        restored = mountpoint(api, target)
        assert differences(snapshot(root), snapshot(restored)) == []
        assert os.getxattr(restored / "small.txt", "user.origin") == b"volkeep test"
        assert os.stat(restored / "zero").st_mtime_ns == 1_700_000_000_123_456_789
    finally:
        api.remove_volume(target, force=True)
