"""The shrink guard against a real local storage, without Docker: prune keeps the archive
before a shrink, an acceptance in the storage frees it and outlives it, and a backup that
shrank is warned about and announced."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon import events
from daemon.actions.prune import pending_shrinks, prune_volume
from daemon.actions.shrink import notice_shrink
from daemon.repository.acceptances import acceptance_blob, read_acceptances, write_acceptance
from daemon.repository.garbage import remove_garbage
from daemon.repository.store import Repository
from daemon.rules.shrink import Acceptance
from daemon.storage.local import LocalStore
from tests.unit.test_prune import HOST, NOW, VOLUME, files, plant, policy

FULL, EMPTY = 50 << 20, 1536  # tar bytes: a volume with data, and the same volume emptied


@pytest.fixture
def storage(tmp_path: Path) -> Repository:
    return Repository(LocalStore("local", tmp_path / "repo"), HOST, own=True)


def emptied_history(storage: Repository) -> list[str]:
    """Plant two full backups, then three of the emptied volume; return their ids."""
    days = [(1, FULL), (2, FULL), (3, EMPTY), (4, EMPTY), (5, EMPTY)]
    return [plant(storage, f"2026-01-0{day}T03:00", tar_bytes=size).id for day, size in days]


def kept(storage: Repository, **rules: int) -> list[str]:
    decisions = prune_volume(policy(**rules), storage, VOLUME, dry_run=False, now=NOW)
    return [decision.id for decision in decisions if decision.keep]


def accept(storage: Repository) -> None:
    [found] = pending_shrinks(policy(keep_last=1), storage, VOLUME, NOW)
    key = next(key for key in storage.backups("app", VOLUME) if key.id == found.after)
    write_acceptance(storage, key, Acceptance("app", VOLUME, found, NOW))


def test_prune_keeps_the_backup_before_the_loss_and_the_first_after_it(storage):
    ids = emptied_history(storage)
    assert kept(storage, keep_last=1) == [ids[4], ids[2], ids[1]]
    assert kept(storage, keep_last=1) == [ids[4], ids[2], ids[1]]


def test_an_acceptance_frees_them_and_outlives_them_and_the_garbage_collection(storage):
    ids = emptied_history(storage)
    accept(storage)
    record = acceptance_blob(next(k for k in storage.backups("app", VOLUME) if k.id == ids[2]))

    assert kept(storage, keep_last=1) == [ids[4]]
    assert remove_garbage(storage, "app", VOLUME) == []
    assert storage.store.exists(record)
    assert [found.shrink.after for found in read_acceptances(storage, "app", VOLUME)] == [ids[2]]
    assert storage.volumes("app") == [VOLUME]


def test_an_unreadable_acceptance_is_passed_over_and_the_guard_holds(storage):
    ids = emptied_history(storage)
    accept(storage)
    [path] = [name for name in files(storage) if ".shrink-accepted." in name]
    record = storage.store.get(f"{storage.host}/app/{VOLUME}/{path}")
    later = record.replace(b'"format": 1', b'"format": 2')
    storage.store.put(f"{storage.host}/app/{VOLUME}/{path}", later)

    with capture_logs() as logged:
        assert kept(storage, keep_last=1) == [ids[4], ids[2], ids[1]]
    [warning] = [line for line in logged if line["event"].startswith("passed over")]
    assert "unknown acceptance format 2" in warning["error"]


def test_a_backup_that_shrank_is_warned_about_and_announced(storage):
    before, after = (plant(storage, f"2026-01-0{day}T03:00") for day in (1, 2))
    previous = replace(storage.read_manifest(before, entries=False), tar_size=FULL)
    emptied = replace(storage.read_manifest(after, entries=False), tar_size=EMPTY)
    heard: list[events.Event] = []
    unsubscribe = events.subscribe(heard.append)
    try:
        with capture_logs() as logged:
            assert notice_shrink(previous, previous) is None
            assert notice_shrink(None, emptied) is None
            found = notice_shrink(previous, emptied)
    finally:
        unsubscribe()

    assert found is not None and (found.before, found.after) == (before.id, after.id)
    [announced] = heard
    assert announced == events.VolumeShrank("app", VOLUME, found, announced.at)
    [warning] = logged
    assert warning["log_level"] == "warning"
    assert (warning["tar_bytes_before"], warning["tar_bytes_after"]) == (FULL, EMPTY)
    assert (warning["before"], warning["archive"]) == (before.id, after.id)
    assert datetime(2026, 1, 2, 3, tzinfo=UTC) == found.after_created
