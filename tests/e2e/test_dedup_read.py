"""Reading deduplicated archives back (docs/format-dedup.md, "Reading an archive back") end
to end: the real engine and helper, volkeep as a real process, a local storage.

What is asserted is data: the bytes a partial restore brings back against the source, with
the packs it must not need taken out of the storage; the verdict a drill writes when a pack
no longer holds the bytes its name was taken of.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.e2e.test_dedup import backup, chunks_dir

pytestmark = pytest.mark.e2e
MiB = 1 << 20


def packs(workspace: Workspace) -> dict[str, Path]:
    return {path.name: path for path in (chunks_dir(workspace) / "packs").glob("*/*")}


def test_a_partial_restore_reads_only_the_packs_of_the_paths_it_restores(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume = volumes("partial")
    root = mountpoint(api, volume)
    (root / "kept").mkdir()
    kept = hashlib.shake_256(b"kept").digest(3 * MiB)
    (root / "kept" / "a.bin").write_bytes(kept)
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    backup(workspace)
    first_packs = set(packs(workspace))
    (root / "other").mkdir()
    (root / "other" / "b.bin").write_bytes(hashlib.shake_256(b"other").digest(3 * MiB))
    second = backup(workspace)
    # the packs of file content the second backup added hold other/b.bin's chunks alone
    # (its pack of recipe pieces, a few KiB, is needed): take them out
    only_other = {
        name for name, path in packs(workspace).items()
        if name not in first_packs and path.stat().st_size > MiB
    }  # fmt: skip
    assert only_other
    for name in only_other:
        packs(workspace)[name].unlink()

    target = f"{volume}_part"
    try:
        result = workspace.run(
            "restore", "app", "--volume", volume, "--archive", second,
            "--path", "kept/", "--to", target,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        restored = mountpoint(api, target)
        assert (restored / "kept" / "a.bin").read_bytes() == kept
        assert not (restored / "other").exists()
        one_file = workspace.command(
            "restore", "app", "--volume", volume, "--archive", second,
            "--path", "kept/a.bin", "--stdout",
        )  # fmt: skip
        assert subprocess.run(one_file, capture_output=True, timeout=300).stdout == kept
        # the whole archive needs those packs: a full restore names the missing one
        whole = workspace.run(
            "restore", "app", "--volume", volume, "--archive", second, "--to", f"{target}2"
        )
        assert whole.returncode == 1
        assert "is missing" in whole.stderr
    finally:
        for name in (target, f"{target}2"):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(name, force=True)


def drill_record(workspace: Workspace, volume: str, archive_id: str) -> dict[str, object]:
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.drill.json"
    record: dict[str, object] = json.loads(path.read_text())
    return record


def test_drills_check_in_turn_every_pack_and_fail_on_one_no_drilled_archive_uses(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume = volumes("turns")
    root = mountpoint(api, volume)
    (root / "old.bin").write_bytes(hashlib.shake_256(b"old").digest(3 * MiB))
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    backup(workspace)
    old_packs = set(packs(workspace))
    (root / "old.bin").unlink()
    (root / "new.bin").write_bytes(hashlib.shake_256(b"new").digest(3 * MiB))
    latest = backup(workspace)
    # a pack only the first archive uses, damaged in the storage
    damaged = sorted(old_packs)[0]
    path = packs(workspace)[damaged]
    stored = bytearray(path.read_bytes())
    stored[len(stored) // 2] ^= 1
    path.write_bytes(bytes(stored))

    verdicts = []
    for _ in range(len(packs(workspace))):  # every pack has had its turn after as many
        result = workspace.run("drill", "app", "--volume", volume, "--archive", latest)
        verdicts.append(result.returncode)
        if result.returncode:
            break
    assert verdicts[-1] == 1 and set(verdicts[:-1]) <= {0}, verdicts
    assert f"pack {damaged} is not the bytes its name was taken of" in result.stderr
    record = drill_record(workspace, volume, latest)
    assert record["passed"] is False
    assert damaged in str(record["reason"])
