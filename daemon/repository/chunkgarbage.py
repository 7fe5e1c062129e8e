"""Garbage collection of a policy's chunk repository: the packs no committed archive uses
(SPEC promise 15; docs/format-dedup.md, "Garbage collection"). The rules, in this one place:

- Where: this host's chunk repository of the policy in one storage
  (`<host>/<policy>/_chunks/`); what is live is read from this host's committed manifests
  of the policy there. Another host's namespace is never listed.
- Mark: every chunk the recipe of a committed deduplicated archive names, streamed into a
  temporary SQLite file (never a set in memory). A committed archive whose recipe cannot
  be read stops the collection: what cannot be read is never taken for garbage.
- Dead: a pack none of whose chunks (as the index files list them) is marked; a pack no
  index lists (a crashed backup's) is dead too; a condemned pack whose marked chunks are
  all in packs that are not condemned (stored again since) is dead still.
- Condemn: a dead pack whose blob is older than the margin (`pack_margin`, 24 hours) is
  named in a condemned record with the time of this collection. Backups read the records
  and never reuse a condemned pack's chunks (they store them again), so nothing written
  from then on depends on it.
- Delete: a pack dead at this collection and condemned at least the margin before it
  began. First each index file that lists it is replaced (a new index of its surviving
  entries, then the old one deleted), then the pack, then the records: one new record of
  the packs still condemned, then the old records. Never a rewrite in place.
- Repack: a pack not dead but mostly dead (its marked chunks are less than half the
  stored bytes of its chunks), not condemned and older than the margin (the most dead
  first, up to REPACK_BYTES of packs a collection), has its marked chunks that no other
  pack that stays holds stored again, in new packs and a new index;
  then it is condemned with the dead packs, and deleted as they are: once none of its
  marked chunks is only in it (the rule of "Dead" above).
- Revive: a condemned pack that is live again (a backup that read the records before the
  pack was condemned reused one of its chunks) leaves the records.
- A backup relies on the packs of the chunks it reuses from the moment it reads the
  records; before it commits it reads them again and fails if one of those packs was
  condemned more than half the margin ago, or, after a backup that long, is gone
  (`broken_reuse`): its manifest would come too late for the collection that deletes it.

Why no crash, concurrent backup or lagging listing breaks it is argued in
docs/format-dedup.md, "Garbage collection".
"""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, groupby
from pathlib import Path
from typing import BinaryIO

import structlog
import zstandard

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.encryption import NoIdentityMatches
from daemon.archive.manifest import DEDUPLICATED
from daemon.archive.packs import (
    INDEX_HEADER,
    ChunkReader,
    ChunkWriter,
    IndexEntry,
    Pack,
    PackEntry,
    PackFormatError,
    condemned_key,
    index_key,
    open_pack,
    pack_key,
)
from daemon.archive.recipe import (
    HEADER,
    MARKED_HEADER,
    SPLICED_HEADER,
    ChunkStep,
    RecipeError,
    marked_lines,
    member_lines,
    read_recipe,
)
from daemon.archive.sealing import opener, section_reader
from daemon.archive.spool import SpooledSection
from daemon.config.keys import EncryptionError, Identities, Recipient
from daemon.errors import OperationError
from daemon.repository.chunks import ChunkStore, DamagedChunks
from daemon.repository.layout import MANIFEST_SUFFIX, ArchiveKey
from daemon.repository.store import archive_error
from daemon.storage.base import BlobMissing

log = structlog.get_logger()

REPACK_BYTES = 1 << 30  # the stored bytes of the packs one collection repacks at most
MARGIN = timedelta(hours=24)  # kopia's: longer than any backup, any listing's lag
MARGIN_VARIABLE = "VOLKEEP_GC_MARGIN"  # seconds: for tests only (docs/format-dedup.md)


