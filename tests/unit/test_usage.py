"""What backups cost: the bytes each added (`Manifest.added_bytes`) and a volume's usage
in a storage (`backups_usage`), over one-file and deduplicated archives."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.actions.status import Usage, backups_usage
from daemon.archive.manifest import DEDUPLICATED, ChunkCounts, Manifest

WHEN = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


def manifest(size: int, tar_size: int, counts: ChunkCounts | None = None) -> Manifest:
    return Manifest(
        id="20260301T030000Z", policy="app", volume="db", started=WHEN, finished=WHEN,
        archive_file="db-20260301T030000Z.recipe.zst", size=size, sha256="0" * 64,
        compression="zstd", compression_level=3, tar_flavour="busybox", tar_size=tar_size,
        host="web-1", layout=DEDUPLICATED if counts else "single", chunk_counts=counts,
    )  # fmt: skip


def test_a_one_file_archive_added_its_file_and_a_deduplicated_one_its_recipe_and_chunks():
    assert manifest(400, 1000).added_bytes == 400
    assert manifest(30, 1000, ChunkCounts(10, 2, 1, 250)).added_bytes == 280


def test_a_volumes_usage_sums_the_tar_and_added_bytes_and_their_ratio():
    first = manifest(30, 1000, ChunkCounts(10, 10, 1, 470))  # 500 added
    repeat = manifest(20, 1000, ChunkCounts(10, 0, 0, 0))  # the recipe alone
    older_tar = manifest(500, 1000)  # written before the policy said dedup

    usage = backups_usage([first, repeat, older_tar])

    assert usage == Usage(backups=3, tar_bytes=3000, added_bytes=1020)
    assert usage.ratio == 3000 / 1020
    assert usage.to_json() == {
        "backups": 3, "tar_bytes": 3000, "added_bytes": 1020, "ratio": 2.94
    }  # fmt: skip


def test_a_storage_without_backups_has_no_ratio():
    assert backups_usage([]) == Usage()
    assert Usage().ratio is None
    assert Usage().to_json()["ratio"] is None
