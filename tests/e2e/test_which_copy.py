"""Which copy, and storages failing on their own (SPEC promises 9 and 14), end to end: a
local storage beside a real SeaweedFS bucket, the real engine, volkeep as a process.

A restore, a drill or a list uses the first storage that holds a committed, intact copy;
a corrupt, uncommitted or unreachable copy is named in one line and passed over. A storage
that cannot even be set up fails alone."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.support.seaweed import S3Bucket
from tests.support.tree import differences, snapshot

pytestmark = pytest.mark.e2e


def two_storages(workspace: Workspace, bucket: S3Bucket, volume: str, **offsite: object) -> None:
    workspace.write_config(
        {"app": {"volumes": [volume], "storage": ["local", "offsite"]}},
        # one attempt: the tests that stop the server need no retries to prove their point
        storages={"offsite": {**bucket.storage(), "max_attempts": 1, **offsite}},
    )


def filled(api: docker.APIClient, volumes, name: str) -> str:  # type: ignore[no-untyped-def]
    source = volumes(name)
    root = mountpoint(api, source)
    (root / "data").write_bytes(os.urandom(3 << 20))
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_text("first\n")
    return source


def backed_up(workspace: Workspace) -> str:
    """Back up policy app and return the new archive's id (both storages hold it)."""
    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    ids = {row["id"] for row in listed(workspace)}
    assert len(ids) == 1, ids
    return str(ids.pop())


def listed(workspace: Workspace, *args: str) -> list[dict[str, object]]:
    result = workspace.run("list", "app", "--json", *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def volkeep_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("volkeep:")]