def pack_margin() -> timedelta:
    """Return the margin: how long a pack must have been written, and condemned, before it
    is deleted (MARGIN, or $VOLKEEP_GC_MARGIN seconds, for tests)."""
    seconds = os.environ.get(MARGIN_VARIABLE)
    return MARGIN if not seconds else timedelta(seconds=float(seconds))


def collection_due(last: datetime | None, now: datetime) -> bool:
    """Given when this host last finished collecting a policy after its backups (None:
    never, or the state dir was lost) and now, return whether the run that just backed
    it up collects it again: when a quarter of the margin has passed. A pack condemned
    at one collection is deleted by the first one a margin later, so collecting more
    often frees nothing sooner and reads every recipe of the policy each time (an hourly
    schedule would read them all every hour); a quarter of the margin delays a deletion
    by at most that much. `volkeep prune` always collects."""
    return last is None or now - last >= pack_margin() / 4


def broken_reuse(
    chunks: ChunkStore, relied: Callable[[], Iterable[str]], synced: datetime, now: datetime
) -> str | None:
    """Given a backup's chunk repository, the packs it relies on there (asked for at each
    call: the chunks it reuses, the packs it stored), when it read the condemned packs and
    now, return a pack it must not commit an archive with, or None: one condemned more
    than half the margin ago (the collection that deletes it might not see the manifest
    yet), or, if the backup read the condemned packs more than half the margin ago, one
    that is gone (a collection condemned and deleted it since). Raise OSError."""
    limit = (now - pack_margin() / 2).timestamp()
    condemned = chunks.condemned()[0]
    for pack in relied():
        if condemned.get(pack, limit + 1) <= limit:
            return pack
    if synced.timestamp() > limit:
        return None
    present = chunks.pack_names()  # a long backup's check: one listing
    return next((pack for pack in relied() if pack not in present), None)


@dataclass
class Collection:
    """What one collection did (or, dry, would do) in one storage."""

    freed_packs: int = 0  # packs deleted
    freed_bytes: int = 0  # their stored bytes
    condemned: int = 0  # packs condemned after it, to be deleted once the margin has passed
    newly_condemned: int = 0
    revived: int = 0
    indexes: int = 0  # index files replaced by one of their surviving entries
    repacked: int = 0  # mostly-dead packs condemned once their live chunks were stored again
    moved_bytes: int = 0  # the stored bytes of those live chunks


_SCHEMA = """
CREATE TABLE marked (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE entries (idx TEXT, id BLOB, pack BLOB, offset INTEGER, stored INTEGER,
                      plain INTEGER);
CREATE TABLE packs (name BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE doomed (name BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE condemned (name BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE repacking (name BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE copied (id BLOB PRIMARY KEY) WITHOUT ROWID;
"""
# A pack is live if it holds a marked chunk, unless it is condemned and that chunk is in a
# pack that is not (a backup that came after the condemnation stored the chunk again).
_LIVE = """
SELECT DISTINCT e.pack FROM entries e JOIN marked m ON e.id = m.id
WHERE e.pack NOT IN (SELECT name FROM condemned) OR NOT EXISTS (
    SELECT 1 FROM entries other WHERE other.id = e.id
    AND other.pack IN (SELECT name FROM packs)
    AND other.pack NOT IN (SELECT name FROM condemned))
"""
# Packs listed, not condemned, holding marked chunks of less than half their chunks' stored
# bytes (a chunk listed by two index files counts once), with those bytes: the most dead
# first.
_MOSTLY_DEAD = """
SELECT pack, SUM(stored) FROM (
    SELECT DISTINCT e.pack, e.id, e.stored,
        e.stored * EXISTS (SELECT 1 FROM marked m WHERE m.id = e.id) AS live
    FROM entries e
    WHERE e.pack IN (SELECT name FROM packs) AND e.pack NOT IN (SELECT name FROM condemned))
GROUP BY pack HAVING 0 < SUM(live) AND 2 * SUM(live) < SUM(stored)
ORDER BY 1.0 * SUM(live) / SUM(stored), pack
"""
# The marked chunks of the packs being repacked that no pack that stays holds (listed, not
# condemned, not being repacked): those are stored again.
_TO_MOVE = """
SELECT DISTINCT e.pack, e.id, e.offset, e.stored, e.plain
FROM entries e JOIN marked m ON e.id = m.id
WHERE e.pack IN (SELECT name FROM repacking) AND NOT EXISTS (
    SELECT 1 FROM entries other WHERE other.id = e.id
    AND other.pack IN (SELECT name FROM packs)
    AND other.pack NOT IN (SELECT name FROM condemned)
    AND other.pack NOT IN (SELECT name FROM repacking))
"""


