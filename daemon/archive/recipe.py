"""An archive's recipe: its tar, byte for byte, as raw bytes and chunks (docs/format-dedup.md,
"The recipe").

The tar stream is split where `TarScanner` (the one reader of tar streams) says a regular
file's content begins and ends: the content is cut into chunks (`FileChunker`) and stored;
everything else (headers, GNU and PAX extended headers, padding, the end-of-archive blocks
and whatever follows them) is kept in the recipe itself. The recipe is text, one step per
line, so that a short shell script with stock tools can follow it:

    volkeep-recipe 2                  (or 1: no M lines, and a T line with a digest)
    R <base64 of up to 512 bytes>     raw bytes
    Z <count>                         that many zero bytes
    C <chunk id> <length>             a chunk, of that many plain bytes
    M <inode> <ctime>                 (2) the end of a member: the steps since the last M
                                      line are one member whole; its inode and ctime as
                                      the helper listed them, or "-" if not listed
    T <size> <sha256>                 the end: the tar's size and SHA-256 (version 1), or
                                      "-" (version 2: not taken)

A version 3 recipe keeps those lines (all but the first and the T line) in pieces, chunks
of the chunk repository, and says which of their bytes to splice, in order:

    volkeep-recipe 3
    P <chunk id> <length>             a piece (numbered 0, 1, ... in the order of P lines)
    S <piece> <start> <stop>          its bytes [start, stop): whole lines
    T <size> -

A version 2 recipe marks where each member ends, so that the next backup can take an
unchanged member's steps (its header blocks and chunk list) instead of reading the file
again (`reuse`). Its tar's SHA-256 would then be unknown (computing it would need every
byte), and a first backup does not take it either: the tar is vouched for by its size,
each chunk by its keyed id and the recipe by the manifest's SHA-256, and hashing the whole
tar cost a first backup about a tenth of its CPU.

Replacing each S line by its bytes (and dropping the P lines) gives a version 2 recipe's
lines. A backup that takes unchanged members from a version 3 archive splices the bytes
of its pieces that hold their lines instead of storing them again (`take_pieces`).

Memory: a header, up to RAW_FLUSH raw bytes, LINES_WRITTEN lines, the chunker's window,
the piece being filled (PIECE_MAX and a line) and the splices that wait for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from typing import NamedTuple, Protocol

from daemon.archive.chunking import ChunkerParameters, FileChunker
from daemon.archive.tarstream import Include, Member, TarScanner

HEADER = "volkeep-recipe 1\n"
MARKED_HEADER = "volkeep-recipe 2\n"  # with M lines; a T line's digest may be "-"
SPLICED_HEADER = "volkeep-recipe 3\n"  # version 2's lines, in pieces
# A piece ends after a member's M line once it holds PIECE_MIN bytes if the CRC-32 of
# that line has its low bits (PIECE_CUT) zero, and at the latest at the end of the line
# that brings it to PIECE_MAX: the same run of members is cut at the same places.
PIECE_MIN = 32 << 10
PIECE_MAX = 256 << 10
PIECE_CUT = 63
PIECES_KEPT = 8  # the pieces a reader keeps fetched (splices alternate between a few)
RAW_LINE = 512  # raw bytes per R line (a tar block: 684 base64 characters)
RAW_FLUSH = 64 << 10  # raw bytes kept before they are written out
# Lines kept before they go to the recipe's zstd (at most ~180 KB of R lines). A write per
# member's header made 9,000 small writes for the benchmark's volume, each releasing the
# GIL and taking it back from the packing and hashing threads.
LINES_WRITTEN = 256
_ZERO_LINE = bytes(RAW_LINE)
ZEROS_WRITTEN = 1 << 20  # zero bytes given to the sink at once
_LINE_PATTERNS = {
    "Z": r"Z ([1-9][0-9]*)",
    "C": r"C ([0-9a-f]{64}) ([0-9]+)",
    "T": r"T ([0-9]+) ([0-9a-f]{64}|-)",
    "M": r"M ([0-9]+|-) ([0-9]+|-)",
}
_LINES = {kind: re.compile(pattern) for kind, pattern in _LINE_PATTERNS.items()}
_PIECE_LINE = re.compile(rb"P ([0-9a-f]{64}) ([0-9]+)\n")
_SPLICE_LINE = re.compile(rb"S ([0-9]+) ([0-9]+) ([0-9]+)\n")
_BYTE_LINES = {
    kind.encode(): re.compile(pattern.encode()) for kind, pattern in _LINE_PATTERNS.items()
}
_RAW_ENCODED = (RAW_LINE + 2) // 3 * 4  # base64 characters of a whole R line
_BLOCK_LINE = len("R \n") + _RAW_ENCODED  # the length of an R line of a whole block
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class RecipeError(ValueError):
    """A recipe that cannot be followed: damaged, cut short, or of an unknown version; or a
    tar rebuilt from it that is not the one it describes."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class MemberMark:
    """The end of a member (an M line): its inode and ctime as listed, or None."""

    inode: int | None
    ctime: int | None

    def line(self) -> str:
        return f"M {_or_dash(self.inode)} {_or_dash(self.ctime)}\n"


