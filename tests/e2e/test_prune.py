"""Retention as an operator meets it: back up, prune, look at the files left on disk."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time

from tests.e2e.conftest import Workspace, mountpoint


def back_up(workspace: Workspace, volume: str) -> str:
    """Back up one volume of policy "app" and return the new archive's id."""
    result = workspace.run("backup", "app", "--volume", volume)
    assert result.returncode == 0, result.stderr
    match = re.search(rf"^app/{volume}: archive (\S+) ", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match.group(1)


def on_disk(workspace: Workspace, volume: str) -> list[str]:
    return sorted(os.listdir(workspace.archive_dir("app", volume)))


ARCHIVE = ".recipe.zst"  # the archive file of the default format (dedup)
SAFETY_ARCHIVE = ".tar.zst"  # a safety archive is always one tar file


def pairs(volume: str, *ids: str, archive: str = ARCHIVE) -> list[str]:
    return sorted(f"{volume}-{i}{suffix}" for i in ids for suffix in (archive, ".manifest.json"))


def listed_ids(workspace: Workspace) -> list[str]:
    result = workspace.run("list", "app", "--json")
    assert result.returncode == 0, result.stderr
    return [entry["id"] for entry in json.loads(result.stdout)]


def printed_decisions(stdout: str) -> list[tuple[str, str, str]]:
    """Return the (keep or delete, archive id, reasons) lines that prune printed, in order."""
    return re.findall(r"^  (keep|delete) +(\S+) +(.+)$", stdout, re.MULTILINE)


def history(workspace: Workspace, volume: str) -> list[tuple[str, str]]:
    """Return the (kind, outcome) of the volume's recorded operations, oldest first."""
    with sqlite3.connect(workspace.state_dir / "history.sqlite") as connection:
        query = "SELECT kind, outcome FROM operations WHERE volume = ? ORDER BY id"
        return list(connection.execute(query, (volume,)))


def logged(stderr: str, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event]


def test_keep_last_2_leaves_exactly_the_two_newest_pairs_on_disk(api, volumes, workspace):
    source = volumes("rotated")
    workspace.write_config({"app": {"volumes": [source], "retention": {"keep_last": 2}}})
    ids = []
    for generation in range(4):
        (mountpoint(api, source) / "generation").write_text(str(generation))
        ids.append(back_up(workspace, source))

    assert on_disk(workspace, source) == pairs(source, *ids[2:])
    assert listed_ids(workspace) == [ids[3], ids[2]]
    assert history(workspace, source) == [("backup", "ok"), ("prune", "ok")] * 4


def test_prune_dry_run_deletes_nothing_and_prints_why(api, volumes, workspace):
    source = volumes("planned")
    workspace.write_config({"app": {"volumes": [source]}})
    ids = [back_up(workspace, source) for _ in range(3)]
    workspace.write_config({"app": {"volumes": [source], "retention": {"keep_last": 1}}})
    directory = workspace.archive_dir("app", source)
    before = {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}

    dry = workspace.run("prune", "app", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == f"app/{source} in local: keep_last 1 (calendar in UTC)"
    assert printed_decisions(dry.stdout) == [
        ("keep", ids[2], "last 1, newest archive"),
        ("delete", ids[1], "no keep rule matches"),
        ("delete", ids[0], "no keep rule matches"),
    ]
    assert "  1 kept, 2 to delete (dry run: nothing deleted)" in dry.stdout.splitlines()
    assert {path.name: path.stat().st_mtime_ns for path in directory.iterdir()} == before
    assert [kind for kind, _ in history(workspace, source)].count("prune") == 3

    real = workspace.run("prune", "app")

    assert real.returncode == 0, real.stderr
    assert "  1 kept, 2 deleted" in real.stdout.splitlines()
    assert on_disk(workspace, source) == pairs(source, ids[2])
    assert history(workspace, source)[-1] == ("prune", "ok")


def test_crash_between_manifest_and_archive_deletion_leaves_no_listed_orphan(
    api, volumes, workspace
):
    source = volumes("halfdeleted")
    workspace.write_config({"app": {"volumes": [source]}})
    ids = [back_up(workspace, source) for _ in range(3)]
    directory = workspace.archive_dir("app", source)
    # the first half of a deletion by an older volkeep (no claim names who deleted): the
    # manifest (the commit marker) goes first; the archive is days old, as pruned ones are
    (directory / f"{source}-{ids[0]}.manifest.json").unlink()
    days_ago = time.time() - 3 * 24 * 3600
    os.utime(directory / f"{source}-{ids[0]}{ARCHIVE}", (days_ago, days_ago))

    assert listed_ids(workspace) == [ids[2], ids[1]]
    assert f"{source}-{ids[0]}{ARCHIVE}" in on_disk(workspace, source)

    pruned = workspace.run("prune", "app")

    assert pruned.returncode == 0, pruned.stderr
    assert [(action, i) for action, i, _ in printed_decisions(pruned.stdout)] == [
        ("keep", ids[2]),
        ("keep", ids[1]),
    ]
    removed = logged(pruned.stderr, "removed an incomplete archive file")
    assert [line["file"].rsplit("/", 1)[-1] for line in removed] == [f"{source}-{ids[0]}{ARCHIVE}"]
    assert on_disk(workspace, source) == pairs(source, ids[1], ids[2])

    (directory / f"{source}-{ids[1]}.manifest.json").unlink()
    os.utime(directory / f"{source}-{ids[1]}{ARCHIVE}", (days_ago, days_ago))
    newest = back_up(workspace, source)

    assert on_disk(workspace, source) == pairs(source, ids[2], newest)


def test_a_failed_backup_does_not_prune_that_volume(api, volumes, workspace):
    failing, healthy = volumes("failing"), volumes("healthy")
    workspace.storage.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(workspace.storage)], check=True
    )
    try:
        workspace.write_config({"app": {"volumes": [failing, healthy]}})
        failing_ids = [back_up(workspace, failing) for _ in range(3)]
        healthy_ids = [back_up(workspace, healthy) for _ in range(3)]
        workspace.write_config(
            {"app": {"volumes": [failing, healthy], "retention": {"keep_last": 1}}}
        )
        (mountpoint(api, failing) / "too_big.bin").write_bytes(os.urandom(4 << 20))

        result = workspace.run("backup", "app")

        assert result.returncode == 1
        assert "No space left on device" in result.stderr
        assert on_disk(workspace, failing) == pairs(failing, *failing_ids)
        assert history(workspace, failing)[-1] == ("backup", "failed")
        assert history(workspace, failing).count(("prune", "ok")) == 3
        newest = listed_ids(workspace)[0]
        assert newest not in healthy_ids
        assert on_disk(workspace, healthy) == pairs(healthy, newest)
    finally:
        subprocess.run(["umount", str(workspace.storage)], check=True)


