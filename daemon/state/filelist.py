"""A backup's view of the volume's files and of its previous archive's members, on disk
(docs/format-dedup.md, "Skipping unchanged files"): the helper's listing in tar order, and
the previous archive's members by path, in one temporary SQLite file in the state dir.
Memory stays flat however many files the volume holds; the file goes with the backup.
"""

from __future__ import annotations

import marshal
import math
import os
import sqlite3
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from daemon.state.rows import insert_rows

_SCHEMA = """
CREATE TABLE listed (
    seq INTEGER PRIMARY KEY, path TEXT NOT NULL, inode INTEGER NOT NULL,
    links INTEGER NOT NULL, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL,
    gid INTEGER NOT NULL
);
CREATE TABLE previous (
    position INTEGER PRIMARY KEY, path TEXT NOT NULL, type TEXT NOT NULL,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime INTEGER NOT NULL, inode INTEGER, ctime INTEGER, held INTEGER NOT NULL,
    fields BLOB NOT NULL
);
CREATE TABLE taken (seq INTEGER PRIMARY KEY, position INTEGER NOT NULL);
"""


class ListedRow(NamedTuple):
    path: str
    inode: int
    links: int
    size: int
    mtime: int
    ctime: int
    mode: int
    uid: int
    gid: int


class PreviousRow(NamedTuple):
    """A member of the previous archive: its position in its tar, its manifest entry (the
    fields of a `Member`), the inode and ctime its recipe's M line records, whether every
    chunk of it is held by every storage the backup writes to, where its lines start and
    stop in the recipe's text, and its bytes in the tar."""

    position: int
    path: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    link: str | None
    sha256: str | None
    xattrs: dict[str, str] | None
    inode: int | None
    ctime: int | None
    held: bool
    recipe_start: int
    recipe_stop: int
    tar_size: int


