"""Prune against a real local storage, without Docker: which files go, which stay, and why."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.actions import prune
from daemon.actions.prune import prune_volume
from daemon.archive.manifest import Manifest
from daemon.config.model import Policy, PolicyStorage, RetentionRules, Source, VolumeSelector
from daemon.errors import OperationError
from daemon.repository.ids import allocate_key
from daemon.repository.layout import MANIFEST_SUFFIX, ArchiveKey
from daemon.repository.store import Repository
from daemon.rules.retention import Decision
from daemon.rules.verdict import DrillRecord
from daemon.storage.local import LocalStore

HOST = "testhost"

NOW = datetime(2026, 2, 1, tzinfo=UTC)
VOLUME = "db"


def policy(**rules: int) -> Policy:
    return Policy(
        name="app",
        source=Source("volkeep.yaml", 1),
        selector=VolumeSelector(names=(VOLUME,)),
        storages=(PolicyStorage("local"),),
        retention=RetentionRules(**rules),
    )


def plant(storage: Repository, when: str, kind: str = "backup", tar_bytes: int = 0) -> ArchiveKey:
    """Given an ISO time in UTC, commit an archive of VOLUME created then (of a tar of
    `tar_bytes`); return its key."""
    started = datetime.fromisoformat(when).replace(tzinfo=UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    key = allocate_key([storage], "app", VOLUME, stamp, safety=kind == "safety")
    upload = storage.begin(key, ".tar.zst")
    upload.write(b"archive " + key.id.encode())
    upload.commit()
    manifest = Manifest(
        id=key.id,
        kind=kind,
        policy="app",
        volume=VOLUME,
        started=started,
        finished=started,
        archive_file=key.file_name(".tar.zst"),
        size=len(b"archive " + key.id.encode()),
        sha256="0" * 64,
        compression="zstd",
        compression_level=None,
        tar_flavour="busybox",
        tar_size=tar_bytes,
        host="test",
    )
    storage.commit(key, [manifest.to_json()])
    return key


def pass_drill(storage: Repository, key: ArchiveKey) -> None:
    record = DrillRecord(
        policy=key.policy,
        volume=key.volume,
        archive=key.id,
        passed=True,
        finished=NOW,
        duration=1.0,
        restore_seconds=1.0,
        bytes=1,
    )
    storage.write_drill(key, record)


def directory(storage: Repository) -> Path:
    return Path(storage.describe()) / HOST / "app" / VOLUME


def files(storage: Repository) -> list[str]:
    return sorted(os.listdir(directory(storage)))


def pair(key: ArchiveKey) -> list[str]:
    return [key.file_name(".manifest.json"), key.file_name(".tar.zst")]


@pytest.fixture
def storage(tmp_path: Path) -> Repository:
    return Repository(LocalStore("local", tmp_path / "repo"), HOST, own=True)


def test_deleted_archives_lose_both_files_and_the_rest_keep_theirs(storage):
    keys = [plant(storage, f"2026-01-{day:02d}T03:00") for day in (1, 2, 3, 4)]

    decisions = prune_volume(policy(keep_daily=2), storage, VOLUME, dry_run=False, now=NOW)

    assert [(d.id, d.keep, d.reasons) for d in decisions] == [
        (keys[3].id, True, ("daily 1", "newest archive")),
        (keys[2].id, True, ("daily 2",)),
        (keys[1].id, False, ()),
        (keys[0].id, False, ()),
    ]
    assert files(storage) == sorted(pair(keys[2]) + pair(keys[3]))


def test_dry_run_deletes_nothing_and_leaves_garbage_alone(storage):
    keys = [plant(storage, f"2026-01-{day:02d}T03:00") for day in (1, 2, 3)]
    orphan = directory(storage) / f"{VOLUME}-20251231T030000Z.tar.zst"
    orphan.write_bytes(b"no manifest")
    before = files(storage)

    decisions = prune_volume(policy(keep_last=1), storage, VOLUME, dry_run=True, now=NOW)

    assert [d.keep for d in decisions] == [True, False, False]
    assert files(storage) == before
    assert orphan.name in before and all(name in before for key in keys for name in pair(key))


def test_safety_archives_stay_for_their_window_and_take_no_place_of_a_backup(storage):
    older, newer = plant(storage, "2026-01-01T03:00"), plant(storage, "2026-01-02T03:00")
    safety = plant(storage, "2026-01-03T12:00", kind="safety")

    decisions = prune_volume(policy(keep_last=1), storage, VOLUME, dry_run=False, now=NOW)

    assert decisions == [
        Decision(safety.id, True, ("safety archive, kept until 2026-02-02 12:00 UTC",)),
        Decision(newer.id, True, ("last 1", "newest archive")),
        Decision(older.id, False, ()),
    ]
    assert files(storage) == sorted(pair(safety) + pair(newer))


def test_a_safety_archive_past_keep_safety_archives_is_deleted_and_counts_for_nothing(storage):
    expired = plant(storage, "2025-12-31T12:00", kind="safety")  # 31.5 days before NOW
    within = plant(storage, "2026-01-20T12:00", kind="safety")
    backup = plant(storage, "2026-01-02T03:00")

    decisions = prune_volume(policy(keep_last=1), storage, VOLUME, dry_run=False, now=NOW)

    assert decisions == [
        Decision(within.id, True, ("safety archive, kept until 2026-02-19 12:00 UTC",)),
        Decision(backup.id, True, ("last 1", "newest archive")),
        Decision(expired.id, False, ()),
    ]
    assert files(storage) == sorted(pair(within) + pair(backup))


def test_keep_safety_archives_sets_the_window(storage):
    safety = plant(storage, "2026-01-25T00:00", kind="safety")
    week = replace(policy(keep_last=1), keep_safety_archives=timedelta(days=7))

    planned = prune_volume(week, storage, VOLUME, dry_run=True, now=NOW - timedelta(hours=1))
    kept = Decision(safety.id, True, ("safety archive, kept until 2026-02-01 00:00 UTC",))
    assert planned == [kept]
    pruned = prune_volume(week, storage, VOLUME, dry_run=False, now=NOW)
    assert pruned == [Decision(safety.id, False, ())] and files(storage) == []


def test_the_newest_drill_passed_archive_outlives_keep_last(storage):
    drilled = plant(storage, "2026-01-01T03:00")
    pass_drill(storage, drilled)
    middle, newest = plant(storage, "2026-01-02T03:00"), plant(storage, "2026-01-03T03:00")

    decisions = prune_volume(policy(keep_last=1), storage, VOLUME, dry_run=False, now=NOW)

    assert {d.id: d.reasons for d in decisions if d.keep} == {
        newest.id: ("last 1", "newest archive"),
        drilled.id: ("newest drill-passed archive",),
    }
    assert middle.id not in "".join(files(storage))
    assert files(storage) == sorted(
        [*pair(drilled), drilled.file_name(".drill.json"), *pair(newest)]
    )


def test_an_archive_with_an_unreadable_manifest_is_kept(storage):
    unreadable = plant(storage, "2026-01-01T03:00")
    (directory(storage) / unreadable.file_name(MANIFEST_SUFFIX)).write_text("{")
    plant(storage, "2026-01-02T03:00")
    plant(storage, "2026-01-03T03:00")

    decisions = prune_volume(policy(keep_last=1), storage, VOLUME, dry_run=False, now=NOW)

    assert decisions[-1] == Decision(
        unreadable.id, True, ("unreadable manifest, kept until removed by hand",)
    )
    assert set(pair(unreadable)) <= set(files(storage))
    assert [d.keep for d in decisions] == [True, False, True]


def test_a_selection_that_errs_is_stopped_by_the_safety_predicate(storage, monkeypatch):
    older, newest = plant(storage, "2026-01-01T03:00"), plant(storage, "2026-01-02T03:00")

    def delete_everything(candidates, *_, **__):
        return [Decision(candidate.id, False, ()) for candidate in candidates]

    monkeypatch.setattr(prune, "select", delete_everything)

    with pytest.raises(OperationError, match="a safety rule protects") as refused:
        prune_volume(policy(keep_last=1), storage, VOLUME, dry_run=False, now=NOW)

    assert refused.value.archive == newest.id
    assert older.id not in "".join(files(storage))  # deleted first, oldest first
    assert files(storage) == pair(newest)


@pytest.mark.parametrize(
    ("judged", "protected"),
    [("0" * 64, True), (None, True), ("1" * 64, False)],
    ids=["same stored bytes", "a record older than the digest", "other bytes"],
)
def test_a_verdict_in_another_storage_protects_the_same_archive_here(
    tmp_path: Path, judged: str | None, protected: bool
) -> None:
    drilled = Repository(LocalStore("drilled", tmp_path / "drilled"), HOST, own=True)
    offsite = Repository(LocalStore("local", tmp_path / "offsite"), HOST, own=True)
    proven, newer = (plant(offsite, f"2026-01-{day:02d}T03:00") for day in (1, 2))
    plant(drilled, "2026-01-01T03:00")
    record = DrillRecord("app", VOLUME, proven.id, True, NOW, 1.0, 1.0, 1, archive_sha256=judged)
    drilled.write_drill(proven, record)

    decisions = prune_volume(
        policy(keep_last=1), offsite, VOLUME, dry_run=False, now=NOW, storages=[drilled, offsite]
    )

    kept = {decision.id: decision.reasons for decision in decisions if decision.keep}
    assert ("newest drill-passed archive" in kept.get(proven.id, ())) is protected
    assert (proven.file_name(".manifest.json") in files(offsite)) is protected
    assert newer.file_name(".manifest.json") in files(offsite)


class _Unlistable(LocalStore):
    """A local storage whose directories cannot be listed (a disk's read error)."""

    def list_directory(self, directory: str) -> Iterator[str]:
        raise OSError(errno.EIO, "Input/output error", directory)


@pytest.mark.parametrize("dry_run", [False, True], ids=["prune", "dry run"])
@pytest.mark.parametrize("broken", ["offsite", "drilled"])
def test_a_storage_that_cannot_be_listed_stops_the_prune_naming_what_it_lacks(
    tmp_path: Path, broken: str, dry_run: bool
) -> None:
    def storage(name: str) -> Repository:
        kind = _Unlistable if name == broken else LocalStore
        return Repository(kind(name, tmp_path / name), HOST, own=True)

    offsite, drilled = storage("offsite"), storage("drilled")
    planting = Repository(LocalStore("offsite", tmp_path / "offsite"), HOST, own=True)
    for day in (1, 2, 3):
        plant(planting, f"2026-01-{day:02d}T03:00")
    before = files(planting)

    with pytest.raises(OperationError) as raised:
        prune_volume(
            policy(keep_last=1), offsite, VOLUME, dry_run=dry_run, now=NOW,
            storages=[drilled, offsite],
        )  # fmt: skip

    if broken == "drilled":
        what = "cannot read the drill verdicts"
    else:  # a prune looks for its incomplete uploads first
        what = "cannot list the archives" if dry_run else "cannot prune"
    assert raised.value.message.startswith(f"{what} in storage {broken!r}")
    assert files(planting) == before