def _or_dash(number: int | None) -> str:
    return "-" if number is None else str(number)


Marks = Callable[[Member], MemberMark]


class PieceRef(NamedTuple):
    """Bytes [start, stop) of a piece: the chunk of that id, `length` plain bytes."""

    chunk_id: str
    length: int
    start: int
    stop: int


class RecipeBuilder:
    """Takes a tar stream by `feed` (or through `scanner`, a backup's one parse of it);
    writes its recipe into `out` and gives each chunk of file content to `store`, which
    stores it and returns its id. With `marks`, writes a version 2 recipe: each member ends
    with the M line `marks` returns for it, and members of an earlier recipe of version 2
    or 3 may be taken whole (`take_lines`, `take_pieces`). With `marks` and `pieces`, a
    version 3 recipe: its lines go into pieces, which `pieces` stores (as a chunk) and
    names."""

    def __init__(
        self,
        parameters: ChunkerParameters,
        store: Callable[[memoryview], str],
        out: Sink,
        marks: Marks | None = None,
        pieces: Callable[[bytes], str] | None = None,
    ) -> None:
        assert pieces is None or marks is not None, "a version 3 recipe marks its members"
        self._parameters = parameters
        self._store = store
        self._out = out
        self._marks = marks
        self._splicer = _Splicer(out, pieces) if pieces is not None else None
        # the tar's SHA-256: a version 1 recipe's only (no backup writes one any more)
        self._sha256 = hashlib.sha256() if marks is None else None
        self._taken = False  # whether members were taken from an earlier recipe
        self.size = 0
        self._passed = 0  # bytes the scanner passed on (`feed` keeps what follows the end)
        self._starting = 0  # the content size of the member whose header just ended
        self._content_due = 0
        self._chunker: FileChunker | None = None
        self._raw = bytearray()
        self._raw_start = 0  # the stream offset of the first byte in _raw
        self._zeros = 0  # zero bytes not yet written as a Z line
        self._lines: list[str] = []
        out.write(
            (
                HEADER if marks is None else MARKED_HEADER if pieces is None else SPLICED_HEADER
            ).encode()
        )
        self._scanner = self.scanner()

    def scanner(
        self, include: Include | None = None, done: Callable[[Member], None] | None = None
    ) -> TarScanner:
        """Return the scanner to feed the tar stream to, in place of `feed`: the stream's
        one parse (TarScanner, without digests), whose kept members this recipe describes.
        `include` and `done`, the caller's (a backup's filter and entries), are called as a
        TarScanner calls them: `include` before this recipe takes the member (it may take
        lines from an earlier recipe first), `done` after its M line."""

        def including(member: Member) -> bool:
            keep = include is None or include(member)
            if keep:
                self._starting = member.size if member.type == "file" else 0
            return keep

        def ended(member: Member) -> None:
            self._mark_end(member)
            if done is not None:
                done(member)

        self._scanner = TarScanner(
            emit=self._take_raw,
            include=including,
            done=ended,
            digests=False,
            content=self._take_content,
        )
        return self._scanner

    def _mark_end(self, member: Member) -> None:
        """Write the M line of the member whose last byte was just taken (version 2)."""
        if self._marks is not None:
            self._flush_raw()
            self._write_zeros()
            line = self._marks(member).line()
            self._lines.append(line)
            if self._splicer is not None:
                self._write_lines()
                self._splicer.member_end(line)

    def take_lines(self, text: bytes, tar_size: int) -> None:
        """Append whole members of an earlier recipe of version 2 or 3: their lines
        verbatim (each member's M line last, as `member_lines` found them), which stand
        for `tar_size` bytes of the tar; the lines may come in several calls, cut anywhere.
        Only between members."""
        self._between_members()
        if self._splicer is not None:
            self._splicer.write(text)
        else:
            self._out.write(text)
        self.size += tar_size

    def take_pieces(self, spliced: Iterable[PieceRef], tar_size: int) -> None:
        """Append whole members of an earlier version 3 recipe by the bytes of its pieces
        that hold their lines (a version 3 recipe only), standing for `tar_size` bytes of
        the tar. Only between members."""
        assert self._splicer is not None
        self._between_members()
        self._splicer.take(spliced)
        self.size += tar_size

    def _between_members(self) -> None:
        assert self._marks is not None and not self._content_due
        self._flush_raw()
        self._write_zeros()
        self._write_lines()
        self._taken = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the tar stream (through the scanner, every member kept,
        and what follows the end blocks kept too). Raise TarFormatError if it is not one."""
        view = memoryview(data).cast("B")
        if not self._scanner.ended:
            self._scanner.feed(view)  # it passes on every byte up to the end blocks
            after = self._scanner.offset - self._passed if self._scanner.ended else 0
            view = view[len(view) - after :]
        if view:
            self._take_raw(view)

    def _take_raw(self, piece: bytes | bytearray | memoryview) -> None:
        """Take bytes of the stream that are not a file's content: headers, padding, the
        end blocks."""
        self._passed += len(piece)
        if self._sha256 is not None:
            self._sha256.update(piece)
        if not self._raw:
            self._raw_start = self.size
        self._raw += piece
        self.size += len(piece)
        if len(self._raw) >= RAW_FLUSH:
            self._flush_raw()

    def _take_content(self, piece: bytes | bytearray | memoryview) -> None:
        """Take a piece of a regular file's content (the first begins its chunks)."""
        self._passed += len(piece)
        if self._sha256 is not None:
            self._sha256.update(piece)
        if self._chunker is None:
            self._begin_content()
        self.size += len(piece)
        self._content(memoryview(piece))

    def _begin_content(self) -> None:
        self._flush_raw()
        self._content_due, self._starting = self._starting, 0
        self._chunker = FileChunker(self._parameters, self._add_chunk)

    def _content(self, piece: memoryview) -> None:
        assert self._chunker is not None
        self._content_due -= len(piece)
        self._chunker.feed(piece, last=not self._content_due)
        if not self._content_due:
            self._chunker = None

    def _add_chunk(self, chunk: memoryview) -> None:
        self._write_zeros()
        self._lines.append(f"C {self._store(chunk)} {len(chunk)}\n")
        if len(self._lines) >= LINES_WRITTEN:
            self._write_lines()

    def _flush_raw(self) -> None:
        # Lines end where the stream's blocks do: a header is one R line, the padding
        # after a file's content one Z line. Called twice a member: what is in one block
        # (most calls) is one line without a loop (200,000 files: 1.3 s less).
        raw = self._raw
        if not raw:
            return
        self._raw = bytearray()  # a new one: the old one's views may outlive this call
        first = -self._raw_start % RAW_LINE or RAW_LINE  # up to the first block's end
        if len(raw) <= first:
            self._raw_line(raw)
        else:
            view = memoryview(raw)
            self._raw_line(view[:first])
            for start in range(first, len(raw), RAW_LINE):
                self._raw_line(view[start : start + RAW_LINE])
        if len(self._lines) >= LINES_WRITTEN:
            self._write_lines()

    def _raw_line(self, piece: bytearray | memoryview) -> None:
        """Write a piece of raw bytes within one block: an R line, or zeros to the Z line
        that comes."""
        if _ZERO_LINE.startswith(piece):
            self._zeros += len(piece)
        else:
            self._write_zeros()
            self._lines.append(f"R {binascii.b2a_base64(piece, newline=False).decode()}\n")

    def _write_zeros(self) -> None:
        if self._zeros:
            self._lines.append(f"Z {self._zeros}\n")
            self._zeros = 0

    def _write_lines(self) -> None:
        text = "".join(self._lines).encode()
        self._lines.clear()
        if self._splicer is not None:
            self._splicer.write(text)
        else:
            self._out.write(text)

    def finish(self) -> None:
        """The tar stream has ended: write the rest of the recipe and its end line. Raise
        TarFormatError if the stream stopped before its end marker."""
        if self._scanner.offset or not self._taken:  # not all taken by `reuse`
            self._scanner.close()
        self._flush_raw()
        self._write_zeros()
        self._write_lines()
        if self._splicer is not None:
            self._splicer.finish()
        self._out.write(f"T {self.size} {self.hexdigest() or '-'}\n".encode())

    def hexdigest(self) -> str | None:
        """The SHA-256 of the tar so far (a version 1 recipe's), or None (version 2)."""
        return self._sha256.hexdigest() if self._sha256 is not None else None