def collect(
    chunks: ChunkStore,
    identities: Identities | None,
    recipients: Sequence[Recipient],
    *,
    dry_run: bool,
    now: datetime | None = None,
    spool_dir: Path | None = None,
) -> Collection:
    """Given this host's chunk repository of a policy in one storage, the identities that
    open its records and archives (None: not encrypted) and the recipients it is sealed
    to, collect its garbage (see the module's rules); with `dry_run`, change nothing and
    say what would be done. Return what was (or would be) done.

    Raise OperationError naming the archive if a committed archive's manifest or recipe
    cannot be read (nothing is deleted then), or if the policy encrypts and there are no
    identities; OSError if the storage fails (what was done before stays done: each step
    leaves the repository whole)."""
    repository = chunks.repository
    if not repository.own:
        raise OperationError(f"the archives of host {repository.host!r} are read-only here")
    if recipients and identities is None:
        raise OperationError(
            "garbage collection of an encrypted policy's deduplicated archives needs "
            "encryption.age.identity_file: it reads their recipes and index files",
            policy=chunks.policy,
        )
    started = now or datetime.now(UTC)
    condemned, records = chunks.condemned()
    with closing(sqlite3.connect("")) as db:  # a temporary file: memory stays flat
        db.executescript(_SCHEMA)
        encrypted_to = [str(recipient) for recipient in recipients]
        dead, existing = _dead_packs(db, chunks, condemned, identities, encrypted_to)
        result = Collection(revived=len(condemned.keys() & (existing - dead)))
        deadline = (started - pack_margin()).timestamp()
        doomed = sorted(pack for pack in dead if condemned.get(pack, deadline + 1) <= deadline)
        kept = {pack: since for pack, since in condemned.items() if pack in dead}
        for pack in sorted(dead - kept.keys()):
            if _blob_time(chunks, pack).timestamp() < deadline:
                kept[pack] = int(started.timestamp())
                result.newly_condemned += 1
        repacking = _mostly_dead(db, lambda pack: _blob_time(chunks, pack).timestamp() < deadline)
        result.repacked = len(repacking)
        query = f"SELECT SUM(stored) FROM (SELECT DISTINCT id, stored FROM ({_TO_MOVE}))"
        result.moved_bytes = db.execute(query).fetchone()[0] or 0
        store = repository.store
        for pack in doomed:
            del kept[pack]
            result.freed_bytes += store.size(chunks.directory + pack_key(pack))
        result.freed_packs, result.condemned = len(doomed), len(kept) + len(repacking)
        db.executemany("INSERT INTO doomed VALUES (?)", ((bytes.fromhex(p),) for p in doomed))
        query = "SELECT DISTINCT idx FROM entries WHERE pack IN (SELECT name FROM doomed)"
        replaced = [name for (name,) in db.execute(query)]
        result.indexes = len(replaced)
        if dry_run:
            return result
        repository.require_own()
        if repacking:  # before they are condemned: until then, their chunks serve
            unread = _repack(db, chunks, identities, recipients, encrypted_to, spool_dir)
            for pack in repacking - unread:
                kept[pack] = int(started.timestamp())
            result.repacked -= len(unread)
            result.condemned -= len(unread)
        for name in replaced:  # first: a crash leaves no index naming a deleted pack
            _replace_index(db, chunks, name, recipients, spool_dir)
        for pack in doomed:
            chunks.delete(pack_key(pack))
        if kept != condemned or len(records) > 1:  # the new record first, then the old
            new = chunks.put_condemned(kept) if kept else None
            for name in sorted(records - {new}):
                chunks.delete(condemned_key(name))
    return result