def test_safety_archive_of_a_forced_restore_is_not_rotated_by_the_keep_rules(
    api, volumes, workspace
):
    source = volumes("restored")
    workspace.write_config({"app": {"volumes": [source], "retention": {"keep_last": 1}}})
    (mountpoint(api, source) / "data").write_text("backed up")
    back_up(workspace, source)
    (mountpoint(api, source) / "data").write_text("changed since, saved by the restore")
    restore = workspace.run("restore", "app", "--volume", source, "--force")
    assert restore.returncode == 0, restore.stderr
    safety = next(i for i in listed_ids(workspace) if i.endswith("-safety"))
    ids = [back_up(workspace, source) for _ in range(2)]
    kept = sorted(pairs(source, safety, archive=SAFETY_ARCHIVE) + pairs(source, ids[1]))
    assert on_disk(workspace, source) == kept

    pruned = workspace.run("prune", "app")

    assert pruned.returncode == 0, pruned.stderr
    decisions = printed_decisions(pruned.stdout)
    assert decisions[0] == ("keep", ids[1], "last 1, newest archive")
    assert decisions[1][:2] == ("keep", safety)
    assert decisions[1][2].startswith("safety archive, kept until ")  # 30 days by default
    assert on_disk(workspace, source) == kept


def test_prune_of_a_volume_without_archives_is_a_usage_error(volumes, workspace):
    source = volumes("never")
    workspace.write_config({"app": {"volumes": [source]}})

    result = workspace.run("prune", "app", "--volume", source)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"volkeep: policy 'app' has no archives of volume {source!r} in storage 'local' "
        f"({workspace.storage})"
    ]
    assert not (workspace.state_dir / "history.sqlite").exists()