def passed_over(stderr: str) -> list[dict[str, object]]:
    """The log records of the copies a restore, drill or list passed over."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "copy passed over":
                records.append(record)
    return records


def local_body(workspace: Workspace, volume: str, archive: str) -> Path:
    (body,) = workspace.archive_dir("app", volume).glob(f"{volume}-{archive}.tar.*")
    return body


def damage(body: Path) -> None:
    """Flip bytes in the middle of a stored archive: same size, only its SHA-256 tells."""
    damaged = bytearray(body.read_bytes())
    for offset in range(len(damaged) // 2, len(damaged) // 2 + 64):
        damaged[offset] ^= 0xFF
    body.write_bytes(bytes(damaged))


def remove_if_there(api: docker.APIClient, volume: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_volume(volume, force=True)


@pytest.mark.archive_format("tar")
def test_a_corrupt_local_copy_is_named_and_the_restore_comes_from_s3(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "corrupt_local")
    two_storages(workspace, s3_bucket, source)
    archive = backed_up(workspace)
    damage(local_body(workspace, source, archive))

    target = source + "_restored"
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 0, restore.stderr
        assert f"from offsite into {target}" in restore.stdout
        (record,) = passed_over(restore.stderr)
        assert record["storage"] == "local" and "SHA-256" in str(record["reason"])
        assert (
            differences(snapshot(mountpoint(api, source)), snapshot(mountpoint(api, target))) == []
        )
    finally:
        remove_if_there(api, target)


@pytest.mark.archive_format("tar")
def test_a_corrupt_copy_found_while_checking_for_a_forced_restore_is_passed_over(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "corrupt_forced")
    two_storages(workspace, s3_bucket, source)
    archive = backed_up(workspace)
    expected = snapshot(mountpoint(api, source))
    damage(local_body(workspace, source, archive))
    (mountpoint(api, source) / "notes" / "a.txt").write_text("changed since\n")

    restore = workspace.run("restore", "app", "--volume", source, "--force")

    assert restore.returncode == 0, restore.stderr
    assert "from offsite" in restore.stdout and "-safety" in restore.stdout
    assert [record["storage"] for record in passed_over(restore.stderr)] == ["local"]
    assert differences(expected, snapshot(mountpoint(api, source))) == []


def test_an_uncommitted_local_copy_is_passed_over(api, volumes, workspace, s3_bucket):
    source = filled(api, volumes, "uncommitted")
    two_storages(workspace, s3_bucket, source)
    archive = backed_up(workspace)
    (workspace.archive_dir("app", source) / f"{source}-{archive}.manifest.json").unlink()

    target = source + "_restored"
    try:
        restore = workspace.run(
            "restore", "app", "--volume", source, "--archive", archive, "--to", target
        )
        assert restore.returncode == 0, restore.stderr
        assert "from offsite" in restore.stdout
        (record,) = passed_over(restore.stderr)
        assert record["storage"] == "local" and "no manifest" in str(record["reason"])
        assert (
            differences(snapshot(mountpoint(api, source)), snapshot(mountpoint(api, target))) == []
        )
    finally:
        remove_if_there(api, target)


@pytest.mark.archive_format("tar")
def test_a_restore_with_every_copy_broken_names_each_and_changes_nothing(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "all_broken")
    two_storages(workspace, s3_bucket, source)
    archive = backed_up(workspace)
    local_body(workspace, source, archive).unlink()
    s3_bucket.server.stop()
    try:
        target = source + "_restored"
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
    finally:
        s3_bucket.server.start()

    assert restore.returncode == 1
    (line,) = volkeep_lines(restore.stderr)
    assert "'local'" in line and "archive file missing" in line and "'offsite'" in line
    assert "Traceback" not in restore.stderr
    assert not api.volumes(filters={"name": target})["Volumes"]


def test_list_with_s3_down_shows_the_local_archives_names_s3_and_exits_1(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "list_down")
    two_storages(workspace, s3_bucket, source)
    archive = backed_up(workspace)
    s3_bucket.server.stop()
    try:
        as_json = workspace.run("list", "app", "--json")
        as_table = workspace.run("list", "app")
    finally:
        s3_bucket.server.start()

    assert as_json.returncode == 1 and as_table.returncode == 1
    rows = json.loads(as_json.stdout)
    assert [(row["storage"], row["id"]) for row in rows] == [("local", archive)]
    assert archive in as_table.stdout and "local" in as_table.stdout
    for result in (as_json, as_table):
        (line,) = volkeep_lines(result.stderr)
        assert "'offsite'" in line and "Traceback" not in result.stderr


def test_a_profile_missing_from_the_credentials_file_fails_only_that_storage(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "no_profile")
    two_storages(workspace, s3_bucket, source, profile="absent")

    backup = workspace.run("backup", "app")

    assert backup.returncode == 1, backup.stderr
    assert "internal error" not in backup.stderr
    last = volkeep_lines(backup.stderr)[-1]
    assert "'offsite'" in last and "'absent'" in last
    rows = listed(workspace, "--storage", "local")
    assert [row["volume"] for row in rows] == [source]

    validate = workspace.run("validate")
    assert validate.returncode == 2
    config_text = workspace.config.read_text().splitlines()
    offsite_line = next(n for n, text in enumerate(config_text, 1) if text.strip() == "offsite:")
    (line,) = volkeep_lines(validate.stderr)
    assert f"{workspace.config}:{offsite_line}:" in line
    assert "storage.offsite" in line and "'absent'" in line


@pytest.mark.archive_format("tar")
def test_storage_class_goes_to_archive_bodies_not_to_manifests_or_drill_records(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "storage_class")
    two_storages(workspace, s3_bucket, source, storage_class="STANDARD_IA")
    backed_up(workspace)
    drill = workspace.run("drill", "app", "--storage", "offsite")
    assert drill.returncode == 0, drill.stdout + drill.stderr

    client = s3_bucket.server.client()
    classes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name):
        for item in page.get("Contents", []):
            head = client.head_object(Bucket=s3_bucket.name, Key=item["Key"])
            classes[item["Key"].rsplit(".", 2)[-2:][0]] = head.get("StorageClass")
    # the host record (`<host>/.volkeep-host.json`) is a small record too
    assert classes == {"tar": "STANDARD_IA", "manifest": None, "drill": None, "volkeep-host": None}


def test_a_forced_restore_whose_safety_archive_missed_a_storage_says_so_and_exits_1(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "safety_partial")
    two_storages(workspace, s3_bucket, source)
    backed_up(workspace)
    expected = snapshot(mountpoint(api, source))
    (mountpoint(api, source) / "notes" / "a.txt").write_text("changed since\n")
    s3_bucket.server.stop()
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--force")
    finally:
        s3_bucket.server.start()

    assert restore.returncode == 1, restore.stderr
    assert "restored" in restore.stdout
    last = volkeep_lines(restore.stderr)[-1]
    assert "safety archive" in last and "'offsite'" in last and "local" in last
    assert differences(expected, snapshot(mountpoint(api, source))) == []
    safety = [row for row in listed(workspace, "--storage", "local") if row["kind"] == "safety"]
    assert len(safety) == 1 and str(safety[0]["id"]) in last


def test_a_safety_archive_past_keep_safety_archives_goes_with_the_prune_after_a_backup(
    api, volumes, workspace
):
    source = filled(api, volumes, "safety_window")
    workspace.write_config({"app": {"volumes": [source], "keep_safety_archives": "1s"}})
    backed_up(workspace)
    (mountpoint(api, source) / "notes" / "a.txt").write_text("changed since\n")
    restore = workspace.run("restore", "app", "--volume", source, "--force")
    assert restore.returncode == 0, restore.stderr
    assert [row["kind"] for row in listed(workspace)].count("safety") == 1
    time.sleep(1.5)  # past the window

    again = workspace.run("backup", "app")

    assert again.returncode == 0, again.stderr
    assert [row["kind"] for row in listed(workspace)] == ["backup", "backup"]
    assert not list(workspace.archive_dir("app", source).glob("*-safety*"))


@pytest.mark.archive_format("tar")
def test_a_forced_restore_that_fails_says_where_the_safety_archive_is(
    api, volumes, workspace, s3_bucket
):
    source = filled(api, volumes, "safety_failed")
    two_storages(workspace, s3_bucket, source)
    archive = backed_up(workspace)
    (mountpoint(api, source) / "notes" / "a.txt").write_text("only here\n")
    damage(local_body(workspace, source, archive))
    s3_bucket.server.stop()  # the safety archive reaches local only; no intact copy left
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--force")
    finally:
        s3_bucket.server.start()

    assert restore.returncode == 1
    (line,) = volkeep_lines(restore.stderr)
    (safety,) = [row for row in listed(workspace, "--storage", "local") if row["kind"] == "safety"]
    assert f"safety archive {safety['id']} in storage 'local'" in line
    assert "SHA-256" in line and "'offsite'" in line
    assert (mountpoint(api, source) / "notes" / "a.txt").read_text() == "only here\n"
