"""Listing a policy's volumes reads each directory on its own, never the chunk
repository's packs (`Repository.volumes`), with a real local store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from daemon.repository.store import Repository
from daemon.storage.local import LocalStore


class _Recording(LocalStore):
    """A local store that records every name its listings yield."""

    def __init__(self, root: Path) -> None:
        super().__init__("local", root)
        self.read: list[str] = []

    def list(self, prefix: str) -> Iterator[str]:
        for key in super().list(prefix):
            self.read.append(key)
            yield key

    def list_directory(self, directory: str) -> Iterator[str]:
        for name in super().list_directory(directory):
            self.read.append(directory + name)
            yield name


def test_listing_a_policys_volumes_never_reads_its_packs(tmp_path: Path) -> None:
    store = _Recording(tmp_path)
    for number in range(300):
        store.put(f"host/app/_chunks/packs/{number % 256:02x}/pack{number}", b".")
    store.put("host/app/_chunks/index/index1", b".")
    store.put("host/app/db/db-20250101T000000Z.recipe.zst", b".")
    store.put("host/app/db/db-20250101T000000Z.manifest.json", b".")
    store.put("host/app/files/files-20250102T000000Z.tar.zst", b".")
    store.put("host/app/empty/unrelated", b".")  # no archive file: no volume

    volumes = Repository(store, "host", own=True).volumes("app")

    assert volumes == ["db", "files"]
    assert [name for name in store.read if "_chunks/" in name] == ["host/app/_chunks/"]
    assert len(store.read) < 10
