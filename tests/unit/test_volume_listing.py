"""Listing a policy's volumes (`Repository.volumes`) or surveying a storage's hosts
(`survey`) reads one directory at a time, never a chunk repository's packs; with a real
local store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from daemon.repository.inventory import survey
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


def test_surveying_a_storages_hosts_never_reads_their_packs(tmp_path: Path) -> None:
    store = _Recording(tmp_path)
    for host in ("web-1", "web-2"):
        for number in range(100):
            store.put(f"{host}/app/_chunks/packs/{number % 256:02x}/pack{number}", b".")
        store.put(f"{host}/app/db/db-20250101T000000Z.manifest.json", b".")
    store.put("web-1/.volkeep-host.json", b"{}")
    store.put("old/data/data-20240101T000000Z.manifest.json", b".")  # before host names

    found = survey(store, records=False)

    assert {host: sorted(n.volumes) for host, n in found.items()} == {
        "": [("old", "data")],
        "web-1": [("app", "db")],
        "web-2": [("app", "db")],
    }
    assert found["web-1"].marked and not found["web-2"].marked
    assert [key.id for key in found["web-2"].volumes["app", "db"].committed()] == [
        "20250101T000000Z"
    ]
    assert [name for name in store.read if "/_chunks/" in name and "packs" in name] == []