class _Splicer:
    """A version 3 recipe's writer of pieces: fills the piece with the lines given, stores
    it (`store`, which returns its id) where it ends, and writes into `out` the P line of
    each piece before its first S line, and the S lines in order, those of adjacent bytes
    of one piece as one. An S line of the piece being filled waits until it is stored (it
    is named by its id), and every S line after it with it."""

    def __init__(self, out: Sink, store: Callable[[bytes], str]) -> None:
        self._out = out
        self._store = store
        self._piece = bytearray()  # the piece being filled
        self._run = 0  # where the bytes of it not yet spliced start
        # what waits for the piece being filled: earlier pieces' bytes, and its own runs
        self._waiting: list[PieceRef | tuple[int, int]] = []
        self._numbers: dict[str, int] = {}  # the pieces declared, by id
        self._last: list[int] | None = None  # the S line not yet written: piece, start, stop

    def write(self, text: bytes) -> None:
        """Take the next lines (whole, or cut anywhere if the next call ends them)."""
        self._piece += text
        while len(self._piece) >= PIECE_MAX:
            end = self._piece.find(b"\n", PIECE_MAX - 1)
            if end < 0:
                return
            self._seal(end + 1)

    def member_end(self, line: str) -> None:
        """A member's M line (`line`) was the last line written: end the piece there if it
        is long enough and the line says so."""
        if len(self._piece) >= PIECE_MIN and not zlib.crc32(line.encode()) & PIECE_CUT:
            self._seal(len(self._piece))

    def take(self, spliced: Iterable[PieceRef]) -> None:
        """Splice those bytes of earlier pieces after the lines written so far."""
        self._close_run()
        for ref in spliced:
            if self._waiting:
                self._waiting.append(ref)
            else:
                self._splice(ref)

    def finish(self) -> None:
        """Store the last piece, and write every S line."""
        if self._piece:
            self._seal(len(self._piece))
        if self._last is not None:
            self._out.write(b"S %d %d %d\n" % tuple(self._last))
            self._last = None

    def _close_run(self) -> None:
        if len(self._piece) > self._run:
            self._waiting.append((self._run, len(self._piece)))
            self._run = len(self._piece)

    def _seal(self, end: int) -> None:
        """Store the piece's first `end` bytes as a piece (the rest begins the next), then
        write the S lines that waited for it."""
        if end > self._run:
            self._waiting.append((self._run, end))
        data = bytes(self._piece[:end])
        del self._piece[:end]
        self._run = 0
        piece_id = self._store(data)
        for waiting in self._waiting:
            self._splice(
                waiting
                if isinstance(waiting, PieceRef)
                else PieceRef(piece_id, len(data), *waiting)
            )
        self._waiting.clear()

    def _splice(self, ref: PieceRef) -> None:
        number = self._numbers.get(ref.chunk_id)
        if number is None:
            number = self._numbers[ref.chunk_id] = len(self._numbers)
            self._out.write(f"P {ref.chunk_id} {ref.length}\n".encode())
        last = self._last
        if last is not None and last[0] == number and last[2] == ref.start:
            last[2] = ref.stop
            return
        if last is not None:
            self._out.write(b"S %d %d %d\n" % tuple(last))
        self._last = [number, ref.start, ref.stop]


