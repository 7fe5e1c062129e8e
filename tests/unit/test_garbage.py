"""Garbage collection on a real local store, without Docker (SPEC promise 15): only this
host's namespace, only what is provably abandoned, never a body whose manifest exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.repository.garbage import remove_garbage
from daemon.repository.ids import allocate_key
from daemon.repository.layout import MANIFEST_SUFFIX
from daemon.repository.store import Repository
from daemon.storage.local import LocalStore
from tests.unit.test_repository import commit

STAMP = "20261101T030000Z"
TWO_DAYS = 2 * 24 * 3600

# Another volkeep process: it begins an archive of app/db in the store and keeps writing
# it until its stdin closes.
WRITER = """
import sys
from pathlib import Path
from daemon.repository.ids import allocate_key
from daemon.repository.store import Repository
from daemon.storage.local import LocalStore

repository = Repository(LocalStore("local", Path(sys.argv[1])), sys.argv[2], own=True)
key = allocate_key([repository], "app", "db", sys.argv[3], safety=False)
upload = repository.begin(key, ".tar.zst")
upload.write(b"half of an archive")
upload.upload._file.flush()  # the local store's file, under the storage's latch
print(key.id, flush=True)
sys.stdin.read()
"""


class LaggingStore(LocalStore):
    """A store whose listings have not caught up with the manifests written lately (some
    S3-compatible stores list a new object seconds after its write)."""

    def list(self, prefix: str) -> Iterator[str]:
        return (key for key in super().list(prefix) if not key.endswith(MANIFEST_SUFFIX))

    def list_directory(self, directory: str) -> Iterator[str]:
        names = super().list_directory(directory)
        return (name for name in names if not name.endswith(MANIFEST_SUFFIX))


def age(directory: Path, seconds: float) -> None:
    """Make every file under `directory` (hidden ones too) `seconds` old."""
    moment = time.time() - seconds
    for path in directory.rglob("*"):
        if path.is_file():
            os.utime(path, (moment, moment))


def partial_files(root: Path) -> list[str]:
    return sorted(path.name for path in root.rglob(".*.partial"))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A live process writing an archive of app/db as host "a"."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "repo"), "a", STAMP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == STAMP
    yield process
    process.kill()
    process.wait()


def test_garbage_keeps_a_body_whose_manifest_a_lagging_listing_omits(tmp_path: Path) -> None:
    key = commit(Repository(LocalStore("local", tmp_path / "repo"), "a", own=True), STAMP)
    age(tmp_path / "repo", TWO_DAYS)
    lagging = Repository(LaggingStore("local", tmp_path / "repo"), "a", own=True)

    assert remove_garbage(lagging, "app", "db") == []
    assert (tmp_path / "repo" / key.blob(".tar.zst")).read_bytes() == b"archive"
    assert (tmp_path / "repo" / key.blob(MANIFEST_SUFFIX)).exists()


def test_garbage_keeps_a_fresh_partial_file_of_a_live_owner_and_removes_a_dead_owners(
    tmp_path: Path, writer: subprocess.Popen[str]
) -> None:
    repository = Repository(LocalStore("local", tmp_path / "repo"), "a", own=True)
    in_flight = partial_files(tmp_path / "repo")

    assert remove_garbage(repository, "app", "db") == []
    assert partial_files(tmp_path / "repo") == in_flight != []

    writer.kill()
    writer.wait()
    removed = remove_garbage(repository, "app", "db")

    assert f"a/app/db/db-{STAMP}.tar.zst" in removed
    assert partial_files(tmp_path / "repo") == []
    assert list(repository.store.list("")) == []


def test_garbage_of_an_owner_it_cannot_judge_waits_for_the_margin(tmp_path: Path) -> None:
    repository = Repository(LocalStore("local", tmp_path / "repo"), "a", own=True)
    foreign = tmp_path / "repo" / "a" / "app" / "db"
    foreign.mkdir(parents=True)
    # files an older volkeep left, with no word of who wrote them
    (foreign / f".db-{STAMP}.tar.zst.partial").write_bytes(b"half")
    (foreign / f"db-{STAMP}-2.tar.zst").write_bytes(b"whole, never committed")

    assert remove_garbage(repository, "app", "db") == []
    assert len(list(foreign.iterdir())) == 2

    age(tmp_path / "repo", TWO_DAYS)

    assert remove_garbage(repository, "app", "db") == [
        f"a/app/db/db-{STAMP}-2.tar.zst",
        f"a/app/db/db-{STAMP}.tar.zst",
    ]
    assert list(foreign.iterdir()) == []


def test_garbage_of_the_layout_before_host_names_never_reaches_another_hosts_files(
    tmp_path: Path,
) -> None:
    store = LocalStore("local", tmp_path / "repo")
    # host "app", policy "db", volume "db": its files are under app/db/db/, inside the
    # directory of policy "app", volume "db" in the layout before host names (app/db/)
    other_host = Repository(store, "app", own=True)
    key = allocate_key([other_host], "db", "db", STAMP, safety=False)
    upload = other_host.begin(key, ".tar.zst")
    upload.write(b"in flight")
    leftover = tmp_path / "repo" / "app" / "db" / "db" / f".db-{STAMP}-9.tar.zst.partial"
    leftover.write_bytes(b"abandoned, but not web's")
    age(tmp_path / "repo", TWO_DAYS)

    assert remove_garbage(Repository(store, "web", own=True), "app", "db") == []
    assert leftover.exists()
    upload.commit()
    assert store.exists(key.blob(".tar.zst"))


def test_two_processes_in_one_second_get_different_ids(tmp_path: Path) -> None:
    store = LocalStore("local", tmp_path / "repo")
    first = allocate_key([Repository(store, "a", own=True)], "app", "db", STAMP, safety=False)
    # the first process's archive is being written: nothing of it is listed yet
    Repository(store, "a", own=True).begin(first, ".tar.zst").write(b"first")

    second = allocate_key([Repository(store, "a", own=True)], "app", "db", STAMP, safety=False)

    assert (first.id, second.id) == (STAMP, f"{STAMP}-2")
