"""A storage's chunk repository and the state dir's cache of its index files
(daemon/repository/chunks.py, daemon/state/chunkindex.py), on a real local store: the index
files are the truth, the cache follows them."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.packs import ChunkWriter, SealedPack, index_key
from daemon.repository.chunks import ChunkStore
from daemon.repository.store import Repository
from daemon.state import chunkindex
from daemon.state.chunkindex import ChunkIndex, Location, Pending
from daemon.storage import local
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
    pack = SealedPack("00" * 32, (b"bytes",), ())
    chunks.put_pack(pack)
    chunks.put_pack(pack)
    assert chunks.get_pack(pack.name) == b"bytes"


def test_a_chunk_in_two_packs_is_read_and_reused_from_the_one_not_condemned(
    tmp_path: Path,
) -> None:
    """A repack stores a live chunk of a mostly-dead pack again, in a new pack, then
    condemns the old one: whichever index the cache loaded first, and whenever the
    condemnation is seen, readers and backups take the new pack."""
    chunk, old, new = "ab" * 32, "01" * 32, "02" * 32
    for order in ((old, new), (new, old)):
        cache = ChunkIndex(tmp_path / f"{order[0]}.sqlite")
        for number, pack in enumerate(order):
            cache.load(f"{number:064x}", [Location(chunk, pack, 0, 10, 20)])
        assert cache.usable([chunk]) in ({chunk: old}, {chunk: new})
        cache.condemn({old: 1})
        assert cache.locate(chunk) == Location(chunk, new, 0, 10, 20), order
        assert cache.usable([chunk, "cd" * 32]) == {chunk: new}, order
        cache.condemn({old: 1, new: 1})
        assert cache.usable([chunk]) == {} and cache.locate(chunk) is not None
        cache.close()


def test_a_cache_written_before_chunks_could_lie_in_two_packs_starts_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(  # the schema before: one location per chunk
            "CREATE TABLE chunks (id BLOB PRIMARY KEY, pack BLOB NOT NULL, offset INTEGER "
            "NOT NULL, stored INTEGER NOT NULL, plain INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE indexes (name TEXT PRIMARY KEY) WITHOUT ROWID;"
            "INSERT INTO indexes VALUES ('" + "ef" * 32 + "');"
            "INSERT INTO chunks VALUES (x'" + "ab" * 32 + "', x'" + "01" * 32 + "', 0, 1, 2);"
        )
    cache = ChunkIndex(path)
    assert cache.loaded() == set() and cache.locate("ab" * 32) is None
    cache.load("ef" * 32, [Location("ab" * 32, "02" * 32, 0, 1, 2)])
    cache.close()
    assert ChunkIndex(path).loaded() == {"ef" * 32}  # opened again: kept


def test_a_backup_s_taken_chunks_are_found_whatever_ids_share_their_first_bits() -> None:
    pending = Pending()
    taken = ["abcdef" + "0" * 58, "abcdef" + "1" * 58, "123456" + "f" * 58]
    for chunk_id in taken:
        pending.add(chunk_id)
    assert all(chunk_id in pending for chunk_id in taken)
    # the same first 24 bits as a taken id, or other ones: not taken
    assert "abcdef" + "2" * 58 not in pending and "fedcba" + "0" * 58 not in pending
    # both its bits set, by two other taken ids: still not taken
    assert "abcdef" + "f" * 58 not in pending


def test_a_backup_s_taken_chunks_are_told_apart_in_a_batch_before_and_after_the_first() -> None:
    pending = Pending()
    asked = ["abcdef" + "0" * 58, "abcdef" + "1" * 58, "123456" + "f" * 58]
    assert pending.taken(asked) == set()  # none taken yet: nothing asked

    pending.add(asked[1])
    pending.add("fedcba" + "0" * 58)

    assert pending.taken(asked) == {asked[1]}
    assert pending.taken([]) == set()


def test_a_backup_s_taken_chunks_are_found_held_in_memory_or_inserted_in_the_table(
    monkeypatch,
) -> None:
    """Taken ids wait in memory, TAKEN_BATCH at most, and go to the table together in
    their order; each is found whichever side holds it, and no id that shares its first
    bits (its bitmap bit) without being taken is."""
    monkeypatch.setattr(chunkindex, "TAKEN_BATCH", 7)
    pending = Pending()
    taken = [f"abcdef{number:058x}" for number in range(0, 40, 2)]
    for chunk_id in reversed(taken):
        pending.add(chunk_id)
    assert len(pending._adding) == 20 % 7  # the rest were inserted, two batches of 7
    assert all(chunk_id in pending for chunk_id in taken)
    assert not any(f"abcdef{number:058x}" in pending for number in range(1, 40, 2))


def test_a_backup_s_placed_chunks_reach_the_cache_beyond_one_statement_s_parameters(
    tmp_path: Path,
) -> None:
    cache, pending = ChunkIndex(tmp_path / "cache.sqlite"), Pending()
    placed = [Location(f"{number:064x}", "01" * 32, number, 10, 20) for number in range(1200)]
    pending.place(reversed(placed))
    assert list(pending.placed()) == placed  # in the order of their ids
    cache.load("ef" * 32, pending.placed())
    assert cache.locate_all([location.chunk_id for location in placed]) == {
        location.chunk_id: location for location in placed
    }


def test_chunks_are_looked_up_many_at_a_time_beyond_one_query_s_parameters(
    tmp_path: Path,
) -> None:
    cache = ChunkIndex(tmp_path / "cache.sqlite")
    ids = [f"{number:064x}" for number in range(1200)]
    cache.load("ef" * 32, [Location(chunk, "01" * 32, 0, 10, 20) for chunk in ids[::2]])
    assert cache.usable(ids) == {chunk: "01" * 32 for chunk in ids[::2]}
    cache.close()


def test_a_pack_reaches_a_local_storage_in_writes_of_at_most_a_piece(tmp_path: Path, monkeypatch):
    """One write of a whole 8 MiB pack cost the kernel's page-cache copy 0.3-1.1 s of CPU
    per 220 MB on the bench machine, in 256 KiB writes 0.08 s: a pack goes in pieces, and
    whole."""
    sizes: list[int] = []
    write = os.write

    def recorded(fd: int, data) -> int:
        sizes.append(len(data))
        return write(fd, data)

    chunks = ChunkStore(Repository(LocalStore("local", tmp_path / "repo"), "h", own=True), "app")
    data = os.urandom(local.WRITE_BUFFER + 3 * local.WRITE_PIECE + 1234)
    monkeypatch.setattr(local.os, "write", recorded)
    chunks.put_pack(SealedPack(hashlib.sha256(data).hexdigest(), bytearray(data), ()))
    monkeypatch.undo()
    assert sum(sizes) == len(data) and max(sizes) <= local.WRITE_PIECE
    assert chunks.get_pack(hashlib.sha256(data).hexdigest()) == data


def test_chunks_are_located_many_at_a_time_each_in_a_pack_not_condemned(tmp_path: Path) -> None:
    """A restore locates a recipe's chunks a batch at a time (one query for QUERY_IDS)."""
    cache = ChunkIndex(tmp_path / "cache.sqlite")
    ids = [f"{number:064x}" for number in range(1200)]
    old, new = "01" * 32, "02" * 32
    cache.load("ef" * 32, [Location(chunk, old, 0, 10, 20) for chunk in ids[::2]])
    cache.load("fe" * 32, [Location(chunk, new, 5, 10, 20) for chunk in ids[::4]])
    cache.condemn({old: 1})
    queries: list[str] = []
    cache._db.set_trace_callback(queries.append)

    located = cache.locate_all(ids)

    def where(number: int, chunk: str) -> Location:
        return (
            Location(chunk, new, 5, 10, 20) if number % 4 == 0 else Location(chunk, old, 0, 10, 20)
        )

    assert located == {chunk: where(n, chunk) for n, chunk in enumerate(ids) if n % 2 == 0}
    assert len([query for query in queries if query.startswith("SELECT")]) == 3
    cache.close()