@dataclass(frozen=True)
class ChunkStep:
    chunk_id: str
    length: int


@dataclass(frozen=True)
class EndStep:
    size: int
    sha256: str | None  # None: not recorded ("-": version 2)


# raw bytes, a count of zero bytes, a chunk, a member's end, the end
Step = bytes | int | ChunkStep | MemberMark | EndStep


def read_recipe(
    lines: Iterator[str], pieces: Callable[[str], bytes] | None = None
) -> Iterator[Step]:
    """Given a recipe's lines in clear, yield its steps; the end step comes last. A version
    3 recipe's pieces are read by `pieces` (a chunk's plain bytes by its id, checked
    against it). Raise RecipeError if a line or a piece is damaged, the version unknown, or
    the end line missing."""
    first = next(lines, None)
    if first == SPLICED_HEADER and pieces is not None:
        spelled = marked_lines(chain((first.encode(),), (line.encode() for line in lines)), pieces)
        next(spelled)  # the version 2 header it stands for
        lines = (line.decode("ascii") for line in spelled)
    elif first not in (HEADER, MARKED_HEADER):
        raise RecipeError(
            "not a volkeep recipe of version 1, 2 or 3"
            if first != SPLICED_HEADER
            else "a recipe of version 3 is read with its pieces"
        )
    marked = first != HEADER
    for number, line in enumerate(lines, start=2):
        step = _step(line.rstrip("\n"))
        if step is None or (
            not marked
            and (isinstance(step, MemberMark) or (isinstance(step, EndStep) and not step.sha256))
        ):
            raise RecipeError(f"line {number}: damaged recipe line {line[:80]!r}")
        yield step
        if isinstance(step, EndStep):
            if next(lines, None) is not None:
                raise RecipeError(f"line {number + 1}: a line after the end line")
            return
    raise RecipeError("the recipe is cut short: no end line")


