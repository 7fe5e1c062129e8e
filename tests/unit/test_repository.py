"""The repository's rules on a real local store, without Docker: layout and hosts, the
commit marker, the one safety rule, hostile manifests, archives from the future."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.archive.manifest import Manifest
from daemon.errors import OperationError
from daemon.repository.garbage import remove_garbage
from daemon.repository.ids import allocate_key
from daemon.repository.layout import MANIFEST_SUFFIX, ArchiveKey
from daemon.repository.locate import locate
from daemon.repository.store import Repository
from daemon.storage.local import LocalStore


def commit(
    repository: Repository, stamp: str, *, safety: bool = False, **fields: str
) -> ArchiveKey:
    key = allocate_key([repository], "app", "db", stamp, safety=safety)
    upload = repository.begin(key, ".tar.zst")
    upload.write(b"archive")
    upload.commit()
    moment = key.time or datetime.now(UTC)
    manifest = Manifest(
        id=key.id,
        policy="app",
        volume="db",
        started=moment,
        finished=moment,
        archive_file=fields.get("archive_file", key.file_name(".tar.zst")),
        size=7,
        sha256="0" * 64,
        compression="zstd",
        compression_level=None,
        tar_flavour="busybox",
        tar_size=0,
        host=repository.host,
    )
    repository.commit(key, [manifest.to_json()])
    return key


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore("local", tmp_path / "repo")


def test_hosts_see_only_their_own_archives_and_another_host_is_read_only(store):
    mine = Repository(store, "a", own=True)
    theirs = Repository(store, "b", own=True)
    commit(mine, "20261101T030000Z")
    commit(theirs, "20261102T030000Z")
    seen_from_a = Repository(store, "b", own=False)

    assert [key.id for key in mine.backups("app", "db")] == ["20261101T030000Z"]
    assert [key.id for key in seen_from_a.backups("app", "db")] == ["20261102T030000Z"]
    with pytest.raises(OperationError, match="read-only"):
        remove_garbage(seen_from_a, "app", "db")


def test_the_layout_before_host_names_is_read_as_this_hosts(store):
    legacy = ArchiveKey("app", "db", "20250101T030000Z")
    store.put(legacy.blob(".tar.zst"), b"old")
    manifest = commit(Repository(store, "elsewhere", own=True), "20250101T030000Z")
    store.put(legacy.blob(MANIFEST_SUFFIX), store.get(manifest.blob(MANIFEST_SUFFIX)))
    here = Repository(store, "a", own=True)

    assert [(key.id, key.namespace) for key in here.backups("app", "db")] == [
        ("20250101T030000Z", "")
    ]
    assert here.volumes("app") == ["db"]


def test_a_safety_archive_is_never_latest_even_with_a_counter(store):
    repository = Repository(store, "a", own=True)
    backup = commit(repository, "20261101T030000Z")
    commit(repository, "20261102T030000Z", safety=True)
    second = commit(repository, "20261102T030000Z", safety=True)

    assert second.id == "20261102T030000Z-2-safety" and second.is_safety
    assert locate([repository], "app", "db", "latest")[1] == backup


def test_the_manifest_is_a_conditional_create(store):
    repository = Repository(store, "a", own=True)
    key = commit(repository, "20261101T030000Z")
    with pytest.raises(FileExistsError):
        repository.commit(key, [b"{}"])


def test_a_manifest_naming_a_foreign_file_is_refused(store):
    repository = Repository(store, "a", own=True)
    key = commit(repository, "20261101T030000Z", archive_file="../../../etc/passwd")

    with pytest.raises(OperationError, match="foreign archive file"):
        repository.read_manifest(key)


def test_a_new_id_warns_of_the_backups_dated_after_it(store):
    repository = Repository(store, "a", own=True)
    commit(repository, "20261101T030000Z")
    ahead = [commit(repository, stamp).id for stamp in ("20261103T030000Z", "20261104T030000Z")]
    commit(repository, "20261105T030000Z", safety=True)  # a safety archive takes no place

    with capture_logs() as logged:
        allocate_key([repository], "app", "db", "20261102T030000Z", safety=False)

    [warning] = [entry for entry in logged if entry["log_level"] == "warning"]
    assert warning["event"] == "archives dated after the new one: is a clock wrong?"
    assert warning["archives"] == ahead[::-1] and warning["storage"] == "local"


def test_latest_passes_over_archives_from_the_future(store):
    repository = Repository(store, "a", own=True)
    now = datetime.now(UTC)
    present = commit(repository, (now - timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ"))
    future = commit(repository, (now + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ"))

    assert future.in_the_future() and not present.in_the_future()
    assert locate([repository], "app", "db", "latest")[1] == present
    assert locate([repository], "app", "db", future.id)[1] == future


def test_ids_order_by_time_then_by_their_counter_as_a_number(store):
    repository = Repository(store, "a", own=True)
    for _ in range(11):
        commit(repository, "20261101T030000Z")
    commit(repository, "20261101T030000Z", safety=True)
    commit(repository, "20261031T235959Z")

    newest_first = [key.id for key in repository.archives("app", "db")]

    assert newest_first == [
        *(f"20261101T030000Z-{counter}" for counter in range(11, 1, -1)),
        "20261101T030000Z-safety",  # a first id's counter is 1: after the backup without one
        "20261101T030000Z",
        "20261031T235959Z",
    ]
    assert locate([repository], "app", "db", "latest")[1].id == "20261101T030000Z-11"
    assert ArchiveKey("app", "db", "20261101T030000Z-2-safety") < ArchiveKey(
        "app", "db", "20261101T030000Z-10"
    )
