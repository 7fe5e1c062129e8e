"""Off-site storage, end to end: a real SeaweedFS S3 server, the real engine, volkeep as a
process. Several storages per policy, hosts sharing a bucket, disaster recovery, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Workspace, assert_restores_whole, mountpoint
from tests.support.seaweed import S3Bucket
from tests.support.tree import build_fidelity_tree

pytestmark = pytest.mark.e2e


def listed(workspace: Workspace, *args: str) -> list[dict[str, object]]:
    result = workspace.run("list", "app", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("volkeep:")]
    assert lines, stderr
    return lines[-1]


def offsite_policy(workspace: Workspace, bucket: S3Bucket, volume: str, **policy: object) -> None:
    workspace.write_config(
        {"app": {"volumes": [volume], "storage": "offsite", **policy}},
        storages={"offsite": bucket.storage("prod/")},
    )


def keys(bucket: S3Bucket) -> list[str]:
    client = bucket.server.client()
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name):
        found += [item["Key"] for item in page.get("Contents", [])]
    return sorted(found)


def uploads(bucket: S3Bucket) -> list[str]:
    answer = bucket.server.client().list_multipart_uploads(Bucket=bucket.name)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def test_the_fidelity_tree_round_trips_through_s3_and_drills(api, volumes, workspace, s3_bucket):
    source = volumes("fidelity")
    build_fidelity_tree(mountpoint(api, source))
    offsite_policy(workspace, s3_bucket, source)

    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    (entry,) = listed(workspace)
    assert entry["storage"] == "offsite"
    assert any(
        key.startswith("prod/") and key.endswith(".manifest.json") for key in keys(s3_bucket)
    )
    assert_restores_whole(api, workspace, source)
    drill = workspace.run("drill", "app")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert listed(workspace)[0]["drill"]["verdict"] == "passed"  # type: ignore[index]


def test_one_storage_failing_does_not_stop_the_other(api, volumes, workspace, s3_bucket):
    source = volumes("fanout")
    (mountpoint(api, source) / "data").write_bytes(os.urandom(1 << 20))
    workspace.write_config(
        {"app": {"volumes": [source], "storage": ["local", "offsite"]}},
        storages={"offsite": s3_bucket.storage()},
    )
    s3_bucket.server.stop()
    try:
        backup = workspace.run("backup", "app", timeout=120)
    finally:
        s3_bucket.server.start()

    assert backup.returncode == 1
    assert "'offsite'" in last_line(backup.stderr) and "Traceback" not in backup.stderr
    assert [entry["storage"] for entry in listed(workspace)] == ["local"]
    target = source + "_from_local"
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 0, restore.stderr
        assert (mountpoint(api, target) / "data").read_bytes() == (
            mountpoint(api, source) / "data"
        ).read_bytes()
    finally:
        api.remove_volume(target, force=True)

    again = workspace.run("backup", "app")
    assert again.returncode == 0, again.stderr
    assert sorted(entry["storage"] for entry in listed(workspace)) == ["local", "local", "offsite"]


def _backup_in_flight(workspace: Workspace, bucket: S3Bucket) -> subprocess.Popen[str]:
    """Start a backup and return once its multipart upload has begun."""
    process = subprocess.Popen(
        workspace.command("backup", "app"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not uploads(bucket):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no multipart upload began"
        time.sleep(0.05)
    return process


def big_volume(api, volumes, name: str) -> str:  # type: ignore[no-untyped-def]
    source = volumes(name)
    for number in range(6):  # random: compression cannot shrink it
        (mountpoint(api, source) / f"blob{number}").write_bytes(os.urandom(20 << 20))
    return source


@pytest.mark.archive_format("tar")
def test_s3_server_killed_mid_upload_then_the_next_backup_succeeds_and_aborts_the_stale_upload(
    api, volumes, workspace, s3_bucket
):
    source = big_volume(api, volumes, "serverkill")
    offsite_policy(workspace, s3_bucket, source, compression={"algorithm": "zstd", "level": 19})
    backup = _backup_in_flight(workspace, s3_bucket)
    s3_bucket.server.kill()
    try:
        _, stderr = backup.communicate(timeout=180)
    finally:
        s3_bucket.server.start()

    assert backup.returncode == 1
    assert "'offsite'" in last_line(stderr) and "Traceback" not in stderr
    assert listed(workspace) == []
    offsite_policy(workspace, s3_bucket, source)  # fast again
    again = workspace.run("backup", "app")
    assert again.returncode == 0, again.stderr
    assert len(listed(workspace)) == 1
    assert uploads(s3_bucket) == []


@pytest.mark.archive_format("tar")
def test_kill_9_of_volkeep_mid_upload_lists_nothing_and_the_next_backup_cleans_up(
    api, volumes, workspace, s3_bucket
):
    source = big_volume(api, volumes, "clientkill")
    offsite_policy(workspace, s3_bucket, source, compression={"algorithm": "zstd", "level": 19})
    backup = _backup_in_flight(workspace, s3_bucket)
    backup.send_signal(signal.SIGKILL)
    backup.wait()

    assert listed(workspace) == []
    assert uploads(s3_bucket) != []
    offsite_policy(workspace, s3_bucket, source)
    again = workspace.run("backup", "app")
    assert again.returncode == 0, again.stderr
    assert len(listed(workspace)) == 1
    assert uploads(s3_bucket) == []
    assert [key for key in keys(s3_bucket) if key.endswith(".tar.zst")] == [
        key for key in keys(s3_bucket) if key.endswith(".tar.zst") and listed(workspace)
    ]


def test_each_storage_keeps_archives_by_its_own_rules(api, volumes, workspace, s3_bucket):
    source = volumes("rotated")
    (mountpoint(api, source) / "file").write_text("v")
    workspace.write_config(
        {
            "app": {
                "volumes": [source],
                "storage": ["local", {"name": "offsite", "retention": {"keep_last": 3}}],
                "retention": {"keep_last": 1},
            }
        },
        storages={"offsite": s3_bucket.storage()},
    )
    for round_number in range(4):
        (mountpoint(api, source) / "file").write_text(f"v{round_number}")
        backup = workspace.run("backup", "app")
        assert backup.returncode == 0, backup.stderr
        time.sleep(1.1)  # ids are whole seconds

    by_storage = [entry["storage"] for entry in listed(workspace)]
    assert by_storage.count("local") == 1
    assert by_storage.count("offsite") == 3
    assert len([key for key in keys(s3_bucket) if key.endswith(".manifest.json")]) == 3


def host_workspace(
    root: Path, helper_image: str, host: str, bucket: S3Bucket, volume: str
) -> Workspace:
    workspace = Workspace(root, helper_image)
    root.mkdir()
    workspace.write_config(
        {"app": {"volumes": [volume], "storage": "offsite", "retention": {"keep_last": 1}}},
        storages={"offsite": bucket.storage("fleet/")},
        daemon={"host": host},
    )
    return workspace


def test_two_hosts_on_one_bucket_never_prune_each_other(
    api, volumes, tmp_path, helper_image, s3_bucket
):
    volume = volumes("shared")
    (mountpoint(api, volume) / "file").write_text("same names on both hosts")
    first = host_workspace(tmp_path / "a", helper_image, "host-a", s3_bucket, volume)
    second = host_workspace(tmp_path / "b", helper_image, "host-b", s3_bucket, volume)

    for _ in range(3):
        for workspace in (first, second):
            backup = workspace.run("backup", "app")
            assert backup.returncode == 0, backup.stderr
        time.sleep(1.1)

    assert len(listed(first)) == 1 and len(listed(second)) == 1
    manifests = [key for key in keys(s3_bucket) if key.endswith(".manifest.json")]
    assert sorted(key.split("/")[1] for key in manifests) == ["host-a", "host-b"]
    assert listed(first, "--host", "host-b")[0]["id"] == listed(second)[0]["id"]


def test_a_new_host_restores_and_drills_the_dead_hosts_volume(
    api, volumes, tmp_path, helper_image, s3_bucket
):
    volume = volumes("lost")
    (mountpoint(api, volume) / "precious").write_bytes(os.urandom(300_000))
    dead = host_workspace(tmp_path / "dead", helper_image, "dead-host", s3_bucket, volume)
    assert dead.run("backup", "app").returncode == 0
    fresh = host_workspace(tmp_path / "fresh", helper_image, "new-host", s3_bucket, volume)

    assert listed(fresh) == []
    (archive,) = listed(fresh, "--host", "dead-host")
    target = volume + "_recovered"
    try:
        restore = fresh.run(
            "restore", "app", "--volume", volume, "--to", target, "--host", "dead-host"
        )
        assert restore.returncode == 0, restore.stderr
        assert (mountpoint(api, target) / "precious").read_bytes() == (
            mountpoint(api, volume) / "precious"
        ).read_bytes()
    finally:
        api.remove_volume(target, force=True)
    drill = fresh.run("drill", "app", "--host", "dead-host")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert listed(dead)[0]["drill"]["verdict"] == "passed"  # type: ignore[index]
    assert listed(dead)[0]["id"] == archive["id"]


def test_storage_faults_and_bad_input_are_one_clear_line(api, volumes, workspace, s3_bucket):
    source = volumes("faults")
    (mountpoint(api, source) / "file").write_text("x")
    secret = s3_bucket.server.secret_key
    cases = {
        "wrong credentials": {
            **s3_bucket.storage(),
            "credentials_file": str(
                s3_bucket.server.credentials_file(workspace.root / "bad", secret_key="wrong-secret")
            ),
        },
        "missing bucket": {**s3_bucket.storage(), "bucket": "vkt-no-such-bucket"},
        "unreachable endpoint": {**s3_bucket.storage(), "endpoint": "http://127.0.0.1:9"},
    }
    for case, storage in cases.items():
        workspace.write_config(
            {"app": {"volumes": [source], "storage": "offsite"}}, storages={"offsite": storage}
        )
        started = time.monotonic()
        backup = workspace.run("backup", "app", timeout=120)
        assert backup.returncode == 1, case
        line = last_line(backup.stderr)
        assert "'offsite'" in line, (case, line)
        assert "Traceback" not in backup.stderr and secret not in backup.stderr, case
        assert time.monotonic() - started < 60, case
        assert workspace.run("list", "app").returncode in (0, 1), case

    workspace.write_config(
        {"app": {"volumes": [source], "storage": "offsite"}},
        storages={"offsite": {**s3_bucket.storage(), "secret_key": "abc"}},
    )
    refused = workspace.run("validate")
    assert refused.returncode == 2
    assert "volkeep.yaml:" in refused.stderr and "secret" in refused.stderr
    assert "abc" not in refused.stderr

    offsite_policy(workspace, s3_bucket, source)
    unknown = workspace.run("list", "app", "--storage", "elsewhere")
    assert unknown.returncode == 2 and "elsewhere" in last_line(unknown.stderr)


@pytest.mark.archive_format("tar")
def test_a_frozen_endpoint_fails_its_copy_naming_the_timeout_and_the_local_copy_lands(
    api, volumes, workspace, s3_bucket
):
    source = volumes("frozen")
    for number in range(3):  # random: more than three parts; at zstd -19, still brief
        (mountpoint(api, source) / f"blob{number}").write_bytes(os.urandom(10 << 20))
    offsite = {**s3_bucket.storage(), "read_timeout": "3s", "max_attempts": 2}
    workspace.write_config(
        {
            "app": {
                "volumes": [source],
                "storage": ["local", "offsite"],
                "compression": {"algorithm": "zstd", "level": 19},  # slow: caught mid-upload
            }
        },
        storages={"offsite": offsite},
    )
    backup = _backup_in_flight(workspace, s3_bucket)
    weed = s3_bucket.server.process
    assert weed is not None
    weed.send_signal(signal.SIGSTOP)  # it answers nothing, but its sockets still accept
    try:
        _, stderr = backup.communicate(timeout=150)
    finally:
        weed.send_signal(signal.SIGCONT)

    assert backup.returncode == 1
    line = last_line(stderr)
    assert "'offsite'" in line and "no answer for 3 s (read_timeout)" in line, line
    assert "Traceback" not in stderr
    # said while it was slow: each attempt that timed out, before the next one
    logged = [json.loads(entry) for entry in stderr.splitlines() if entry.startswith("{")]
    retried = [entry for entry in logged if entry["event"] == "the S3 endpoint does not answer"]
    assert retried and all(entry["storage"] == "offsite" for entry in retried)
    assert "no answer for 3 s (read_timeout); attempt 2 of 2 follows" in retried[0]["problem"]
    assert [entry["storage"] for entry in listed(workspace)] == ["local"]