def spliced(
    lines: Iterable[bytes], pieces: Callable[[str], bytes]
) -> Iterator[tuple[bytes, PieceRef | None]]:
    """Given a version 3 recipe's lines after its first (bytes, each with its newline),
    yield the version 2 lines it stands for, in runs: the bytes of each S line with where
    they lie, and every other line but the P lines as it is (with None). `pieces` returns
    a piece's plain bytes by its chunk id, checked against it. Raise RecipeError if a P or
    S line is damaged, an S line names a piece not declared before it or bytes that are
    not whole lines, or a piece is not of its length or holds an end line."""
    declared: list[tuple[str, int]] = []
    kept: OrderedDict[int, bytes] = OrderedDict()  # the pieces fetched last
    for number, line in enumerate(lines, start=2):
        kind = line[:1]
        if kind == b"P":
            match = _PIECE_LINE.fullmatch(line)
            if match is None:
                raise RecipeError(f"line {number}: damaged recipe line {line[:80]!r}")
            declared.append((match[1].decode(), int(match[2])))
            continue
        if kind != b"S":
            yield line, None
            continue
        match = _SPLICE_LINE.fullmatch(line)
        if match is None or int(match[1]) >= len(declared):
            raise RecipeError(f"line {number}: damaged recipe line {line[:80]!r}")
        piece, start, stop = int(match[1]), int(match[2]), int(match[3])
        chunk_id, length = declared[piece]
        data = kept.pop(piece, None)
        if data is None:
            data = _piece(chunk_id, length, pieces)
            if len(kept) >= PIECES_KEPT:
                kept.popitem(last=False)
        kept[piece] = data
        if not (start < stop <= length and data[stop - 1 : stop] == b"\n") or (
            start and data[start - 1 : start] != b"\n"
        ):
            raise RecipeError(f"line {number}: bytes {start}-{stop} of piece {chunk_id} "
                              "are not whole lines")  # fmt: skip
        yield data[start:stop], PieceRef(chunk_id, length, start, stop)


