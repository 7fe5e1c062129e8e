"""Garbage collection of deduplicated archives (docs/format-dedup.md, "Garbage collection")
end to end: the real engine, volkeep as a real process, a local storage and SeaweedFS.

The margin is $VOLKEEP_GC_MARGIN seconds here (24 hours in use). What is asserted is data:
which packs are in the storage after each collection, and every listed archive restored
equal to its source; a backup caught in the middle of a collection (paused at a point,
SIGSTOP, then continued) either commits an archive that restores or fails in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest

from daemon.actions.collect import collect_after_backups
from daemon.actions.context import Context
from daemon.config import load_config
from daemon.state.history import History
from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.e2e.test_dedup import backup, chunks_dir, manifest_of, restored
from tests.support.seaweed import S3Bucket
from tests.support.tree import differences, snapshot

pytestmark = pytest.mark.e2e
MARGIN = 2.0  # seconds
MiB = 1 << 20


@pytest.fixture(autouse=True)
def short_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLKEEP_GC_MARGIN", str(MARGIN))


def packs(workspace: Workspace, policy: str = "app") -> set[str]:
    return {path.name for path in (chunks_dir(workspace, policy) / "packs").rglob("*/*")}


def condemned_records(workspace: Workspace) -> list[Path]:
    directory = chunks_dir(workspace) / "condemned"
    return sorted(directory.iterdir()) if directory.exists() else []


def write_random(path: Path, seed: bytes, size: int) -> None:
    path.write_bytes(hashlib.shake_256(seed).digest(size))


def prune(workspace: Workspace, *volumes: str) -> str:
    result = workspace.run("prune", "app", *(arg for name in volumes for arg in ("--volume", name)))
    assert result.returncode == 0, result.stderr
    return result.stdout


def keep_last_one(workspace: Workspace, volume: str) -> None:
    policy = {"volumes": [volume], "format": "dedup", "retention": {"keep_last": 1}}
    workspace.write_config({"app": policy})


def listed(workspace: Workspace, volume: str | None = None) -> list[dict[str, object]]:
    volume_args = ("--volume", volume) if volume else ()
    result = workspace.run("list", "app", *volume_args, "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def every_listed_archive_restores(
    api: docker.APIClient, workspace: Workspace, volume: str, trees: dict[str, dict]
) -> None:
    ids = [row["id"] for row in listed(workspace, volume)]
    assert ids and set(ids) <= trees.keys()
    for archive_id in ids:
        assert differences(trees[archive_id], restored(api, workspace, volume, archive_id)) == []


def paused(workspace: Workspace, point: str, *args: str) -> subprocess.Popen[str]:
    """Start volkeep with the fault suite's pause point `point`; return it once stopped
    there (SIGSTOP)."""
    command = workspace.command(*args)
    command[command.index("daemon")] = "tests.faults.killpoints"
    environment = dict(os.environ, VOLKEEP_TEST_KILL_POINT=point, VOLKEEP_TEST_POINT_ACTION="pause")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=environment,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return process


def resumed(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    process.send_signal(signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def killed(workspace: Workspace, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = workspace.command(*args)
    command[command.index("daemon")] = "tests.faults.killpoints"
    environment = dict(os.environ, VOLKEEP_TEST_KILL_POINT=point)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=environment
    )


def two_archives_the_first_alone_holding_a_large_file(
    api: docker.APIClient, workspace: Workspace, volume: str, shared: int = 3 * MiB
) -> tuple[set[str], dict[str, dict]]:
    """Back up the volume with a 20 MiB file (and a file of `shared` bytes both archives
    hold), then without it: return the first archive's packs (at least one whole pack of
    that file's chunks) and each archive's tree."""
    root = mountpoint(api, volume)
    write_random(root / "shared.bin", b"shared", shared)
    write_random(root / "gone.bin", b"gone", 20 * MiB)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    trees = {}
    first = backup(workspace)
    trees[first] = snapshot(root)
    first_packs = packs(workspace)
    (root / "gone.bin").unlink()
    write_random(root / "new.bin", b"new", 20 * MiB)  # as large: no shrink for retention
    second = backup(workspace)
    trees[second] = snapshot(root)
    return first_packs, trees


def test_prune_frees_the_packs_no_archive_uses_once_condemned_a_margin_ago_and_keeps_the_rest(
    api: docker.APIClient, volumes, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    margin = 8.0  # long enough for a crashed backup's pack to be young at the first prune
    monkeypatch.setenv("VOLKEEP_GC_MARGIN", str(margin))
    volume = volumes("gc_data")
    first_packs, trees = two_archives_the_first_alone_holding_a_large_file(api, workspace, volume)
    keep_last_one(workspace, volume)
    time.sleep(margin + 0.5)
    young = hashlib.shake_256(b"young").digest(9 * MiB)  # a crashed backup's pack: no index
    (mountpoint(api, volume) / "young.bin").write_bytes(young)
    result = killed(workspace, "first pack stored, no index yet", "backup", "app")
    assert result.returncode == -9, result.stderr
    (mountpoint(api, volume) / "young.bin").unlink()
    before = packs(workspace)
    (orphan,) = before - packs_of_listed(workspace)

    # the first collection deletes nothing: it condemns the dead packs old enough (and
    # repacks the pack shared.bin shares with gone.bin if gone.bin filled most of it)
    output = prune(workspace)
    repacked = packs(workspace) - before
    assert before <= packs(workspace)
    assert freed(output) == (0, 0), output
    assert len(condemned_records(workspace)) == 1, output
    (record,) = condemned_records(workspace)
    lines = record.read_text().splitlines()
    assert lines[0] == "volkeep-condemned 1"
    condemned = {line.split()[0] for line in lines[1:]}
    assert condemned and condemned <= first_packs and orphan not in condemned

    time.sleep(margin + 0.5)
    dry = workspace.run("prune", "app", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would free {len(condemned)} packs" in dry.stdout, dry.stdout
    assert packs(workspace) == before | repacked and condemned_records(workspace) == [record]

    # a margin later, the second frees them; the orphan, old enough now, is condemned
    output = prune(workspace)
    count, size = freed(output)
    assert count == len(condemned) and size > 8 * MiB, output  # a whole pack of gone.bin
    assert packs(workspace) == (before | repacked) - condemned
    (record,) = condemned_records(workspace)
    assert {line.split()[0] for line in record.read_text().splitlines()[1:]} == {orphan}
    every_listed_archive_restores(api, workspace, volume, trees)
    drill = workspace.run("drill", "app", "--volume", volume)
    assert drill.returncode == 0, drill.stderr


def freed(output: str) -> tuple[int, int]:
    """The packs and bytes prune's output says were freed in the local storage."""
    match = re.search(r"chunks in local: freed (\d+) packs \((\d+) bytes\)", output)
    assert match, output
    return int(match[1]), int(match[2])


