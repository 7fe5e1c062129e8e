"""Packs and indexes: new chunks compressed one by one and gathered into packs of a few
MiB, each pack self-describing, and an index of what a backup stored (docs/format-dedup.md).

A pack is held in memory while it fills (up to the config's pack_size and one chunk), is
sealed whole (one age stream when the policy encrypts: age's cost is per object, so per
pack and not per chunk), named by the SHA-256 of its stored bytes and handed over to be
stored. The index entries go into a spooled section as each pack is handed over: nothing
grows with the number of chunks but what `KnownChunks` keeps.
"""

from __future__ import annotations

import hashlib
import io
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard

from daemon.archive.chunkconfig import AGE_MAGIC, ChunkConfig
from daemon.archive.digest import HashingReader, kept
from daemon.archive.encryption import decrypting_reader, encrypting_writer
from daemon.archive.sealing import Decrypt, Readable, section_reader
from daemon.archive.spool import SpooledSection
from daemon.config.keys import Identities, Recipient

FOOTER_MAGIC = b"volkeep-pack 1 "
FOOTER_SIZE = 32  # the magic, 16 decimal digits (the trailer's length), a newline
INDEX_HEADER = b"volkeep-index 1\n"
CONDEMNED_HEADER = b"volkeep-condemned 1\n"
PACKS_KEPT = 2  # packs a ChunkReader keeps opened
# A pack is also closed at this many chunks, whatever its size: the writer holds an entry
# per chunk of the pack, its trailer and index lines, and a reader parses the trailer whole.
# Tiny files' chunks (25 stored bytes) made packs of 335,000 chunks and a backup of
# 200,000 tiny files peak at 236 MiB; at 4,096 a pack's entries take about a MiB.
PACK_CHUNKS = 4096
MAX_TRAILER = 64 << 20  # what a hostile footer may make a reader decompress
# Bytes of new chunks handed to the packing thread at once; three batches are in flight,
# and batches of 1 MiB added some 4 MiB to a first backup's peak RSS.
BATCH_BYTES = 1 << 18
SAMPLE = 4096  # bytes of a chunk compressed to judge whether the whole would compress
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
RAW_BLOCK = 128 << 10  # zstd's largest block
_TRAILER_LINE = re.compile(r"([0-9a-f]{64}) ([0-9]+) ([0-9]+) ([0-9]+)")
_INDEX_LINE = re.compile(r"([0-9a-f]{64}) ([0-9a-f]{64}) ([0-9]+) ([0-9]+) ([0-9]+)")
_CONDEMNED_LINE = re.compile(r"([0-9a-f]{64}) ([0-9]+)")


class PackFormatError(ValueError):
    """A pack or index that cannot be read: damaged, cut short or of an unknown version."""


def pack_key(name: str) -> str:
    """Given a pack's name, return its key under the chunk repository's directory."""
    return f"packs/{name[:2]}/{name}"


def index_key(name: str) -> str:
    return f"index/{name}"


def condemned_key(name: str) -> str:
    return f"condemned/{name}"


@dataclass(frozen=True)
class PackEntry:
    """Where a chunk lies in its pack's plain bytes: its zstd frame, and its plain size."""

    chunk_id: str
    offset: int
    stored_length: int
    plain_length: int


@dataclass(frozen=True)
class IndexEntry:
    """An index line: a chunk and where it is (its pack, then as in PackEntry)."""

    chunk_id: str
    pack: str
    offset: int
    stored_length: int
    plain_length: int


@dataclass(frozen=True)
class SealedPack:
    name: str  # the SHA-256 of `data`
    data: bytes | bytearray  # the stored bytes
    entries: tuple[PackEntry, ...]

    @property
    def size(self) -> int:
        return len(self.data)