def _piece(chunk_id: str, length: int, pieces: Callable[[str], bytes]) -> bytes:
    data = pieces(chunk_id)
    if len(data) != length:
        raise RecipeError(f"piece {chunk_id} is not of its recorded length")
    if data.startswith(b"T") or b"\nT" in data:
        raise RecipeError(f"piece {chunk_id} holds an end line")
    return data


def marked_lines(lines: Iterable[bytes], pieces: Callable[[str], bytes]) -> Iterator[bytes]:
    """Given a recipe's text as lines (bytes), yield it as the lines of a version 2 recipe
    (for `member_lines`): a version 3 recipe's spelled out from its pieces (read by
    `pieces`), any other as it is. Raise RecipeError as `spliced` does."""
    lines = iter(lines)
    first = next(lines, b"")
    if first != SPLICED_HEADER.encode():
        yield first
        yield from lines
        return
    yield MARKED_HEADER.encode()
    for text, ref in spliced(lines, pieces):
        if ref is None:
            yield text
        else:  # whole lines, each ending with its newline
            for line in text.split(b"\n")[:-1]:
                yield line + b"\n"


def write_spliced(
    lines: Iterable[bytes], pieces: Callable[[str], bytes], out: Sink
) -> list[tuple[int, PieceRef]]:
    """Given a version 3 recipe's lines after its first, write the version 2 recipe they
    stand for into `out` (its first line too); return where each S line's bytes are in it
    (their offset, and the S line), in order. Raise RecipeError as `spliced` does."""
    out.write(MARKED_HEADER.encode())
    offset = len(MARKED_HEADER)
    found: list[tuple[int, PieceRef]] = []
    for text, ref in spliced(lines, pieces):
        if ref is not None:
            found.append((offset, ref))
        out.write(text)
        offset += len(text)
    return found


def _step(line: str) -> Step | None:
    """Given a recipe line (after the first), return its step, or None if it is damaged."""
    if line.startswith("R "):
        try:
            raw = base64.b64decode(line[2:], validate=True)
        except ValueError:
            return None
        return raw if 0 < len(raw) <= RAW_LINE else None
    pattern = _LINES.get(line[:1])
    match = pattern.fullmatch(line) if pattern is not None else None
    if match is None:
        return None
    if line[0] == "Z":
        return int(match[1])
    if line[0] == "C":
        return ChunkStep(match[1], int(match[2]))
    if line[0] == "M":
        return MemberMark(*(None if field == "-" else int(field) for field in match.groups()))
    return EndStep(int(match[1]), None if match[2] == "-" else match[2])


class MemberLines(NamedTuple):
    """A member of a version 2 recipe as its lines, for `RecipeBuilder.take_lines`: where
    they start and stop in the recipe's text (byte offsets, the M line included), the
    member's bytes in the tar, its chunk ids and its M line. The last one is what follows
    the last member (the end-of-archive blocks): `mark` None, `end` the end step, whose
    line is not in it. (A tuple: one per member of the previous archive, at each repeat
    backup; a frozen dataclass took three times as long to make.)"""

    start: int
    stop: int
    tar_size: int
    chunk_ids: tuple[str, ...]
    mark: MemberMark | None
    end: EndStep | None = None


