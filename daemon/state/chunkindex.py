"""Where each chunk of a chunk repository lies, kept on disk (docs/format-dedup.md, "The
chunk index cache").

The storage's index files are the truth; this is a cache of them, one SQLite file per
(storage, host, policy) in the state dir: losing it loses nothing, it is rebuilt from the
index files. It records which index files it was filled from, so that the repository can
load the new ones and, when one it holds is gone from the storage, start again. Memory
stays flat whatever the number of chunks: every lookup is a query.

It also holds the packs garbage collection has condemned (`condemned`, replaced whole at
each sync): their chunks are still read, but a backup does not reuse them (`usable`). A
chunk may lie in several packs (a repack stored it again before condemning its old pack):
the cache keeps every location, and reads and reuses take one in a pack not condemned.

A backup's own new chunks go into a private temporary table first (`Pending`), and reach
the shared cache only once the index file that lists them is stored: a crash before that
leaves the cache saying nothing of chunks that no index lists. `Pending` also keeps the
packs of the chunks a backup reuses, for its check before it commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

from daemon.state.rows import insert_rows

BUSY_TIMEOUT = 60.0  # seconds another process may hold the cache's write lock
TAKEN_BATCH = 16384  # ids a backup takes, held in memory, then inserted in their order
QUERY_IDS = 500  # ids looked up in one query (SQLite allows 999 parameters at least)
VERSION = 1  # PRAGMA user_version; 0: one location per chunk (started again from nothing)
_SCHEMA = """
DROP TABLE IF EXISTS chunks;
DROP TABLE IF EXISTS indexes;
CREATE TABLE chunks (
    id BLOB NOT NULL, pack BLOB NOT NULL, offset INTEGER NOT NULL,
    stored INTEGER NOT NULL, plain INTEGER NOT NULL, PRIMARY KEY (id, pack)
) WITHOUT ROWID;
CREATE TABLE indexes (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS condemned (pack BLOB PRIMARY KEY, since INTEGER NOT NULL) WITHOUT ROWID;
"""


class Location(NamedTuple):
    """Where a chunk lies: its pack, its offset and stored length in the pack's plain
    bytes, and its plain length (hex ids, as the format writes them)."""

    chunk_id: str
    pack: str
    offset: int
    stored_length: int
    plain_length: int


def _row(location: Location) -> tuple[bytes, bytes, int, int, int]:
    chunk_id, pack, offset, stored, plain = location
    return bytes.fromhex(chunk_id), bytes.fromhex(pack), offset, stored, plain


class ChunkIndex:
    """The cache of one chunk repository's index files, in the SQLite file `path`."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the cache. Raise sqlite3.Error if the file cannot be used."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a cache: a lost commit is reloaded
        self._db.execute("BEGIN IMMEDIATE")  # one process brings an older cache up
        if self._db.execute("PRAGMA user_version").fetchone()[0] != VERSION:
            for statement in _SCHEMA.split(";"):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {VERSION}")
        self._db.commit()

    def loaded(self) -> set[str]:
        """Return the names of the index files the cache holds (one per backup)."""
        return {name for (name,) in self._db.execute("SELECT name FROM indexes")}

    def load(self, name: str, locations: Iterable[Location]) -> None:
        """Record an index file and its chunks, in one transaction (all or nothing)."""
        with self._db:
            insert_rows(self._db, "INSERT OR IGNORE INTO chunks", 5, map(_row, locations))
            self._db.execute("INSERT OR IGNORE INTO indexes VALUES (?)", (name,))

    def clear(self) -> None:
        """Forget everything (an index file the cache holds is gone from the storage)."""
        with self._db:
            self._db.execute("DELETE FROM chunks")
            self._db.execute("DELETE FROM indexes")

    def condemn(self, condemned: dict[str, int]) -> None:
        """Replace the condemned packs with `condemned` (pack name: since when, in Unix
        seconds), in one transaction."""
        with self._db:
            self._db.execute("DELETE FROM condemned")
            self._db.executemany(
                "INSERT INTO condemned VALUES (?, ?)",
                ((bytes.fromhex(pack), since) for pack, since in condemned.items()),
            )

    def empty(self) -> bool:
        """Say whether the cache lists no chunk (a new repository's)."""
        return self._db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is None

    def is_condemned(self, pack: str) -> bool:
        query = "SELECT 1 FROM condemned WHERE pack = ?"
        return self._db.execute(query, (bytes.fromhex(pack),)).fetchone() is not None

    def usable(self, chunk_ids: list[str]) -> dict[str, str]:
        """Given chunk ids, return by id the pack a backup may reuse each from: one a
        loaded index lists it in that garbage collection has not condemned (an id with
        none is not in the result)."""
        found: dict[str, str] = {}
        for start in range(0, len(chunk_ids), QUERY_IDS):
            part = [bytes.fromhex(chunk_id) for chunk_id in chunk_ids[start : start + QUERY_IDS]]
            rows = self._db.execute(
                f"SELECT id, pack FROM chunks WHERE id IN ({', '.join('?' * len(part))}) "
                "AND pack NOT IN (SELECT pack FROM condemned)",
                part,
            )
            for chunk_id, pack in rows:
                found.setdefault(chunk_id.hex(), pack.hex())
        return found

    def locate(self, chunk_id: str) -> Location | None:
        """Return where the chunk lies (in a pack not condemned, if one holds it), or None
        if no loaded index lists it."""
        return self.locate_all([chunk_id]).get(chunk_id)

    def locate_all(self, chunk_ids: Sequence[str]) -> dict[str, Location]:
        """Given chunk ids, return by id where each lies (in a pack not condemned, if one
        holds it); an id no loaded index lists is not in the result. One query per
        QUERY_IDS ids: a restore of 200,000 small files looks its chunks up 0.3 s of CPU
        instead of 1.7 s one at a time."""
        found: dict[str, Location] = {}
        for start in range(0, len(chunk_ids), QUERY_IDS):
            part = [bytes.fromhex(chunk_id) for chunk_id in chunk_ids[start : start + QUERY_IDS]]
            rows = self._db.execute(  # a pack not condemned last, so that it is the one kept
                "SELECT id, pack, offset, stored, plain FROM chunks "
                f"WHERE id IN ({', '.join('?' * len(part))}) "
                "ORDER BY pack IN (SELECT pack FROM condemned) DESC",
                part,
            )
            for chunk_id, pack, offset, stored, plain in rows:
                hex_id = bytes(chunk_id).hex()
                found[hex_id] = Location(hex_id, bytes(pack).hex(), offset, stored, plain)
        return found

    def close(self) -> None:
        self._db.close()


class Pending:
    """The chunks one backup has stored so far: their ids as they are taken (`add`), their
    locations once their pack is sealed (`place`); and the packs, by storage, of the chunks
    it reuses (`rely`). A private temporary database: gone with the backup, whatever ends
    it."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)  # a temporary file
        self._db.executescript(
            "CREATE TABLE taken (id BLOB PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TABLE placed (id BLOB, pack BLOB, offset INTEGER, stored INTEGER, "
            "plain INTEGER);"
            "CREATE TABLE relied (storage TEXT, pack BLOB, PRIMARY KEY (storage, pack)) "
            "WITHOUT ROWID;"
        )
        self._last_relied: dict[str, str] = {}
        # Two bits of 2**22 set for each id taken, at the values of its first and its second
        # 22 bits (a Bloom filter): most ids asked for were never taken (every chunk of a
        # first backup), and a bit unset says so without a query. Ids are keyed BLAKE3,
        # evenly spread; 512 KiB whatever the backup's size (2 MiB was most of what a first
        # backup's peak RSS had to spare). An id never taken asks the table 1 time in 120
        # after 200,000 ids taken (one bit of 2**21: 1 in 11), 1 in 7 after 1,000,000.
        self._taken_bits = bytearray(1 << 19)
        # The ids taken last, TAKEN_BATCH at most, are asked for here and inserted together
        # in their order: the table's pages are then met in order, and an id whose bit is
        # set no longer inserts the ids before it, a few at a time, to look itself up.
        self._adding: set[bytes] = set()
        self._any_taken = False

    def __contains__(self, chunk_id: object) -> bool:
        assert isinstance(chunk_id, str)
        first, second = _taken_bits(chunk_id)
        bits = self._taken_bits
        if not (bits[first >> 3] >> (first & 7) & 1 and bits[second >> 3] >> (second & 7) & 1):
            return False
        key = bytes.fromhex(chunk_id)
        if key in self._adding:
            return True
        query = "SELECT 1 FROM taken WHERE id = ?"
        return self._db.execute(query, (key,)).fetchone() is not None

    def taken(self, chunk_ids: Iterable[str]) -> set[str]:
        """Return those of `chunk_ids` taken so far, without asking for each before the
        first `add`: a repeat looks every chunk of the previous archive up before it takes
        one (12,000 ids: 0.02 s of CPU less)."""
        if not self._any_taken:
            return set()
        return {chunk_id for chunk_id in chunk_ids if chunk_id in self}

    def add(self, chunk_id: str) -> None:
        self._any_taken = True
        for bit in _taken_bits(chunk_id):
            self._taken_bits[bit >> 3] |= 1 << (bit & 7)
        self._adding.add(bytes.fromhex(chunk_id))
        if len(self._adding) >= TAKEN_BATCH:
            insert_rows(
                self._db, "INSERT OR IGNORE INTO taken", 1, ((key,) for key in sorted(self._adding))
            )
            self._adding.clear()

    def place(self, locations: Iterable[Location]) -> None:
        insert_rows(self._db, "INSERT INTO placed", 5, map(_row, locations))

    def rely(self, storage: str, pack: str) -> None:
        """Record that a chunk this backup reuses lies in `pack` of `storage`."""
        if self._last_relied.get(storage) != pack:  # a file's chunks mostly share a pack
            self._last_relied[storage] = pack
            self._db.execute(
                "INSERT OR IGNORE INTO relied VALUES (?, ?)", (storage, bytes.fromhex(pack))
            )

    def packs(self, storage: str) -> Iterator[str]:
        """Yield the packs of `storage` this backup relies on: those of the chunks it
        reuses there, and those it stored."""
        query = "SELECT pack FROM relied WHERE storage = ? UNION SELECT DISTINCT pack FROM placed"
        with closing(self._db.execute(query, (storage,))) as rows:
            for (pack,) in rows:
                yield bytes(pack).hex()

    def placed(self) -> Iterator[Location]:
        """Yield the locations of the chunks stored so far, in the order of their ids: the
        order of the cache's table, which `ChunkIndex.load` then fills a page at a time
        (200,000 chunks: 0.56 s of CPU instead of 1.23 s in their order of arrival)."""
        query = "SELECT id, pack, offset, stored, plain FROM placed ORDER BY id"
        with closing(self._db.execute(query)) as rows:
            for chunk_id, pack, offset, stored, plain in rows:
                yield Location(chunk_id.hex(), pack.hex(), offset, stored, plain)

    def close(self) -> None:
        self._db.close()


def _taken_bits(chunk_id: str) -> tuple[int, int]:
    """Given a chunk id, return the numbers of its two bits in `Pending`'s bitmap: its
    first 22 bits, and the next 22 (one parse, the bits taken inline: 0.4 µs a lookup
    instead of 1.1)."""
    value = int(chunk_id[:12], 16)
    return value >> 26, value >> 2 & 0x3FFFFF
