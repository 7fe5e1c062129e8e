"""Repacking in garbage collection (docs/format-dedup.md, "Garbage collection"): a pack more
than half of whose stored bytes no archive uses has its live chunks stored again in new
packs, is condemned, and is freed a margin later. End to end: the real engine, volkeep as
a real process, a local storage and SeaweedFS.

What is asserted is data: the stored bytes of the chunk repository (a number), which packs
remain, and every listed archive restored equal to its source, after kill -9 at each step
of a repack and with a backup that reused chunks of a pack as it was repacked.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import docker
import pytest
from pyrage import x25519

from tests.e2e.conftest import Workspace, mountpoint
from tests.e2e.test_dedup import (
    backup,
    chunks_dir,
    export,
    manifest_of,
    rebuilt_by_script,
    restored,
)
from tests.e2e.test_dedup_gc import (
    every_listed_archive_restores,
    killed,
    listed,
    paused,
    resumed,
)
from tests.support import manifests
from tests.support.seaweed import S3Bucket
from tests.support.tree import differences, snapshot

pytestmark = pytest.mark.e2e
KiB, MiB = 1 << 10, 1 << 20
FILES = 48  # of 256 KiB, random: 12 MiB, a pack of 8 MiB and one of 4
REPACKED = "the live chunks of"


def write_random(path: Path, seed: bytes, size: int = 256 * KiB) -> None:
    path.write_bytes(hashlib.shake_256(seed).digest(size))


class Chunks:
    """The policy's chunk repository in the storage under test (SeaweedFS if `bucket` is
    given, else local), encrypted if `encryption` is given: its policy file, its objects
    and sizes."""

    def __init__(
        self,
        workspace: Workspace,
        bucket: S3Bucket | None = None,
        encryption: dict[str, object] | None = None,
    ) -> None:
        self.workspace, self.bucket, self.encryption = workspace, bucket, encryption

    def configure(self, *volumes: str, **policy: object) -> None:
        """Write the policy file: policy "app" of these volumes, in this storage."""
        entry: dict[str, object] = {"volumes": list(volumes), "format": "dedup", **policy}
        if self.encryption is not None:
            entry["encryption"] = self.encryption
        if self.bucket is None:
            self.workspace.write_config({"app": entry})
        else:
            entry["storage"] = "offsite"
            storage = self.bucket.storage("repack/")
            self.workspace.write_config({"app": entry}, storages={"offsite": storage})

    def objects(self) -> dict[str, int]:
        """Every object of the chunk repository (packs, indexes, records), with its size."""
        if self.bucket is None:
            top = chunks_dir(self.workspace)
            return {
                str(path.relative_to(top)): path.stat().st_size
                for path in top.rglob("*")
                if path.is_file()
            }
        prefix = f"repack/{socket.gethostname()}/app/_chunks/"
        client = self.bucket.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.name, Prefix=prefix
        )
        return {
            item["Key"][len(prefix) :]: item["Size"]
            for page in pages
            for item in page.get("Contents", [])
        }

    def added_bytes(self, volume: str, archive_id: str) -> int:
        """What the archive's manifest says its backup added to the chunk repository."""
        if self.bucket is None:
            summary = manifest_of(self.workspace, volume, archive_id)
        else:
            key = f"repack/{socket.gethostname()}/app/{volume}/{volume}-{archive_id}.manifest.json"
            stored = self.bucket.server.client().get_object(Bucket=self.bucket.name, Key=key)
            summary = manifests.split(stored["Body"].read())[0]
        chunks = summary["chunks"]
        assert isinstance(chunks, dict)
        return int(chunks["added_bytes"])

    def packs(self) -> set[str]:
        return {key.rsplit("/", 1)[-1] for key in self.objects() if key.startswith("packs/")}

    def content_packs(self) -> set[str]:
        """The packs of file content: here each holds MiBs (a backup's pack of recipe
        pieces, a few KiB, is left out)."""
        return {
            key.rsplit("/", 1)[-1]
            for key, size in self.objects().items()
            if key.startswith("packs/") and size > MiB
        }

    def size(self) -> int:
        return sum(self.objects().values())


def most_files_rewritten(
    api: docker.APIClient, chunks: Chunks, volume: str
) -> tuple[set[str], dict[str, dict]]:
    """Back up FILES random files, rewrite three in four of them, back up again, and keep
    the last archive only from now on: return the first backup's packs (each a quarter
    live once the first archive is pruned; not its pack of recipe pieces, which the second
    backup's recipe splices from) and each archive's tree."""
    root = mountpoint(api, volume)
    for number in range(FILES):
        write_random(root / f"file-{number:02d}.bin", b"first %d" % number)
    chunks.configure(volume)
    trees = {}
    first = backup(chunks.workspace)
    trees[first] = snapshot(root)
    first_packs = chunks.content_packs()
    assert len(first_packs) == 2
    for number in range(FILES):
        if number % 4:
            write_random(root / f"file-{number:02d}.bin", b"second %d" % number)
    # past the second of the writes: a file written in the second its backup lists it is
    # read again by the next backup (the racy rule), whose recipe would then store their
    # lines in a new piece
    time.sleep(1.1)
    second = backup(chunks.workspace)
    trees[second] = snapshot(root)
    chunks.configure(volume, retention={"keep_last": 1})
    return first_packs, trees


def prune(workspace: Workspace) -> str:
    result = workspace.run("prune", "app")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("where", ["local", "s3", "local encrypted"])