class FileList:
    """The listing and the previous archive's members of one backup."""

    def __init__(self, spool_dir: Path | None) -> None:
        """Create the file in `spool_dir` (None: the system's temporary directory); it is
        unlinked at once on POSIX systems where the connection keeps it open. Raise
        sqlite3.Error."""
        handle, name = tempfile.mkstemp(prefix="volkeep-files-", suffix=".sqlite", dir=spool_dir)
        os.close(handle)
        self._path = Path(name)
        self._db = sqlite3.connect(name)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        # rows written BATCH at a time (one statement each costs more than the row), and
        # before any query reads them
        self._adding: dict[str, list[tuple[Any, ...]]] = {statement: [] for statement in _ADD}
        # the listing read ahead in tar order for `listed`, and the last seq read into it
        self._ahead: deque[tuple[int, ListedRow]] = deque()
        self._read_to = 0
        self._indexed: set[str] = set()  # the tables whose paths are indexed (`_index_paths`)

    def _add(self, statement: str, row: tuple[Any, ...]) -> None:
        rows = self._adding[statement]
        rows.append(row)
        if len(rows) >= BATCH:
            self._write(statement, rows)

    def _flush(self) -> None:
        for statement, rows in self._adding.items():
            if rows:
                self._write(statement, rows)

    def _write(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        insert_rows(self._db, statement, len(rows[0]), rows)
        rows.clear()

    def add_listed(self, row: ListedRow) -> None:
        self._add(_ADD_LISTED, row)

    def clear_listed(self) -> None:
        """Forget the listing and what was to be taken of it (a full read lists again)."""
        self._adding[_ADD_LISTED].clear()
        self._adding[_TAKE].clear()
        self._db.execute("DELETE FROM listed")
        self._db.execute("DELETE FROM taken")
        self._ahead.clear()
        self._read_to = 0

    def listed(self, path: str) -> ListedRow | None:
        """Return the listing of `path`, or None. Asked in tar order, as a backup's members
        come, it reads the listing ahead in that order, READ_AHEAD rows a query: a query
        per member made a tenth of a first backup's main thread. A path not next in the
        listing is looked up by its index; the objects listed before it that the tar did
        not hold (removed meanwhile) are passed over."""
        self._flush()
        if not self._ahead:
            self._ahead.extend(
                (row[0], ListedRow._make(row[1:]))
                for row in self._db.execute(
                    f"SELECT seq, {_LISTED} FROM listed WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._read_to, READ_AHEAD),
                )
            )
            if self._ahead:
                self._read_to = self._ahead[-1][0]
        if self._ahead and self._ahead[0][1].path == path:
            return self._ahead.popleft()[1]
        self._index_paths("listed")
        found = self._db.execute(
            f"SELECT seq, {_LISTED} FROM listed WHERE path = ? ORDER BY seq LIMIT 1", (path,)
        ).fetchone()
        if found is None:
            return None
        seq = found[0]
        while self._ahead and self._ahead[0][0] <= seq:
            self._ahead.popleft()
        self._read_to = max(self._read_to, seq)
        return ListedRow._make(found[1:])

    def _index_paths(self, table: str) -> None:
        """Index the table's paths, when a query first looks one up: built once from every
        row, the previous archive's 200,000 members cost 0.2 s of CPU less than an index
        kept up row by row (and a backup that looks no path up builds none)."""
        if table not in self._indexed:
            self._db.execute(f"CREATE INDEX {table}_path ON {table} (path)")
            self._indexed.add(table)

    def add_previous(self, row: PreviousRow) -> None:
        """Record a member of the previous archive: its position, its path and what
        `unchanged` compares as columns (its mtime in whole seconds, as listed), and its
        whole row marshalled into one value that only `plan` reads out (this file is the
        process's own: marshal's format is the running Python's). Unmarshalled, a row took
        less CPU to insert and read out than bound as fifteen values; the nine columns
        cost 9,000 members some 0.015 s of CPU to insert, and spare `unchanged` a row
        read out and compared in Python each."""
        self._add(
            _ADD_PREVIOUS,
            (
                row.position, row.path, row.type, row.mode, row.uid, row.gid, row.size,
                math.floor(row.mtime), row.inode, row.ctime, row.held, marshal.dumps(row[2:]),
            ),
        )  # fmt: skip

    def unchanged(
        self, racy_before: int, types: dict[int, tuple[str, ...]]
    ) -> Iterator[tuple[int, int]]:
        """Yield in tar order each listed object's seq with the position of a member of
        its path in the previous archive that it may be taken as (a path twice in the
        previous tar: both, in their order): the member's type is one of `types` for the
        object's format (st_mode & S_IFMT; other formats: none), its mode, owner,
        whole-second mtime and (a file) size are the ones listed, its inode and ctime
        those listed, the ctime before `racy_before` (a ctime in or after the second the
        listing began is "racy": the file may have changed after it was read, within the
        same second), and every chunk of it is held. Compared by SQLite, not in Python on
        a pair of rows made for each object, a repeat of 9,000 unchanged files plans in
        0.06 s of CPU instead of 0.12 s."""
        self._flush()
        self._index_paths("previous")
        typed = " ".join(
            f"WHEN {format_bits} THEN p.type IN ({', '.join(map(_literal, kinds))})"
            for format_bits, kinds in types.items()
        )
        return iter(
            self._db.execute(
                "SELECT l.seq, p.position FROM listed l JOIN previous p ON p.path = l.path "
                "WHERE p.held AND p.inode = l.inode AND p.ctime = l.ctime AND p.ctime < ? "
                f"AND CASE l.mode & {_FORMAT} {typed} ELSE 0 END "
                f"AND p.mode = l.mode & {_PERMISSIONS} AND p.uid = l.uid AND p.gid = l.gid "
                "AND p.mtime = l.mtime AND (p.type != 'file' OR p.size = l.size) "
                "ORDER BY l.seq, p.position",
                (racy_before,),
            )
        )

    def reuse(self, seq: int, position: int) -> None:
        """Take the object at `seq` from the previous archive's member at `position`. (A
        row of a table of its own, inserted in tar order, many to a statement: an UPDATE
        of each listed row took a statement step each, a fifth of the comparison and the
        reuses.)"""
        self._add(_TAKE, (seq, position))

    def read_linked_groups_whole(self) -> None:
        """Read again every name of a hard-linked file one of whose names is read: tar stores
        the content under the first name it meets and the others as links to it."""
        self._flush()
        self._db.execute(
            "DELETE FROM taken WHERE seq IN (SELECT seq FROM listed WHERE links > 1 AND "
            "mode & 61440 != 16384 AND inode IN (SELECT inode FROM listed WHERE links > 1 "
            "AND seq NOT IN (SELECT seq FROM taken)))"
        )

    def to_read(self) -> list[str]:
        """Return the paths of the listed objects not taken from the previous archive, in
        tar order."""
        self._flush()
        rows = self._db.execute(
            "SELECT path FROM listed WHERE seq NOT IN (SELECT seq FROM taken) ORDER BY seq"
        )
        return [path for (path,) in rows]

    def plan(self) -> Iterator[tuple[str, PreviousRow | None]]:
        """Yield each listed object in tar order: its path, and the previous member it is
        taken from (None: it is read)."""
        self._flush()
        rows = self._db.execute(
            "SELECT l.path, p.position, p.fields "
            "FROM listed l LEFT JOIN taken t ON t.seq = l.seq "
            "LEFT JOIN previous p ON p.position = t.position ORDER BY l.seq"
        )
        for path, position, fields in rows:
            yield path, _previous(position, path, fields)

    def close(self) -> None:
        self._db.close()
        self._path.unlink(missing_ok=True)


_LISTED = ", ".join(ListedRow._fields)
_ADD_LISTED = "INSERT INTO listed (path, inode, links, size, mtime, ctime, mode, uid, gid)"
_ADD_PREVIOUS = (
    "INSERT INTO previous "
    "(position, path, type, mode, uid, gid, size, mtime, inode, ctime, held, fields)"
)
_TAKE = "INSERT OR REPLACE INTO taken (seq, position)"  # the last taking wins, as an UPDATE
_ADD = (_ADD_LISTED, _ADD_PREVIOUS, _TAKE)  # flushed in this order
BATCH = 1024
_FORMAT = 0o170000  # the bits of st_mode that say an object's format (S_IFMT)
_PERMISSIONS = 0o7777  # and those a member's mode holds
READ_AHEAD = 1024  # listed rows `listed` reads at once


def _literal(text: str) -> str:
    """Return `text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _previous(position: int | None, path: str, fields: bytes | None) -> PreviousRow | None:
    """Given a previous member's position, path and marshalled fields (None: no member),
    return its row."""
    if position is None or fields is None:
        return None
    return PreviousRow(position, path, *marshal.loads(fields))
