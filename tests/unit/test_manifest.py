"""The manifest round-trips, and its summary can be read without its entries."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.archive.manifest import Manifest
from daemon.archive.tarstream import Member


def sample(entries: int) -> Manifest:
    moment = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    return Manifest(
        id="20261128T030000Z",
        policy="app",
        volume="app_db",
        started=moment,
        finished=moment,
        archive_file="app_db-20261128T030000Z.tar.zst",
        size=1234,
        sha256="ab" * 32,
        compression="zstd",
        compression_level=3,
        tar_flavour="busybox",
        tar_size=10240,
        host="host",
        volume_labels={"volkeep.policy": "app"},
        entries=[
            Member(
                f"dir/ü file\n{index}",
                "file",
                0o644,
                999,
                999,
                index,
                3786912000.5,
                sha256="cd" * 32,
                xattrs={"user.k": "v"} if index % 2 else None,
            )
            for index in range(entries)
        ],
    )


def test_a_manifest_round_trips_with_every_entry() -> None:
    manifest = sample(50)
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_the_summary_reads_without_entries() -> None:
    manifest = sample(50)
    summary = Manifest.from_json(manifest.to_json(), entries=False)
    assert summary.entries == []
    assert (summary.id, summary.size, summary.sha256, summary.volume_labels) == (
        manifest.id,
        manifest.size,
        manifest.sha256,
        manifest.volume_labels,
    )


def test_an_empty_volume_has_a_readable_manifest() -> None:
    manifest = sample(0)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(manifest.to_json(), entries=False).id == manifest.id