def member_lines(lines: Iterable[bytes]) -> Iterator[MemberLines]:
    """Given a version 2 recipe's text as lines (bytes, each with its newline), yield each
    member's lines, then what follows the last member. The lines are checked as
    `read_recipe` checks them, without decoding the raw bytes. Raise RecipeError if a line
    is damaged, the recipe is not of version 2, or it has no end line."""
    lines = iter(lines)
    first = next(lines, b"")
    if first != MARKED_HEADER.encode():
        raise RecipeError("not a volkeep recipe of version 2")
    start = offset = len(first)
    size = 0
    chunk_ids: list[str] = []
    # A repeat backup checks every line of the previous recipe (four a small file), so each
    # kind of line goes straight to its own pattern, and an R line of a whole block (most
    # are: a header) is checked in place: 9,000 files' lines in 0.07 s of CPU, not 0.09 s.
    chunk_line, zeros_line, mark_line, end_line = (
        _BYTE_LINES[kind].fullmatch for kind in (b"C", b"Z", b"M", b"T")
    )
    for number, line in enumerate(lines, start=2):
        offset += len(line)
        kind = line[:1]
        if kind == b"R":
            if (
                len(line) == _BLOCK_LINE
                and line.translate(None, _BASE64_ALPHABET) == b" =\n"
                and line.startswith(b"R ")
                and line.endswith(b"=\n")
            ):  # "R ", base64 characters only, "=\n": 512 bytes
                size += RAW_LINE
                continue
            raw = _raw_size(line[2:-1]) if line.startswith(b"R ") and line[-1:] == b"\n" else 0
            if not raw:
                raise _damaged(number, line)
            size += raw
        elif line[-1:] != b"\n":
            raise _damaged(number, line)
        elif kind == b"C":
            match = chunk_line(line, 0, len(line) - 1)
            if match is None:
                raise _damaged(number, line)
            chunk_ids.append(match[1].decode())
            size += int(match[2])
        elif kind == b"Z":
            match = zeros_line(line, 0, len(line) - 1)
            if match is None:
                raise _damaged(number, line)
            size += int(match[1])
        elif kind == b"M":
            match = mark_line(line, 0, len(line) - 1)
            if match is None:
                raise _damaged(number, line)
            inode, ctime = match.groups()  # no generator: 0.1 s of CPU on 200,000 members
            mark = MemberMark(
                None if inode == b"-" else int(inode), None if ctime == b"-" else int(ctime)
            )
            yield MemberLines(start, offset, size, tuple(chunk_ids), mark)
            start, size, chunk_ids = offset, 0, []
        else:
            match = end_line(line, 0, len(line) - 1) if kind == b"T" else None
            if match is None:
                raise _damaged(number, line)
            if next(lines, None) is not None:
                raise RecipeError(f"line {number + 1}: a line after the end line")
            end = EndStep(int(match[1]), None if match[2] == b"-" else match[2].decode())
            yield MemberLines(start, offset - len(line), size, tuple(chunk_ids), None, end)
            return
    raise RecipeError("the recipe is cut short: no end line")


def _damaged(number: int, line: bytes) -> RecipeError:
    return RecipeError(f"line {number}: damaged recipe line {line[:80]!r}")


def _raw_size(encoded: bytes) -> int:
    """Given the base64 of an R line, return how many bytes it stands for (0 if it is not
    base64 of 1 to RAW_LINE bytes)."""
    if len(encoded) % 4 or not 0 < len(encoded) <= _RAW_ENCODED:
        return 0
    body = encoded.rstrip(b"=")
    padding = len(encoded) - len(body)
    if padding > 2 or body.translate(None, _BASE64_ALPHABET):
        return 0
    size = len(encoded) // 4 * 3 - padding
    return size if size <= RAW_LINE else 0  # 684 characters without padding: 513 bytes


