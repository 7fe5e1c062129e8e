"""A storage's chunk repository and the state dir's cache of its index files
(daemon/repository/chunks.py, daemon/state/chunkindex.py), on a real local store: the index
files are the truth, the cache follows them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.packs import ChunkWriter, SealedPack, index_key
from daemon.repository.chunks import ChunkStore
from daemon.repository.store import Repository
from daemon.state.chunkindex import ChunkIndex, Location, Pending
from daemon.storage.local import LocalStore

CONFIG = ChunkConfig(bytes(32))


def stored_backup(chunks: ChunkStore, *contents: bytes) -> tuple[str, list[str]]:
    """Store chunks as one backup does (packs, then the index); return the index's name and
    the chunk ids."""
    writer = ChunkWriter(CONFIG, (), set(), chunks.put_pack)
    ids = [writer.add(content) for content in contents]
    writer.finish()
    chunks.put_index(writer.index.sha256, writer.index.stored())
    return writer.index.sha256, ids


def test_the_cache_loads_new_index_files_and_starts_again_when_one_is_gone(
    tmp_path: Path,
) -> None:
    chunks = ChunkStore(Repository(LocalStore("local", tmp_path / "repo"), "h", own=True), "app")
    cache = ChunkIndex(chunks.cache_path(tmp_path / "state"))
    first_index, (first,) = stored_backup(chunks, hashlib.shake_256(b"1").digest(50_000))
    chunks.sync(cache, None, ())
    assert cache.locate(first) and cache.loaded() == {first_index}
    where = cache.locate(first)
    assert where is not None and chunks.get_pack(where.pack)

    second_index, (second,) = stored_backup(chunks, hashlib.shake_256(b"2").digest(50_000))
    chunks.sync(cache, None, ())
    assert cache.locate(first) and cache.locate(second)

    # garbage collection removed the first backup's index: the cache forgets its chunks
    (tmp_path / "repo" / chunks.directory / index_key(first_index)).unlink()
    chunks.sync(cache, None, ())
    assert not cache.locate(first) and cache.locate(second) and cache.loaded() == {second_index}


def test_a_backup_s_pending_chunks_are_not_in_the_cache_until_loaded(tmp_path: Path) -> None:
    cache = ChunkIndex(tmp_path / "cache.sqlite")
    pending = Pending()
    chunk, pack = "ab" * 32, "cd" * 32
    pending.add(chunk)
    pending.place([Location(chunk, pack, 0, 10, 20)])
    assert chunk in pending and cache.locate(chunk) is None
    cache.load("ef" * 32, pending.placed())
    assert cache.locate(chunk) == Location(chunk, pack, 0, 10, 20)


def test_a_pack_stored_twice_under_its_name_is_no_error(tmp_path: Path) -> None:
    chunks = ChunkStore(Repository(LocalStore("local", tmp_path / "repo"), "h", own=True), "app")
    pack = SealedPack("00" * 32, b"bytes", ())
    chunks.put_pack(pack)
    chunks.put_pack(pack)
    assert chunks.get_pack(pack.name) == b"bytes"