def test_a_pack_mostly_dead_is_repacked_and_freed_and_the_store_shrinks_by_its_dead_bytes(
    api: docker.APIClient,
    volumes,
    workspace: Workspace,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
) -> None:
    monkeypatch.setenv("VOLKEEP_GC_MARGIN", "0")
    bucket: S3Bucket | None = request.getfixturevalue("s3_bucket") if where == "s3" else None
    encryption = None
    if where.endswith("encrypted"):
        identity = x25519.Identity.generate()
        key_file = tmp_path / "age.key"
        key_file.write_text(f"{identity}\n")
        key_file.chmod(0o600)
        recipients = [str(identity.to_public())]
        encryption = {"age": {"recipients": recipients, "identity_file": str(key_file)}}
    volume = volumes(f"repack_{where.replace(' ', '_')}")
    chunks = Chunks(workspace, bucket, encryption)
    first_packs, trees = most_files_rewritten(api, chunks, volume)
    before = chunks.size()

    output = prune(workspace)  # the first archive goes: its packs are a quarter live
    assert f"{REPACKED} 2 mostly-dead packs again" in output, output
    new_packs = chunks.packs() - first_packs
    assert new_packs and first_packs <= chunks.packs()  # condemned, not yet freed
    if encryption is not None:  # the new packs are sealed as a backup's are
        for path in (chunks_dir(workspace) / "packs").rglob("*/*"):
            assert path.read_bytes().startswith(b"age-encryption.org/v1\n"), path
    # a backup now reuses the live chunks from their new pack, not the condemned ones
    third = backup(workspace)
    trees[third] = list(trees.values())[-1]  # the volume is as the second backup saw it
    assert chunks.added_bytes(volume, third) == 0
    if where == "local":  # the recovery script, too, takes either copy of a chunk
        tar = export(workspace, volume, third)
        assert rebuilt_by_script(workspace, volume, third, tmp_path) == tar

    prune(workspace)
    after = chunks.size()
    print(f"chunk repository in {where}: {before} bytes before, {after} after")
    assert not first_packs & chunks.packs()
    # 12 MiB of the first backup's chunks, three quarters dead: some 9 MiB freed
    assert after < before - 8 * MiB, (before, after)
    every_listed_archive_restores(api, workspace, volume, trees)
    if where == "local":
        assert rebuilt_by_script(workspace, volume, third, tmp_path) == tar


def test_a_repack_killed_at_each_step_leaves_every_archive_restorable_and_the_next_finishes(
    api: docker.APIClient, volumes, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOLKEEP_GC_MARGIN", "0")
    volume = volumes("repack_kill")
    chunks = Chunks(workspace)
    first_packs, trees = most_files_rewritten(api, chunks, volume)
    before = chunks.size()
    for point in (
        "repack: first new pack stored",
        "repack: new index stored",
        "repack: condemned record stored",
        "garbage collection: first pack deleted",
    ):
        result = killed(workspace, point, "prune", "app")
        assert result.returncode == -9, (point, result.stderr)
        every_listed_archive_restores(api, workspace, volume, trees)
    prune(workspace)
    prune(workspace)
    assert not first_packs & chunks.packs()
    assert chunks.size() < before - 8 * MiB, (before, chunks.size())
    assert not (chunks_dir(workspace) / "condemned").exists() or not any(
        (chunks_dir(workspace) / "condemned").iterdir()
    )
    every_listed_archive_restores(api, workspace, volume, trees)


def test_a_backup_reusing_chunks_of_a_pack_as_it_is_repacked_commits_and_keeps_them(
    api: docker.APIClient, volumes, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: a backup read the index before a pack was repacked and reuses two of its
    chunks, one live (stored again by the repack) and one dead (not stored again). It
    commits within half the margin of the condemnation: the pack is revived for the dead
    chunk, and the backup's archive restores before and after every collection."""
    margin = 10.0  # the backup commits within half of it after the condemnation
    monkeypatch.setenv("VOLKEEP_GC_MARGIN", str(margin))
    volume, other = volumes("repack_race"), volumes("repack_race_other")
    chunks = Chunks(workspace)
    first_packs, trees = most_files_rewritten(api, chunks, volume)
    chunks.configure(volume, other, retention={"keep_last": 1})
    root = mountpoint(api, other)
    write_random(root / "live.bin", b"first 0")  # unchanged in the volume: live
    write_random(root / "dead.bin", b"first 1")  # rewritten there: dead once pruned
    write_random(root / "own.bin", b"own", MiB)  # a new chunk: the backup stores an index
    tree = snapshot(root)
    backing_up = paused(
        workspace, "index stored, manifest not written", "backup", "app", "--volume", other
    )
    try:
        time.sleep(margin + 0.5)  # the first backup's packs are older than the margin
        output = workspace.run("prune", "app", "--volume", volume)
        assert output.returncode == 0, output.stderr
        assert f"{REPACKED} 2 mostly-dead packs again" in output.stdout, output.stdout
    finally:
        result = resumed(backing_up)
    assert result.returncode == 0, result.stderr
    (row,) = listed(workspace, other)
    assert differences(tree, restored(api, workspace, other, row["id"])) == []

    time.sleep(margin + 0.5)
    prune(workspace)  # the pack holding dead.bin's chunks is used again: revived
    packs = chunks.packs()
    assert first_packs & packs  # the pack of dead.bin's chunks, revived
    assert differences(tree, restored(api, workspace, other, row["id"])) == []
    every_listed_archive_restores(api, workspace, volume, trees)