def without_contents(steps: Iterable[Step], wanted: Callable[[Member], bool]) -> Iterator[Step]:
    """Given a version 2 recipe's steps, yield them with the chunks of every member whose
    content `wanted` refuses (judged on its header, read as a TarScanner reads it) turned
    into as many zero bytes, and the end step without its SHA-256 if any were: the tar
    keeps its shape and every header, and a reader that skips those members' contents
    needs none of their chunks. Raise TarFormatError if a member's headers are not a
    tar's."""
    headers = bytearray()  # the current member's bytes before its content
    keep: bool | None = None  # whether its content is wanted, once its headers are read
    skipped = False
    for step in steps:
        if isinstance(step, ChunkStep):
            if keep is None:
                keep = _header_wanted(headers, wanted)
            if not keep:
                skipped = True
                yield step.length
                continue
        elif keep is None and isinstance(step, bytes):
            headers += step
        elif keep is None and isinstance(step, int):
            headers += bytes(step)
        elif isinstance(step, MemberMark):
            headers, keep = bytearray(), None
        elif isinstance(step, EndStep) and skipped:
            step = EndStep(step.size, None)
        yield step


def _header_wanted(headers: bytes | bytearray, wanted: Callable[[Member], bool]) -> bool:
    """Given a member's bytes up to its content, say whether `wanted` wants its content
    (yes if they do not end in a complete header)."""
    members: list[Member] = []

    def judge(member: Member) -> bool:
        members.append(member)
        return False

    TarScanner(include=judge, digests=False).feed(headers)
    return not members or wanted(members[-1])


def rebuild_tar(steps: Iterator[Step], chunk: Callable[[str], bytes], sink: Sink) -> int:
    """Given a recipe's steps and what returns a chunk's plain bytes by its id, write the
    tar into `sink`; return its size. Raise RecipeError as `tar_pieces` does (what `sink`
    received is then not the archive)."""
    size = 0
    for piece in tar_pieces(steps, chunk):
        sink.write(piece)
        size += len(piece)
    return size


def tar_pieces(
    steps: Iterator[Step],
    chunk: Callable[[str], bytes],
    piece_size: int = 0,
    digested: bool = True,
) -> Iterator[bytes]:
    """Given a recipe's steps and what returns a chunk's plain bytes by its id, yield the
    tar, in pieces of at least `piece_size` bytes (the last one excepted). `digested`: the
    recipe is of version 1, whose end line records the tar's SHA-256 (later versions take
    none, and hashing every byte of the tar in vain cost a restore 0.6 s of CPU a GB).
    Raise RecipeError if a chunk is not of its recorded length, or, after the last piece, if
    the tar's size or SHA-256 is not the one the recipe ends with (what was yielded is then
    not the archive)."""
    sha256 = hashlib.sha256() if digested else None
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    for step in steps:
        if isinstance(step, EndStep):
            next(steps, None)  # the reader checks that nothing follows the end line
            if pending:
                yield b"".join(pending)
            digest = sha256.hexdigest() if sha256 is not None else None
            if size != step.size or step.sha256 not in (None, digest):
                raise RecipeError("the rebuilt tar's size or SHA-256 is not the recipe's")
            return
        if isinstance(step, MemberMark):
            continue
        if isinstance(step, ChunkStep):
            data = chunk(step.chunk_id)
            if len(data) != step.length:
                raise RecipeError(f"chunk {step.chunk_id} is not of its recorded length")
            pieces: Iterable[bytes] = (data,)
        elif isinstance(step, int):
            whole, rest = divmod(step, ZEROS_WRITTEN)
            # a file's padding (under a block) makes no buffer of ZEROS_WRITTEN: one made for
            # each member took 3.5 s of a rebuild of 200,000 small files
            pieces = (bytes(rest),)
            if whole:
                pieces = chain(repeat(bytes(ZEROS_WRITTEN), whole), pieces)
        else:
            pieces = (step,)
        for data in pieces:
            if sha256 is not None:
                sha256.update(data)
            size += len(data)
            pending.append(data)
            pending_size += len(data)
            if pending_size >= piece_size:
                yield b"".join(pending) if len(pending) > 1 else pending[0]
                pending.clear()
                pending_size = 0
    raise RecipeError("the recipe is cut short: no end line")