def _mostly_dead(db: sqlite3.Connection, old_enough: Callable[[str], bool]) -> set[str]:
    """Return the packs to repack, recorded in the table `repacking`: the mostly dead
    (`_MOSTLY_DEAD`) that are `old_enough`, the most dead first, while their chunks' bytes
    (each pack is read whole) stay within REPACK_BYTES, and one at least. The others wait
    for the next collection: after a large prune, one collection does not read and write
    again a large part of the repository. Raise OSError."""
    repacking: set[str] = set()
    budget = REPACK_BYTES
    for name, stored in db.execute(_MOSTLY_DEAD).fetchall():
        if repacking and stored > budget:
            break
        if old_enough(bytes(name).hex()):
            repacking.add(bytes(name).hex())
            budget -= stored
    db.executemany("INSERT INTO repacking VALUES (?)", ((bytes.fromhex(p),) for p in repacking))
    return repacking


def _repack(
    db: sqlite3.Connection,
    chunks: ChunkStore,
    identities: Identities | None,
    recipients: Sequence[Recipient],
    encrypted_to: Sequence[str],
    spool_dir: Path | None,
) -> set[str]:
    """Store the live chunks of the packs being repacked that no pack that stays holds
    (`_TO_MOVE`, each checked against its id) again, in new packs, then their index.
    Return the packs left as they are: those that cannot be read, or hold a damaged live
    chunk (each named in the log). Raise OSError."""
    config = chunks.read_config(identities, encrypted_to)
    if config is None:
        raise DamagedChunks(f"chunk repository {chunks.directory}: config vanished")
    query = "SELECT name FROM condemned UNION SELECT name FROM repacking"
    avoided = {bytes(name).hex() for (name,) in db.execute(query)}
    copied = _Copied(db)
    writer = ChunkWriter(
        config, recipients, copied, chunks.put_pack, spool_dir, lambda name: name not in avoided
    )
    unread = set()
    query = f"SELECT pack, id, offset, stored, plain FROM ({_TO_MOVE}) ORDER BY pack, offset"
    with closing(writer), closing(db.execute(query)) as rows:  # streamed: memory stays flat
        for pack, moving in groupby(rows, key=lambda row: bytes(row[0]).hex()):
            entries = [PackEntry(bytes(row[1]).hex(), *row[2:]) for row in moving]
            try:
                opened = open_pack(pack, chunks.get_pack(pack), identities, encrypted_to)
                for entry in entries:
                    if entry.chunk_id not in copied:
                        _move(config, opened, entry, writer)
            except (PackFormatError, EncryptionError, NoIdentityMatches) as error:
                log.warning("pack not repacked: it cannot be read", pack=pack, error=str(error))
                unread.add(pack)  # the chunks of it copied already are sound: harmless
        writer.finish()
        if writer.packs:
            chunks.put_index(writer.index.sha256, writer.index.stored())
    return unread


def _move(config: ChunkConfig, opened: Pack, entry: PackEntry, writer: ChunkWriter) -> None:
    """Give the writer a chunk of a pack being repacked, as its pack holds it. Raise
    PackFormatError if it is damaged (not its length or not its id)."""
    if config.chunk_id(opened.chunk(entry)) != entry.chunk_id:
        raise PackFormatError(f"chunk {entry.chunk_id}: not its content")
    writer.copy(entry.chunk_id, opened.frame(entry), entry.plain_length)


