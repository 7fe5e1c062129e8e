"""An archive's recipe: its tar, byte for byte, as raw bytes and chunks (docs/format-dedup.md,
"The recipe").

The tar stream is split where `TarScanner` (the one reader of tar streams) says a regular
file's content begins and ends: the content is cut into chunks (`FileChunker`) and stored;
everything else (headers, GNU and PAX extended headers, padding, the end-of-archive blocks
and whatever follows them) is kept in the recipe itself. The recipe is text, one step per
line, so that a short shell script with stock tools can follow it:

    volkeep-recipe 1
    R <base64 of up to 512 bytes>     raw bytes
    Z <count>                         that many zero bytes
    C <chunk id> <length>             a chunk, of that many plain bytes
    T <size> <sha256>                 the end: the tar's size and SHA-256

Memory: a header, up to RAW_FLUSH raw bytes and the chunker's window.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Protocol

from daemon.archive.chunking import ChunkerParameters, FileChunker
from daemon.archive.tarstream import BLOCK, Member, TarScanner

HEADER = "volkeep-recipe 1\n"
RAW_LINE = 512  # raw bytes per R line (a tar block: 684 base64 characters)
RAW_FLUSH = 64 << 10  # raw bytes kept before they are written out
_ZERO_LINE = bytes(RAW_LINE)
ZEROS_WRITTEN = 1 << 20  # zero bytes given to the sink at once
_LINES = {
    "Z": re.compile(r"Z ([1-9][0-9]*)"),
    "C": re.compile(r"C ([0-9a-f]{64}) ([0-9]+)"),
    "T": re.compile(r"T ([0-9]+) ([0-9a-f]{64})"),
}


class RecipeError(ValueError):
    """A recipe that cannot be followed: damaged, cut short, or of an unknown version; or a
    tar rebuilt from it that is not the one it describes."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class RecipeBuilder:
    """Takes a tar stream by `feed`; writes its recipe into `out` and gives each chunk of
    file content to `store`, which stores it and returns its id."""

    def __init__(
        self, parameters: ChunkerParameters, store: Callable[[memoryview], str], out: Sink
    ) -> None:
        self._parameters = parameters
        self._store = store
        self._out = out
        self._scanner = TarScanner(include=self._on_member, digests=False)
        self._sha256 = hashlib.sha256()
        self.size = 0
        self._starting = 0  # the content size of the member whose header just ended
        self._content_due = 0
        self._chunker: FileChunker | None = None
        self._raw = bytearray()
        self._raw_start = 0  # the stream offset of the first byte in _raw
        self._zeros = 0  # zero bytes not yet written as a Z line
        self._lines: list[str] = [HEADER]

    def _on_member(self, member: Member) -> bool:
        self._starting = member.size if member.type == "file" else 0
        return True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the tar stream. Raise TarFormatError if it is not one."""
        view = memoryview(data).cast("B")
        self._sha256.update(view)
        while view:
            if self._content_due:
                piece = view[: self._content_due]
                self._scanner.feed(piece)
                self.size += len(piece)
                self._content(piece)
            else:
                # Up to the end of the current block only: a header that ends in this piece
                # is then known before any of its member's content is fed.
                piece = view[: BLOCK - self.size % BLOCK]
                self._scanner.feed(piece)
                if not self._raw:
                    self._raw_start = self.size
                self._raw += piece
                self.size += len(piece)
                if self._starting:
                    self._begin_content()
                elif len(self._raw) >= RAW_FLUSH:
                    self._flush_raw()
            view = view[len(piece) :]

    def _begin_content(self) -> None:
        self._flush_raw()
        self._content_due, self._starting = self._starting, 0
        self._chunker = FileChunker(self._parameters, self._add_chunk)

    def _content(self, piece: memoryview) -> None:
        assert self._chunker is not None
        self._chunker.feed(piece)
        self._content_due -= len(piece)
        if not self._content_due:
            self._chunker.finish()
            self._chunker = None

    def _add_chunk(self, chunk: memoryview) -> None:
        self._write_zeros()
        self._lines.append(f"C {self._store(chunk)} {len(chunk)}\n")
        if len(self._lines) >= 1024:
            self._write_lines()

    def _flush_raw(self) -> None:
        # Lines end where the stream's blocks do: a header is one R line, the padding
        # after a file's content one Z line.
        raw = memoryview(self._raw)
        self._raw = bytearray()  # a new one: the old one's views may outlive this call
        first = -self._raw_start % RAW_LINE or RAW_LINE  # up to the first block's end
        starts = [0, *range(first, len(raw), RAW_LINE)]
        for start, end in zip(starts, [*starts[1:], len(raw)], strict=True):
            piece = raw[start:end]
            if not piece:
                continue
            if piece == _ZERO_LINE[: len(piece)]:
                self._zeros += len(piece)
            else:
                self._write_zeros()
                self._lines.append(f"R {base64.b64encode(piece).decode()}\n")
        self._write_lines()

    def _write_zeros(self) -> None:
        if self._zeros:
            self._lines.append(f"Z {self._zeros}\n")
            self._zeros = 0

    def _write_lines(self) -> None:
        self._out.write("".join(self._lines).encode())
        self._lines.clear()

    def finish(self) -> None:
        """The tar stream has ended: write the rest of the recipe and its end line. Raise
        TarFormatError if the stream stopped before its end marker."""
        self._scanner.close()
        self._flush_raw()
        self._write_zeros()
        self._lines.append(f"T {self.size} {self.hexdigest()}\n")
        self._write_lines()

    def hexdigest(self) -> str:
        """The SHA-256 of the tar stream fed so far."""
        return self._sha256.hexdigest()


@dataclass(frozen=True)
class ChunkStep:
    chunk_id: str
    length: int


@dataclass(frozen=True)
class EndStep:
    size: int
    sha256: str


Step = bytes | int | ChunkStep | EndStep  # raw bytes, a count of zero bytes, a chunk, the end


def read_recipe(lines: Iterator[str]) -> Iterator[Step]:
    """Given a recipe's lines in clear, yield its steps; the end step comes last. Raise
    RecipeError if a line is damaged, the version unknown, or the end line missing."""
    if next(lines, None) != HEADER:
        raise RecipeError("not a volkeep recipe of version 1")
    for number, line in enumerate(lines, start=2):
        step = _step(line.rstrip("\n"))
        if step is None:
            raise RecipeError(f"line {number}: damaged recipe line {line[:80]!r}")
        yield step
        if isinstance(step, EndStep):
            if next(lines, None) is not None:
                raise RecipeError(f"line {number + 1}: a line after the end line")
            return
    raise RecipeError("the recipe is cut short: no end line")


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
    return EndStep(int(match[1]), match[2])


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
    steps: Iterator[Step], chunk: Callable[[str], bytes], piece_size: int = 0
) -> Iterator[bytes]:
    """Given a recipe's steps and what returns a chunk's plain bytes by its id, yield the
    tar, in pieces of at least `piece_size` bytes (the last one excepted). Raise
    RecipeError if a chunk is not of its recorded length, or, after the last piece, if the
    tar's size or SHA-256 is not the one the recipe ends with (what was yielded is then not
    the archive)."""
    sha256 = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    for step in steps:
        if isinstance(step, EndStep):
            next(steps, None)  # the reader checks that nothing follows the end line
            if pending:
                yield b"".join(pending)
            if (size, sha256.hexdigest()) != (step.size, step.sha256):
                raise RecipeError("the rebuilt tar's size or SHA-256 is not the recipe's")
            return
        if isinstance(step, ChunkStep):
            data = chunk(step.chunk_id)
            if len(data) != step.length:
                raise RecipeError(f"chunk {step.chunk_id} is not of its recorded length")
            pieces: Iterable[bytes] = (data,)
        elif isinstance(step, int):
            whole, rest = divmod(step, ZEROS_WRITTEN)
            pieces = chain(repeat(bytes(ZEROS_WRITTEN), whole), (bytes(rest),))
        else:
            pieces = (step,)
        for data in pieces:
            sha256.update(data)
            size += len(data)
            pending.append(data)
            pending_size += len(data)
            if pending_size >= piece_size:
                yield b"".join(pending) if len(pending) > 1 else pending[0]
                pending.clear()
                pending_size = 0
    raise RecipeError("the recipe is cut short: no end line")