class PackBuilder:
    """Gathers compressed chunks in one buffer; `seal` makes the pack. One growing buffer,
    not a list of frames: on the packing thread, a pack's thousands of frames, alive until
    it is sealed, lay among the backup thread's short-lived buffers in the one malloc arena
    and kept it some 20 MiB larger (a first backup to S3 peaked at 150-161 MiB)."""

    def __init__(self) -> None:
        self._body = bytearray()
        self._entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        return len(self._body)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, chunk_id: str, stored: bytes | memoryview, plain_length: int) -> None:
        self._entries.append(PackEntry(chunk_id, len(self._body), len(stored), plain_length))
        self._body += stored

    def halves(self) -> tuple[PackBuilder, PackBuilder]:
        """Return two builders: of the first half of the chunks, and of the rest."""
        middle = max(1, len(self._entries) // 2)
        parts = (PackBuilder(), PackBuilder())
        for number, entry in enumerate(self._entries):
            frame = bytes(self._body[entry.offset : entry.offset + entry.stored_length])
            parts[number >= middle].add(entry.chunk_id, frame, entry.plain_length)
        return parts

    def seal(self, recipients: Sequence[Recipient]) -> SealedPack:
        """Return the pack: the chunks, the trailer (zstd of one line per chunk: id, offset,
        stored length, plain length) and the footer; as an age file if there are
        recipients. The builder is spent: in clear, its buffer becomes the pack's."""
        lines = "".join(
            f"{entry.chunk_id} {entry.offset} {entry.stored_length} {entry.plain_length}\n"
            for entry in self._entries
        )
        trailer = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(lines.encode())
        footer = FOOTER_MAGIC + b"%016d\n" % len(trailer)
        stored: bytes | bytearray
        if recipients:
            sealed = io.BytesIO()
            writer = encrypting_writer(sealed, recipients)
            try:
                writer.write(self._body)
                writer.write(trailer + footer)
                writer.finish()
            finally:
                writer.close()
            stored = sealed.getvalue()
        else:  # the body becomes the pack: no copy of its megabytes (the builder is done)
            self._body += trailer
            self._body += footer
            stored = self._body
        return SealedPack(hashlib.sha256(stored).hexdigest(), stored, tuple(self._entries))


class Pack:
    """A pack's plain bytes, read: its entries from the trailer, and its chunks (by one
    thread at a time: they share the pack's zstd decompressor)."""

    def __init__(self, plain: bytes) -> None:
        """Raise PackFormatError if the footer or trailer cannot be read."""
        self._plain = plain
        self.size = len(plain)
        # one for the pack's chunks: a decompressor made for each of them cost 8 us, some
        # 1.6 s of CPU in a restore of 200,000 small files
        self._decompressor = zstandard.ZstdDecompressor()
        footer = plain[-FOOTER_SIZE:]
        digits = footer[len(FOOTER_MAGIC) : -1]
        if (
            len(footer) != FOOTER_SIZE
            or not footer.startswith(FOOTER_MAGIC)
            or not digits.isdigit()
        ):
            raise PackFormatError("not a volkeep pack of version 1 (no footer)")
        trailer_size = int(digits)
        start = len(plain) - FOOTER_SIZE - trailer_size
        if start < 0:
            raise PackFormatError("the trailer is longer than the pack")
        try:
            lines = zstandard.ZstdDecompressor().decompress(
                plain[start : start + trailer_size], max_output_size=MAX_TRAILER
            )
        except zstandard.ZstdError as error:
            raise PackFormatError(f"damaged trailer: {error}") from None
        self.entries = [_pack_entry(line, start) for line in lines.decode("ascii").splitlines()]

    def chunk(self, entry: PackEntry) -> bytes:
        """Return the plain bytes of one of the pack's chunks. Raise PackFormatError if they
        cannot be decompressed to their recorded size."""
        # a view: the frame is only read, and copying every chunk's would cost a pass
        frame = memoryview(self._plain)[entry.offset : entry.offset + entry.stored_length]
        try:
            plain: bytes = self._decompressor.decompress(frame, max_output_size=entry.plain_length)
        except zstandard.ZstdError as error:
            raise PackFormatError(f"damaged chunk {entry.chunk_id}: {error}") from None
        if len(plain) != entry.plain_length:
            raise PackFormatError(
                f"chunk {entry.chunk_id}: {len(plain)} bytes, not the size recorded"
            )
        return plain

    def frame(self, entry: PackEntry) -> bytes:
        """Return one of the pack's chunks as stored: its zstd frame."""
        return self._plain[entry.offset : entry.offset + entry.stored_length]


def _pack_entry(line: str, trailer_start: int) -> PackEntry:
    match = _TRAILER_LINE.fullmatch(line)
    if match is None:
        raise PackFormatError(f"damaged trailer line {line[:80]!r}")
    entry = PackEntry(match[1], int(match[2]), int(match[3]), int(match[4]))
    if entry.offset + entry.stored_length > trailer_start:
        raise PackFormatError(f"chunk {entry.chunk_id} lies outside the pack's chunks")
    return entry


def open_pack(
    name: str, stored: bytes, identities: Identities | None, encrypted_to: Sequence[str] = ()
) -> Pack:
    """Given a pack's name and stored bytes (and identities if it is sealed), return it
    read. Raise PackFormatError if the bytes are not the ones the name was taken of, or
    cannot be read; EncryptionError if the identities cannot open them."""
    if hashlib.sha256(stored).hexdigest() != name:
        raise PackFormatError(f"pack {name}: its SHA-256 is not its name (damaged)")
    if not stored.startswith(AGE_MAGIC):
        return Pack(stored)
    if identities is None:
        raise PackFormatError("the pack is encrypted: it needs an identity")
    with decrypting_reader(io.BytesIO(stored), identities, encrypted_to=encrypted_to) as plain:
        return Pack(plain.read())


class ChunkReader:
    """Chunks by id, read from their packs: `locate` says where a chunk is (an index
    lookup), `load` returns a pack read (`open_pack`: its name checked, opened, its
    trailer read). The packs read last are kept: PACKS_KEPT (a tar's chunks mostly come
    pack after pack), or with `kept_bytes` as many as fit in that many bytes (at least
    one); every chunk is checked against its id."""

    def __init__(
        self,
        config: ChunkConfig,
        locate: Callable[[str], IndexEntry | None],
        load: Callable[[str], Pack],
        *,
        kept_bytes: int | None = None,
    ) -> None:
        self._config = config
        self._locate = locate
        self._load = load
        self._kept_bytes = kept_bytes
        self._packs: dict[str, Pack] = {}
        self._held = 0  # the bytes of the packs kept

    def holds(self, pack: str) -> bool:
        """Say whether the pack is among those kept opened (a read-ahead skips them)."""
        return pack in self._packs

    def __call__(self, chunk_id: str) -> bytes:
        """Return the chunk's plain bytes. Raise PackFormatError if no index lists it, or
        its pack or bytes are damaged."""
        where = self._locate(chunk_id)
        if where is None:
            raise PackFormatError(f"chunk {chunk_id} is in no index")
        pack = self._packs.pop(where.pack, None)
        if pack is None:
            pack = self._load(where.pack)
            self._make_room(pack.size)
            self._held += pack.size
        self._packs[where.pack] = pack  # the most recent last
        entry = PackEntry(chunk_id, where.offset, where.stored_length, where.plain_length)
        data = pack.chunk(entry)
        if self._config.chunk_id(data) != chunk_id:
            raise PackFormatError(f"chunk {chunk_id} in pack {where.pack}: not its content")
        return data

    def _make_room(self, size: int) -> None:
        """Let go of the packs read longest ago that keep a new one of `size` bytes out."""
        while self._packs and (
            len(self._packs) >= PACKS_KEPT
            if self._kept_bytes is None
            else self._held + size > self._kept_bytes
        ):
            self._held -= self._packs.pop(next(iter(self._packs))).size


class KnownChunks(Protocol):
    """The ids of the chunks the repository holds (and this backup stored so far)."""

    def __contains__(self, chunk_id: object, /) -> bool: ...

    def add(self, chunk_id: str, /) -> None: ...


class ChunkWriter:
    """Stores chunks: each is named by its id; a known one is not stored again; a new one
    is compressed into the current pack. A full pack is sealed and given to `on_pack`
    (which stores it, or raises), then its chunks are written to the index section.

    The caller's thread names and judges each chunk, in order; the new ones go, a batch
    of BATCH_BYTES at a time, to one packing thread, which compresses them and fills the
    packs, and hands each full one to one storing thread, which seals it (its trailer,
    age, its SHA-256), stores it (`on_pack`) and writes its index lines (zstd, SHA-256, age
    and a storage's writes release the GIL: the caller's thread reads on meanwhile, and a
    pack's sealing, writes and fsync, or its upload, no longer hold up the compression of
    the next). The packs are the ones one thread makes: the same chunks in the same order,
    cut at the same sizes, stored in that order. The pieces of a version 3 recipe
    (`add(..., piece=True)`) fill packs of their own, so that reading a recipe back fetches
    its pieces without the data. `fresh` and `on_pack` run on the storing
    thread; what it or the packing thread raises is raised by the next `add`, `copy` or
    `finish`. Memory: three packs (one being sealed and stored, one filling and one of
    pieces filling: a pack full waits until the one before is stored) and at most three
    batches (one filling, one queued, one being packed)."""

    def __init__(
        self,
        config: ChunkConfig,
        recipients: Sequence[Recipient],
        known: KnownChunks,
        on_pack: Callable[[SealedPack], object],
        spool_dir: Path | None = None,
        fresh: Callable[[str], bool] = lambda name: True,
    ) -> None:
        """`fresh` says whether a pack may be stored under a name: not if garbage
        collection condemned a pack of that name (the same chunks, in the same order, in
        clear); that pack is stored as two instead."""
        self._config = config
        self._fresh = fresh
        self._recipients = recipients
        self._known = known
        self._on_pack = on_pack
        self._compressor = zstandard.ZstdCompressor(level=config.chunk_level, write_checksum=True)
        self._pack = PackBuilder()
        self._pieces = PackBuilder()  # the pack of pieces filling
        self._batch: list[_NewChunk] = []
        self._batch_size = 0
        self._batches: queue.Queue[list[_NewChunk] | None] = queue.Queue(maxsize=1)
        self._packing: threading.Thread | None = None  # started with the first batch
        self._full: queue.Queue[PackBuilder | None] = queue.Queue(maxsize=1)
        self._storing: threading.Thread | None = None  # started with the first pack
        self._failure: BaseException | None = None  # what the packing or storing thread raised
        self._abandoned = False
        self.index = SpooledSection(recipients, spool_dir)
        self.index.write(INDEX_HEADER)
        self.chunks = self.new_chunks = self.packs = 0
        self.plain_bytes = self.new_plain_bytes = self.stored_bytes = 0

    def add(self, data: bytes | bytearray | memoryview, /, *, piece: bool = False) -> str:
        """Store one chunk (if it is new), of file content or (`piece`) a piece of the
        recipe (not counted in `chunks`); return its id."""
        chunk_id = self._config.chunk_id(data)
        if not piece:
            self.chunks += 1
            self.plain_bytes += len(data)
        if chunk_id not in self._known:
            self._take(_NewChunk(chunk_id, kept(data), len(data), compressed=False, piece=piece))
        return chunk_id

    def copy(self, chunk_id: str, frame: bytes, plain_length: int) -> None:
        """Store a new chunk given compressed: its zstd frame (as a pack holds it, for a
        repack) and its plain length."""
        self._take(_NewChunk(chunk_id, frame, plain_length, compressed=True, piece=False))

    def _take(self, chunk: _NewChunk) -> None:
        self._known.add(chunk.chunk_id)
        self.new_chunks += 1
        self.new_plain_bytes += chunk.plain_length
        self._batch.append(chunk)
        self._batch_size += len(chunk.data)
        if self._batch_size >= BATCH_BYTES:
            self._hand_batch()

    def _hand_batch(self) -> None:
        """Give the batch to the packing thread (waiting while it packs the one before).
        Raise what the packing thread raised, if it did."""
        self._raise_failure()
        batch, self._batch, self._batch_size = self._batch, [], 0
        if self._packing is None:
            self._packing = threading.Thread(
                target=self._pack_batches, name="volkeep-packs", daemon=True
            )
            self._packing.start()
        self._batches.put(batch)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def finish(self) -> None:
        """Seal and hand over the last pack, then end the index section (to be stored once
        every pack is). Raise what `on_pack` raised."""
        if self._batch:
            self._hand_batch()
        self._stop_packing()
        self._raise_failure()
        for pieces in (False, True):
            if len(self._pieces if pieces else self._pack):
                self._flush(pieces)
        self._stop_storing()
        self._raise_failure()
        self.index.finish()

    def _stop_packing(self) -> None:
        """Let the packing thread pack what it was given, and end."""
        if self._packing is not None:
            self._batches.put(None)
            self._packing.join()
            self._packing = None

    def _pack_batches(self) -> None:
        """The packing thread: pack each batch given until None comes; keep the first
        failure (and skip the batches after it)."""
        while (batch := self._batches.get()) is not None:
            if self._failure is not None or self._abandoned:
                continue
            try:
                self._pack_batch(batch)
            except BaseException as failure:  # raised again on the caller's thread
                self._failure = failure

    def _pack_batch(self, batch: list[_NewChunk]) -> None:
        """Compress a batch's chunks into the pack that fills; seal and hand over each pack
        full. Each chunk's plain bytes are let go once compressed (the batch is emptied as it
        goes, not held whole until its end)."""
        batch.reverse()
        while batch:
            chunk = batch.pop()
            frame = chunk.data if chunk.compressed else self._frame(chunk.data)
            pack = self._pieces if chunk.piece else self._pack
            pack.add(chunk.chunk_id, frame, chunk.plain_length)
            del frame
            if pack.size >= self._config.pack_size or len(pack) >= PACK_CHUNKS:
                self._flush(chunk.piece)
            del chunk, pack

    def _frame(self, data: bytes | memoryview) -> bytes:
        """Given a chunk's plain bytes, return its zstd frame: compressed, or of raw blocks
        (`raw_frame`) if zstd does not make it smaller. A chunk over three samples long is
        judged by a sample (a quarter at its start, half in its middle, a quarter at its
        end) first: zstd would find nothing in random data, and the benchmark volume's
        45 % of it took a third of the packing thread's zstd time."""
        if len(data) > 3 * SAMPLE:
            middle = len(data) // 2
            sample = b"".join(
                (data[: SAMPLE // 4], data[middle : middle + SAMPLE // 2], data[-SAMPLE // 4 :])
            )
            if len(self._compressor.compress(sample)) >= len(sample):
                return raw_frame(data)
        frame: bytes = self._compressor.compress(data)
        return frame if len(frame) < len(data) else raw_frame(data)

    def _flush(self, pieces: bool) -> None:
        """Give the full pack (of pieces, or not) to the storing thread, once the pack
        before is stored."""
        if pieces:
            builder, self._pieces = self._pieces, PackBuilder()
        else:
            builder, self._pack = self._pack, PackBuilder()
        self._full.join()
        if self._storing is None:
            self._storing = threading.Thread(
                target=self._store_packs, name="volkeep-store", daemon=True
            )
            self._storing.start()
        self._full.put(builder)

    def _stop_storing(self) -> None:
        """Let the storing thread store what it was given, and end."""
        if self._storing is not None:
            self._full.put(None)
            self._storing.join()
            self._storing = None

    def _store_packs(self) -> None:
        """The storing thread: seal and store each pack given until None comes; keep the
        first failure (and skip the packs after it)."""
        while (builder := self._full.get()) is not None:
            sealed = None
            try:
                if self._failure is None and not self._abandoned:
                    sealed = builder.seal(self._recipients)
                    if self._fresh(sealed.name) or len(builder) < 2:
                        builder = None  # its frames, let go before the pack is stored
                        self._store(sealed)
                    else:
                        for half in builder.halves():
                            self._store(half.seal(self._recipients))
            except BaseException as failure:  # raised again on the caller's thread
                self._failure = failure
            finally:
                builder = sealed = None  # let go before the packing thread hands the next
                self._full.task_done()
        self._full.task_done()

    def _store(self, sealed: SealedPack) -> None:
        self._on_pack(sealed)
        self.packs += 1
        self.stored_bytes += sealed.size
        self.index.write(
            "".join(
                f"{entry.chunk_id} {sealed.name} {entry.offset} {entry.stored_length} "
                f"{entry.plain_length}\n"
                for entry in sealed.entries
            ).encode()
        )

    def close(self) -> None:
        """Stop the packing and storing threads (what they were still given is dropped),
        close the index."""
        self._abandoned = True
        self._stop_packing()
        self._stop_storing()
        self.index.close()


@dataclass(frozen=True, slots=True)
class _NewChunk:
    """A new chunk on its way to the packing thread: its plain bytes or its zstd frame."""

    chunk_id: str
    data: bytes | memoryview  # a view only of immutable bytes (`kept`)
    plain_length: int
    compressed: bool
    piece: bool  # of a recipe (packed apart)


def raw_frame(data: bytes | memoryview) -> bytes:
    """Given a chunk's plain bytes, return them as one zstd frame of raw (stored) blocks
    (RFC 8878): the magic number, a header with the single-segment flag and the content
    size (in the fewest bytes), no checksum (a chunk is checked against its id), then
    blocks of at most 128 KiB, each a 3-byte header (last-block flag, type 0 for raw, size)
    and the bytes as they are. Any zstd decoder reads it; `zstd -d` too."""
    size = len(data)
    if size < 256:
        header = bytes((0x20, size))  # single segment, 1-byte content size
    elif size < 65536 + 256:
        header = b"\x60" + (size - 256).to_bytes(2, "little")  # 2 bytes, less 256
    else:
        header = b"\xa0" + size.to_bytes(4, "little")  # 4 bytes
    parts: list[bytes | memoryview] = [ZSTD_MAGIC, header]
    for start in range(0, size, RAW_BLOCK):
        block = data[start : start + RAW_BLOCK]
        last = start + RAW_BLOCK >= size
        parts += ((len(block) << 3 | last).to_bytes(3, "little"), block)
    return b"".join(parts)


def read_index(name: str, source: Readable, decrypt: Decrypt | None) -> Iterator[IndexEntry]:
    """Given an index's name and its stored bytes being read (sealed if `decrypt` is
    given), yield its entries, streamed. Raise PackFormatError if it is damaged, cut short
    (its SHA-256 is checked against its name after the last entry) or of another version;
    EncryptionError if `decrypt` cannot open it."""
    stored = HashingReader(source)
    try:
        with section_reader(stored, decrypt) as plain:
            lines = io.TextIOWrapper(plain, encoding="ascii")  # type: ignore[type-var]
            if lines.readline() != INDEX_HEADER.decode():
                raise PackFormatError("not a volkeep index of version 1")
            for line in lines:
                yield _index_entry(line)
        while stored.read(1 << 20):  # what follows the section, if anything, is damage
            pass
    except (zstandard.ZstdError, UnicodeDecodeError) as error:
        raise PackFormatError(f"index {name}: damaged ({error})") from None
    if stored.hexdigest() != name:
        raise PackFormatError(f"index {name}: its SHA-256 is not its name (damaged)")


def _index_entry(line: str) -> IndexEntry:
    match = _INDEX_LINE.fullmatch(line.rstrip("\n"))
    if match is None:
        raise PackFormatError(f"damaged index line {line[:80]!r}")
    return IndexEntry(match[1], match[2], int(match[3]), int(match[4]), int(match[5]))


def condemned_record(condemned: dict[str, int]) -> tuple[str, bytes]:
    """Given packs garbage collection condemned (name: since when, in Unix seconds), return
    the record that says so: its name (the SHA-256 of its bytes) and its bytes, ASCII lines
    in pack order after the header, each "<pack> <since>" and a newline."""
    lines = "".join(f"{pack} {since}\n" for pack, since in sorted(condemned.items()))
    data = CONDEMNED_HEADER + lines.encode()
    return hashlib.sha256(data).hexdigest(), data


def read_condemned(name: str, data: bytes) -> dict[str, int]:
    """Given a condemned record's name and bytes, return its packs (name: since when).
    Raise PackFormatError if it is damaged or of another version."""
    if hashlib.sha256(data).hexdigest() != name:
        raise PackFormatError(f"condemned record {name}: its SHA-256 is not its name (damaged)")
    if not data.startswith(CONDEMNED_HEADER):
        raise PackFormatError(f"condemned record {name}: not of version 1")
    condemned = {}
    for line in data[len(CONDEMNED_HEADER) :].decode("ascii", "replace").splitlines():
        match = _CONDEMNED_LINE.fullmatch(line)
        if match is None:
            raise PackFormatError(f"condemned record {name}: damaged line {line[:80]!r}")
        condemned[match[1]] = int(match[2])
    return condemned