class _Copied:
    """The chunks a repack stored again (KnownChunks, in the collection's database)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __contains__(self, chunk_id: object) -> bool:
        assert isinstance(chunk_id, str)
        query = "SELECT 1 FROM copied WHERE id = ?"
        return self._db.execute(query, (bytes.fromhex(chunk_id),)).fetchone() is not None

    def add(self, chunk_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO copied VALUES (?)", (bytes.fromhex(chunk_id),))


def _blob_time(chunks: ChunkStore, pack: str) -> datetime:
    return chunks.repository.store.modified(chunks.directory + pack_key(pack))


def _dead_packs(
    db: sqlite3.Connection,
    chunks: ChunkStore,
    condemned: Iterable[str],
    identities: Identities | None,
    encrypted_to: Sequence[str],
) -> tuple[set[str], set[str]]:
    """Fill the temporary database: every index file's entries, the packs listed, the
    condemned packs, the chunks marked; return the dead packs and every pack listed.
    Raise as `collect`."""
    for name in sorted(chunks.index_names()):
        rows = (
            (name, bytes.fromhex(where.chunk_id), bytes.fromhex(where.pack), *where[2:])
            for where in chunks.index_locations(name, identities, encrypted_to)
        )
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.execute("CREATE INDEX entries_by_id ON entries (id)")
    packs = ((bytes.fromhex(pack),) for pack in chunks.pack_names())
    db.executemany("INSERT INTO packs VALUES (?)", packs)
    db.executemany("INSERT INTO condemned VALUES (?)", ((bytes.fromhex(p),) for p in condemned))
    pieces = _Pieces(db, chunks, identities, encrypted_to)
    for ids in _marks(chunks, identities, pieces):
        marked = ((bytes.fromhex(chunk_id),) for chunk_id in ids)
        db.executemany("INSERT OR IGNORE INTO marked VALUES (?)", marked)
    query = f"SELECT name FROM packs WHERE name NOT IN ({_LIVE})"
    dead = {bytes(name).hex() for (name,) in db.execute(query)}
    return dead, {bytes(name).hex() for (name,) in db.execute("SELECT name FROM packs")}


def _replace_index(
    db: sqlite3.Connection,
    chunks: ChunkStore,
    name: str,
    recipients: Sequence[Recipient],
    spool_dir: Path | None,
) -> None:
    """Store a new index file of the entries of index `name` whose packs survive (if any),
    then delete `name`. Raise OSError."""
    query = (
        "SELECT id, pack, offset, stored, plain FROM entries WHERE idx = ? "
        "AND pack NOT IN (SELECT name FROM doomed) ORDER BY rowid"
    )
    with closing(SpooledSection(recipients, spool_dir)) as section:
        section.write(INDEX_HEADER)
        surviving = 0
        with closing(db.execute(query, (name,))) as rows:
            for chunk_id, pack, offset, stored, plain in rows:
                line = f"{bytes(chunk_id).hex()} {bytes(pack).hex()} {offset} {stored} {plain}\n"
                section.write(line.encode())
                surviving += 1
        section.finish()
        if surviving:
            chunks.put_index(section.sha256, section.stored())
    chunks.delete(index_key(name))


class _Pieces:
    """The pieces of version 3 recipes, read from the packs the collection's database
    lists (any pack that holds the piece); the ids of those read since `read_ids`."""

    def __init__(
        self,
        db: sqlite3.Connection,
        chunks: ChunkStore,
        identities: Identities | None,
        encrypted_to: Sequence[str],
    ) -> None:
        self._db = db
        self._chunks = chunks
        self._identities = identities
        self._encrypted_to = encrypted_to
        self._reader: ChunkReader | None = None  # once a version 3 recipe needs one
        self.read_ids: list[str] = []

    def __call__(self, chunk_id: str) -> bytes:
        if self._reader is None:
            config = self._chunks.read_config(self._identities, self._encrypted_to)
            if config is None:
                raise DamagedChunks(f"chunk repository {self._chunks.directory} has no config")
            self._reader = ChunkReader(config, self._locate, self._open)
        self.read_ids.append(chunk_id)
        return self._reader(chunk_id)

    def _locate(self, chunk_id: str) -> IndexEntry | None:
        query = (
            "SELECT pack, offset, stored, plain FROM entries WHERE id = ? "
            "AND pack IN (SELECT name FROM packs) LIMIT 1"
        )
        row = self._db.execute(query, (bytes.fromhex(chunk_id),)).fetchone()
        return IndexEntry(chunk_id, bytes(row[0]).hex(), *row[1:]) if row else None

    def _open(self, pack: str) -> Pack:
        return open_pack(pack, self._chunks.get_pack(pack), self._identities, self._encrypted_to)


def _marks(
    chunks: ChunkStore, identities: Identities | None, pieces: _Pieces
) -> Iterator[Iterator[str]]:
    """Yield, for each committed deduplicated archive of this host's policy in the storage,
    the ids of the chunks its recipe names (streamed): those of its pieces (a version 3
    recipe's, read by `pieces`) and those their lines name. Raise OperationError naming an
    archive whose manifest or recipe cannot be read (one deleted meanwhile is passed
    over), OSError if the storage fails."""
    repository = chunks.repository
    for volume in repository.volumes(chunks.policy):
        for key in repository.archives(chunks.policy, volume):
            if key.namespace == chunks.namespace:
                yield _recipe_chunks(chunks, key, identities, pieces)


def _chunk_ids(text: BinaryIO, pieces: _Pieces) -> Iterator[str]:
    """Given a recipe's text, yield the ids of the chunks it names: its pieces' (a version 3
    recipe's, read by `pieces`) and those of its lines. A recipe of version 2 or 3 is read
    member by member (`member_lines`: each line checked, no raw bytes decoded; three
    recipes of 200,000 members took 11 s of CPU step by step), one of version 1 step by
    step."""
    first = text.readline()
    lines = chain((first,), text)
    if first not in (HEADER.encode(), MARKED_HEADER.encode(), SPLICED_HEADER.encode()):
        raise RecipeError("not a volkeep recipe of version 1, 2 or 3")
    if first == HEADER.encode():
        steps = read_recipe(line.decode("ascii") for line in lines)
        yield from (step.chunk_id for step in steps if isinstance(step, ChunkStep))
        return
    for member in member_lines(marked_lines(lines, pieces)):
        yield from pieces.read_ids
        pieces.read_ids.clear()
        yield from member.chunk_ids
    yield from pieces.read_ids
    pieces.read_ids.clear()


def _recipe_chunks(
    chunks: ChunkStore, key: ArchiveKey, identities: Identities | None, pieces: _Pieces
) -> Iterator[str]:
    repository = chunks.repository
    try:
        manifest = repository.read_manifest(key, entries=False)
        if manifest.layout != DEDUPLICATED:
            return
        if manifest.encryption is not None and identities is None:
            raise archive_error(
                key,
                "garbage collection reads the recipes of an encrypted policy: it needs "
                "encryption.age.identity_file",
            )
        decrypt = None
        if manifest.encryption is not None and identities is not None:
            decrypt = opener(identities, manifest.recipients)
        with (
            closing(repository.open_archive(key, manifest)) as stored,
            section_reader(stored, decrypt) as plain,
        ):
            yield from _chunk_ids(io.BufferedReader(plain, 1 << 16), pieces)  # type: ignore[type-var]
    except (OperationError, BlobMissing) as error:
        if not repository.store.exists(key.blob(MANIFEST_SUFFIX)):
            return  # deleted by a prune as we read it: it references nothing any more
        if isinstance(error, OperationError):
            raise
        raise archive_error(key, "recipe missing: garbage collection stopped") from None
    except (
        RecipeError,
        PackFormatError,
        zstandard.ZstdError,
        UnicodeDecodeError,
        EncryptionError,
        NoIdentityMatches,
    ) as error:
        raise archive_error(
            key, f"cannot read the recipe ({error}): garbage collection stopped"
        ) from None