def packs_of_listed(workspace: Workspace) -> set[str]:
    """The packs the index files list (a crashed backup's pack is in none)."""
    listed_packs = set()
    for index in (chunks_dir(workspace) / "index").iterdir():
        text = subprocess.run(
            ["zstd", "-dc", str(index)], capture_output=True, check=True, text=True
        ).stdout
        listed_packs |= {line.split()[1] for line in text.splitlines()[1:]}
    return listed_packs


def test_a_collection_killed_at_each_step_leaves_every_archive_restorable_and_the_next_finishes(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume = volumes("gc_kill")
    # a pack of shared.bin alone, whatever the order: the first index outlives gone.bin's
    _, trees = two_archives_the_first_alone_holding_a_large_file(api, workspace, volume, 17 * MiB)
    keep_last_one(workspace, volume)
    time.sleep(MARGIN + 0.5)
    prune(workspace)  # deletes the first archive, condemns its packs
    condemned = {line.split()[0] for line in condemned_records(workspace)[0].read_text()
                 .splitlines()[1:]}  # fmt: skip
    time.sleep(MARGIN + 0.5)
    for point in (
        "garbage collection: new index stored",
        "garbage collection: first pack deleted",
    ):
        result = killed(workspace, point, "prune", "app")
        assert result.returncode == -9, (point, result.stderr)
        every_listed_archive_restores(api, workspace, volume, trees)
    assert condemned & packs(workspace) and condemned_records(workspace)
    prune(workspace)
    assert not condemned & packs(workspace)
    assert condemned_records(workspace) == []  # nothing else is dead
    every_listed_archive_restores(api, workspace, volume, trees)


def test_a_backup_after_a_pack_is_condemned_stores_its_chunks_again_and_restores_once_it_is_freed(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    """A pack is condemned, then a backup needs chunks of it (the file is back, in another
    volume of the policy). Had it reused them, a collection deleting the pack before the
    backup's manifest is listed would break the archive: it stores them again."""
    volume, other = volumes("gc_race"), volumes("gc_race_other")
    first_packs, trees = two_archives_the_first_alone_holding_a_large_file(api, workspace, volume)
    both = {"volumes": [volume, other], "format": "dedup", "retention": {"keep_last": 1}}
    workspace.write_config({"app": both})
    time.sleep(MARGIN + 0.5)
    prune(workspace, volume)  # the first archive goes; the packs of gone.bin are condemned
    root = mountpoint(api, other)
    write_random(root / "gone.bin", b"gone", 20 * MiB)  # it comes back, the same
    result = workspace.run("backup", "app", "--volume", other)
    assert result.returncode == 0, result.stderr
    (row,) = listed(workspace, other)
    # at most the first pack, shared with shared.bin (live), could serve: 12 MiB and more
    # of gone.bin were in condemned packs
    assert manifest_of(workspace, other, row["id"])["chunks"]["added_bytes"] > 12 * MiB

    time.sleep(MARGIN + 0.5)
    prune(workspace, volume)
    assert first_packs - packs(workspace)  # the condemned packs are freed
    assert differences(snapshot(root), restored(api, workspace, other, row["id"])) == []
    every_listed_archive_restores(api, workspace, volume, trees)


def test_a_backup_relying_on_a_pack_condemned_and_freed_while_it_ran_fails_and_lists_nothing(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    """The other side of the race: the backup read the packs before they were condemned,
    reused chunks of them, and ran on while they were condemned and freed. It must not
    commit an archive that names a freed chunk."""
    volume, other = volumes("gc_long"), volumes("gc_long_other")
    first_packs, trees = two_archives_the_first_alone_holding_a_large_file(api, workspace, volume)
    both = {"volumes": [volume, other], "format": "dedup", "retention": {"keep_last": 1}}
    workspace.write_config({"app": both})
    root = mountpoint(api, other)
    write_random(root / "gone.bin", b"gone", 20 * MiB)  # the first archive still has it
    write_random(root / "other.bin", b"other", MiB)
    backing_up = paused(
        workspace, "index stored, manifest not written", "backup", "app", "--volume", other
    )
    time.sleep(MARGIN + 0.5)
    prune(workspace, volume)  # the first archive goes; its packs are condemned
    time.sleep(MARGIN + 0.5)
    prune(workspace, volume)  # and freed
    assert first_packs - packs(workspace)

    result = resumed(backing_up)
    assert result.returncode == 1
    assert "garbage collection condemned pack" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert listed(workspace, other) == []
    every_listed_archive_restores(api, workspace, volume, trees)
    tree = snapshot(root)
    result = workspace.run("backup", "app", "--volume", other)
    assert result.returncode == 0, result.stderr
    (row,) = listed(workspace, other)
    assert differences(tree, restored(api, workspace, other, row["id"])) == []


def test_two_hosts_back_up_and_collect_at_once_on_one_bucket_and_every_archive_restores(
    api: docker.APIClient, volumes, tmp_path: Path, helper_image: str, s3_bucket: S3Bucket
) -> None:
    hosts = {name: Workspace(tmp_path / name, helper_image) for name in ("alpha", "beta")}
    trees: dict[str, dict[str, dict]] = {name: {} for name in hosts}
    sources = {name: volumes(f"gc_{name}") for name in hosts}
    for name, workspace in hosts.items():
        workspace.root.mkdir()
        policy = {
            "volumes": [sources[name]],
            "format": "dedup",
            "storage": "offsite",
            "retention": {"keep_last": 2},
        }
        workspace.write_config(
            {"app": policy},
            storages={"offsite": s3_bucket.storage("fleet/")},
            daemon={"host": name},
        )
    client = s3_bucket.server.client()

    def stored_packs(name: str) -> set[str]:
        prefix = f"fleet/{name}/app/_chunks/packs/"
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket.name, Prefix=prefix
        )
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def day_of(name: str) -> str:
        workspace = hosts[name]
        for command in (("backup", "app"), ("prune", "app")):
            result = workspace.run(*command)
            assert result.returncode == 0, result.stderr
        return name

    first_packs = {}
    for day in range(4):  # keep_last 2: days 0 and 1 are pruned on days 2 and 3
        for name in hosts:
            root = mountpoint(api, sources[name])
            write_random(root / f"day{day}.bin", name.encode() + b"%d" % day, 17 * MiB)
            if day:
                (root / f"day{day - 1}.bin").unlink()
        with ThreadPoolExecutor(2) as pool:  # both hosts back up and collect at once
            for name in pool.map(day_of, hosts):
                newest = listed(hosts[name])[0]["id"]
                trees[name][newest] = snapshot(mountpoint(api, sources[name]))
        if day == 0:
            first_packs = {name: stored_packs(name) for name in hosts}
        time.sleep(MARGIN + 0.5)

    for name, workspace in hosts.items():
        # day 0's file filled whole packs: condemned on day 2, freed on day 3
        assert first_packs[name] - stored_packs(name), name
        ids = [row["id"] for row in listed(workspace)]
        assert len(ids) == 2 and set(ids) <= trees[name].keys()
        for archive_id in ids:
            assert (
                differences(
                    trees[name][archive_id], restored(api, workspace, sources[name], archive_id)
                )
                == []
            )


def test_the_daemon_collects_a_policy_after_its_runs_at_most_every_quarter_of_the_margin(
    api: docker.APIClient,
    volumes: Callable[..., str],
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An hourly schedule collected after every run would read every recipe of the policy
    each hour, and free no pack sooner (a condemned pack waits a margin anyway). With the
    24-hour margin of use, the runs of the same 6 hours collect once."""
    monkeypatch.delenv("VOLKEEP_GC_MARGIN")
    volume = volumes("vk-gc-due")
    keep_last_one(workspace, volume)
    ctx = Context(load_config(workspace.config), workspace.state_dir)
    day_old = time.time() - 25 * 3600
    trees: dict[str, dict] = {}

    def a_run_that_replaces_the_volume_content(seed: bytes) -> None:
        for old in mountpoint(api, volume).glob("*.bin"):
            old.unlink()
        write_random(mountpoint(api, volume) / f"{seed.decode()}.bin", seed, 2 * MiB)
        trees[backup(workspace)] = snapshot(mountpoint(api, volume))  # prunes the one before
        for pack in (chunks_dir(workspace) / "packs").rglob("*/*"):
            os.utime(pack, (day_old, day_old))  # as if written a day ago
        collect_after_backups(ctx, "app")

    a_run_that_replaces_the_volume_content(b"first")  # collected: nothing dead yet
    packs_of_the_first = packs(workspace)
    a_run_that_replaces_the_volume_content(b"second")  # not due: the same hours
    assert condemned_records(workspace) == []
    assert packs_of_the_first <= packs(workspace)

    History(workspace.state_dir).record_run("collect:app", datetime.now(UTC) - timedelta(hours=6))
    a_run_that_replaces_the_volume_content(b"third")  # due: 6 hours after the last
    [record] = condemned_records(workspace)
    assert all(pack in record.read_text() for pack in packs_of_the_first)
    every_listed_archive_restores(api, workspace, volume, trees)
