"""The repack rule of garbage collection (daemon/repository/chunkgarbage.py): which packs
are mostly dead, and which of their chunks are stored again, on the collection's own
database filled by hand (the storage and the recipes are the end-to-end tests' part)."""

from __future__ import annotations

import sqlite3
from collections.abc import Set
from contextlib import closing

from daemon.repository.chunkgarbage import _MOSTLY_DEAD, _SCHEMA, _TO_MOVE


def name(number: int) -> bytes:
    return bytes([number]) * 32


def database(
    entries: list[tuple[int, int, int]], marked: Set[int], condemned: Set[int] = frozenset()
) -> sqlite3.Connection:
    """Given index entries (chunk, pack, stored bytes; two index files list them all), the
    chunks marked and the packs condemned, return the collection's database."""
    db = sqlite3.connect("")
    db.executescript(_SCHEMA)
    for index in ("first", "second"):
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, 0, ?, ?)",
            ((index, name(chunk), name(pack), stored, stored) for chunk, pack, stored in entries),
        )
    packs = {pack for _, pack, _ in entries}
    db.executemany("INSERT INTO packs VALUES (?)", ((name(pack),) for pack in packs))
    db.executemany("INSERT INTO marked VALUES (?)", ((name(chunk),) for chunk in marked))
    db.executemany("INSERT INTO condemned VALUES (?)", ((name(pack),) for pack in condemned))
    return db


def mostly_dead(db: sqlite3.Connection) -> set[int]:
    return {bytes(pack)[0] for (pack,) in db.execute(_MOSTLY_DEAD)}


def test_a_pack_is_mostly_dead_when_its_marked_chunks_are_under_half_its_chunks_bytes() -> None:
    entries = [
        (1, 10, 100), (2, 10, 301),  # pack 10: 100 of 401 bytes live
        (3, 11, 200), (4, 11, 200),  # pack 11: exactly half live
        (5, 12, 100), (6, 12, 100),  # pack 12: nothing live (dead: freed whole)
        (7, 13, 10), (8, 13, 990),  # pack 13: mostly dead, but condemned already
    ]  # fmt: skip
    with closing(database(entries, marked={1, 3, 7}, condemned={13})) as db:
        assert mostly_dead(db) == {10}


def test_a_repack_stores_again_only_the_live_chunks_no_pack_that_stays_holds() -> None:
    entries = [
        (1, 10, 100), (2, 10, 900), (3, 10, 100),  # pack 10, repacked: 1 and 3 live
        (3, 11, 100),  # chunk 3 is also in pack 11, which stays
        (1, 12, 100),  # chunk 1 is also in pack 12, condemned: it does not count
    ]  # fmt: skip
    with closing(database(entries, marked={1, 3}, condemned={12})) as db:
        db.execute("INSERT INTO repacking VALUES (?)", (name(10),))
        moved = {bytes(row[1])[0] for row in db.execute(_TO_MOVE)}
        assert moved == {1}
