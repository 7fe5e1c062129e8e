"""The repack rule of garbage collection (daemon/repository/chunkgarbage.py): which packs
are mostly dead, and which of their chunks are stored again, on the collection's own
database filled by hand (the storage and the recipes are the end-to-end tests' part)."""

from __future__ import annotations

import sqlite3
from collections.abc import Set
from contextlib import closing

import pytest

from daemon.repository import chunkgarbage
from daemon.repository.chunkgarbage import _MOSTLY_DEAD, _SCHEMA, _TO_MOVE, _mostly_dead


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
    return {bytes(pack)[0] for pack, _stored in db.execute(_MOSTLY_DEAD)}


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


def test_a_collection_repacks_the_most_dead_packs_first_up_to_its_bytes_and_one_at_least(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = [
        (1, 10, 40), (2, 10, 60),  # pack 10: 40 % live
        (3, 11, 10), (4, 11, 90),  # pack 11: 10 % live
        (5, 12, 20), (6, 12, 80),  # pack 12: 20 % live, written too recently
        (7, 13, 30), (8, 13, 70),  # pack 13: 30 % live
    ]  # fmt: skip
    marked = {1, 3, 5, 7}
    monkeypatch.setattr(chunkgarbage, "REPACK_BYTES", 250)
    with closing(database(entries, marked)) as db:
        chosen = _mostly_dead(db, lambda pack: pack != name(12).hex())
        assert chosen == {name(11).hex(), name(13).hex()}  # 10 %, then 30 %: 200 bytes
        assert {bytes(pack)[0] for (pack,) in db.execute("SELECT name FROM repacking")} == {11, 13}
    monkeypatch.setattr(chunkgarbage, "REPACK_BYTES", 1)
    with closing(database(entries, marked)) as db:
        assert _mostly_dead(db, lambda pack: True) == {name(11).hex()}  # one at least
