"""Restore as an operator meets it: never under a running application, never losing the
archive to a concurrent prune, one pass that leaves nothing behind when it fails, and
single files found and restored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.e2e.test_consistency import IDLE, start_service, state

pytestmark = pytest.mark.e2e


def backed_up(api, volumes, workspace: Workspace, name: str, **policy: object) -> str:  # type: ignore[no-untyped-def]
    source = volumes(name)
    root = mountpoint(api, source)
    (root / "uploads" / "2024").mkdir(parents=True)
    (root / "uploads" / "2024" / "cat.jpg").write_bytes(os.urandom(50_000))
    (root / "uploads" / "2025").mkdir()
    (root / "uploads" / "2025" / "dog.jpg").write_bytes(os.urandom(40_000))
    (root / "config.yml").write_text("port: 80\n")
    workspace.write_config({"app": {"volumes": [source], **policy}})
    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    return source


def volkeep_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("volkeep:")]


def test_a_target_a_running_container_uses_is_refused_and_left_untouched(
    api, volumes, workspace, helper_image
):
    source = backed_up(api, volumes, workspace, "live")
    (mountpoint(api, source) / "config.yml").write_text("port: 8080\n")
    service = start_service(api, helper_image, source, "app", IDLE)

    refused = workspace.run("restore", "app", "--volume", source, "--force")

    assert refused.returncode == 1
    (line,) = volkeep_lines(refused.stderr)
    assert f"{source}_app" in line and "--stop-containers" in line
    assert state(api, service)["Running"] is True
    assert (mountpoint(api, source) / "config.yml").read_text() == "port: 8080\n"


def test_with_stop_containers_the_app_is_stopped_for_the_restore_and_runs_again(
    api, volumes, workspace, helper_image
):
    source = backed_up(api, volumes, workspace, "stopped")
    (mountpoint(api, source) / "config.yml").write_text("port: 8080\n")
    service = start_service(api, helper_image, source, "app", IDLE)
    started = state(api, service)["StartedAt"]

    restore = workspace.run("restore", "app", "--volume", source, "--force", "--stop-containers")

    assert restore.returncode == 0, restore.stderr
    assert (mountpoint(api, source) / "config.yml").read_text() == "port: 80\n"
    assert state(api, service)["Running"] is True
    assert state(api, service)["StartedAt"] != started, "it was never stopped"


def test_kill_9_during_a_restore_with_stopped_containers_the_next_command_starts_them(
    api, volumes, workspace, helper_image
):
    source = backed_up(api, volumes, workspace, "killed")
    with open(mountpoint(api, source) / "big.bin", "wb") as big:
        for _ in range(150):
            big.write(os.urandom(1 << 20))
    assert workspace.run("backup", "app").returncode == 0
    service = start_service(api, helper_image, source, "app", IDLE)
    restore = subprocess.Popen(
        workspace.command("restore", "app", "--volume", source, "--force", "--stop-containers"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while state(api, service)["Running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state(api, service)["Running"], "the restore never stopped the app"
    restore.send_signal(signal.SIGKILL)
    restore.wait()

    assert workspace.run("list", "app").returncode == 0
    next_command = workspace.run("drill", "app")

    assert next_command.returncode in (0, 1)
    assert state(api, service)["Running"] is True


def test_a_prune_cannot_remove_the_archive_a_restore_reads(api, volumes, workspace):
    source = backed_up(api, volumes, workspace, "raced", retention={"keep_last": 1})
    with open(mountpoint(api, source) / "big.bin", "wb") as big:
        for _ in range(300):
            big.write(os.urandom(1 << 20))
    assert workspace.run("backup", "app").returncode == 0
    (chosen,) = json.loads(workspace.run("list", "app", "--json").stdout)
    target = source + "_copy"
    restore = subprocess.Popen(
        workspace.command("restore", "app", "--volume", source, "--to", target),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    extracting = {"label": f"volkeep.volume={target}"}
    deadline = time.monotonic() + 30
    while not api.containers(all=True, filters=extracting) and time.monotonic() < deadline:
        time.sleep(0.02)
    (mountpoint(api, source) / "config.yml").write_text("newer\n")
    backup = workspace.run("backup", "app")  # its prune would delete the archive being read
    _, stderr = restore.communicate(timeout=120)

    try:
        assert restore.returncode == 0, stderr
        assert backup.returncode == 1 and "volume is busy" in backup.stderr
        assert (mountpoint(api, target) / "big.bin").stat().st_size == 300 << 20
        listed = json.loads(workspace.run("list", "app", "--json").stdout)
        assert [entry["id"] for entry in listed] == [chosen["id"]]
    finally:
        api.remove_volume(target, force=True)


@pytest.mark.archive_format("tar")
def test_a_fault_found_late_in_a_one_pass_restore_leaves_no_target(api, volumes, workspace):
    source = backed_up(api, volumes, workspace, "late")
    (archive,) = workspace.archive_dir("app", source).glob("*.tar.zst")
    data = bytearray(archive.read_bytes())
    data[-3] ^= 0xFF  # the very end: found only after everything was extracted
    archive.write_bytes(bytes(data))
    target = source + "_never"

    restore = workspace.run("restore", "app", "--volume", source, "--to", target)

    assert restore.returncode == 1
    (line,) = volkeep_lines(restore.stderr)
    assert "SHA-256" in line or "corrupt" in line or "truncated" in line, line
    assert api.volumes(filters={"name": target}).get("Volumes") in (None, [])


def test_path_restores_exactly_the_matching_members_and_files_lists_them(api, volumes, workspace):
    source = backed_up(api, volumes, workspace, "partial")
    root = mountpoint(api, source)
    original = (root / "uploads" / "2024" / "cat.jpg").read_bytes()
    (root / "uploads" / "2024" / "cat.jpg").unlink()
    (root / "config.yml").write_text("changed since\n")

    files = workspace.run("list", "app", "--volume", source, "--files", "uploads/2024/")
    assert files.returncode == 0, files.stderr
    listed = [line.split()[-1] for line in files.stdout.splitlines()]
    assert listed == ["uploads", "uploads/2024", "uploads/2024/cat.jpg"]
    everything = workspace.run("list", "app", "--volume", source, "--files", "--json")
    assert {entry["path"] for entry in json.loads(everything.stdout)} >= {
        "config.yml",
        "uploads/2025/dog.jpg",
    }

    refused = workspace.run("restore", "app", "--volume", source, "--path", "uploads/2024/")
    assert refused.returncode == 1 and "--force" in refused.stderr
    restore = workspace.run(
        "restore", "app", "--volume", source, "--path", "uploads/2024/", "--force"
    )

    assert restore.returncode == 0, restore.stderr
    assert (root / "uploads" / "2024" / "cat.jpg").read_bytes() == original
    assert (root / "config.yml").read_text() == "changed since\n"  # not matched: untouched
    assert (root / "uploads" / "2025" / "dog.jpg").exists()
    nothing = workspace.run("restore", "app", "--volume", source, "--path", "nope/", "--force")
    assert nothing.returncode == 2 and "matches" in nothing.stderr


def test_a_forced_restore_into_another_volume_leaves_the_policys_drills_passing(
    api, volumes, workspace
):
    source = backed_up(api, volumes, workspace, "drilled_after")
    other = volumes("other")
    (mountpoint(api, other) / "previous").write_text("kept in the safety archive")

    restore = workspace.run("restore", "app", "--volume", source, "--to", other, "--force")
    assert restore.returncode == 0, restore.stderr
    assert "-safety" in restore.stdout

    drill = workspace.run("drill", "app")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert f"app/{source}" in drill.stdout and f"app/{other}" not in drill.stdout


def test_a_half_restored_volume_left_by_kill_9_is_removed_by_the_next_command(
    api, volumes, workspace
):
    source = backed_up(api, volumes, workspace, "halfway")
    with open(mountpoint(api, source) / "big.bin", "wb") as big:
        for _ in range(200):
            big.write(os.urandom(1 << 20))
    assert workspace.run("backup", "app").returncode == 0
    target = source + "_half"
    restore = subprocess.Popen(
        workspace.command("restore", "app", "--volume", source, "--to", target),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not api.volumes(filters={"name": target}).get("Volumes") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    restore.send_signal(signal.SIGKILL)
    restore.wait()
    assert api.volumes(filters={"name": target}).get("Volumes"), "no target was created"

    assert workspace.run("drill", "app", "--volume", source).returncode == 0

    assert not api.volumes(filters={"name": target}).get("Volumes")
    finished = source + "_whole"
    try:
        assert workspace.run("restore", "app", "--volume", source, "--to", finished).returncode == 0
        assert workspace.run("drill", "app", "--volume", source).returncode == 0
        assert api.volumes(filters={"name": finished}).get("Volumes"), "a finished one stays"
    finally:
        api.remove_volume(finished, force=True)
