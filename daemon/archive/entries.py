"""The manifest's entries, one record per object in stream order, in a compact encoding.

`volkeep-entries-1` is what the manifest's entries section holds once decompressed (and
decrypted). Each record is:

- a flags byte: the type (bits 0-2: file, dir, symlink, hardlink, fifo, char, block), then
  whether a content digest (bit 3), a link target (bit 4), extended attributes (bit 5) and
  a fraction of a second in the mtime (bit 6) follow, and whether the numbers are wide
  (bit 7);
- the path, front-coded: how many leading bytes it shares with the previous record's path,
  how many follow, then those bytes (UTF-8, undecodable bytes kept as they came);
- mode, uid, gid, size, and the whole seconds of the mtime as a difference from the previous
  record's. Normally in one fixed-width little-endian struct (`<BHHHIIQq` with the flags);
  with the wide bit, as LEB128 varints (uid, gid and the difference zigzag-encoded), for
  values the struct cannot hold;
- the fraction of the mtime: a byte n, then n decimal digits (the mtime is exactly
  `float("<seconds>.<digits>")`); n = 0: an IEEE 754 double of the whole mtime follows;
- the link target: a varint length and its bytes;
- the extended attributes: a varint count, then each name and value as a varint length
  and its bytes;
- the SHA-256 of a regular file's content: 32 bytes.

Memory is one record at a time either way. Compressed with zstd this costs about 33 bytes
per small file, the digest's 32 bytes being incompressible.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from daemon.archive.tarstream import Member

ENCODING = "volkeep-entries-1"
TYPES = ("file", "dir", "symlink", "hardlink", "fifo", "char", "block")
_CODES = {name: code for code, name in enumerate(TYPES)}
DIGEST, LINK, XATTRS, FRACTION, WIDE = 0x08, 0x10, 0x20, 0x40, 0x80
_FIXED = struct.Struct("<BHHHIIQq")
_DOUBLE = struct.Struct("<d")
_INT64 = 1 << 63
READ_SIZE = 256 << 10

Read = Callable[[int], bytes]


class EntryFormatError(ValueError):
    """The entries section is not a `volkeep-entries-1` stream."""


def _varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


def _shared(path: bytes, previous: bytes) -> int:
    """Return the length of the longest common prefix (slices compare in C)."""
    low, high = 0, min(len(path), len(previous))
    if path[:high] == previous[:high]:
        return high
    while low < high:
        middle = (low + high + 1) // 2
        if path[:middle] == previous[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _split_mtime(mtime: float) -> tuple[int, bytes | None]:
    """Given an mtime, return its whole seconds and, if it has a fraction, how to write it."""
    if isinstance(mtime, int) or mtime.is_integer():
        return int(mtime), None
    text = repr(mtime)
    whole, dot, digits = text.partition(".")
    if mtime > 0 and dot and digits.isdigit() and len(digits) < 256:
        return int(whole), bytes([len(digits)]) + digits.encode()
    return int(mtime), b"\0" + _DOUBLE.pack(mtime)


class EntryEncoder:
    """Encodes members, in stream order, as `volkeep-entries-1` records."""

    def __init__(self) -> None:
        self._previous_path = b""
        self._previous_seconds = 0

    def encode(self, member: Member, out: bytearray) -> None:
        """Append the record of `member` to `out`. Raise ValueError for a member the encoding
        cannot hold (an unknown type, a digest that is not SHA-256 in hex)."""
        path = member.path.encode("utf-8", "surrogateescape")
        shared = _shared(path, self._previous_path)
        seconds, fraction = _split_mtime(member.mtime)
        flags = _CODES[member.type]
        if member.sha256 is not None:
            flags |= DIGEST
        if member.link is not None:
            flags |= LINK
        if member.xattrs:
            flags |= XATTRS
        if fraction is not None:
            flags |= FRACTION
        delta = seconds - self._previous_seconds
        suffix = len(path) - shared
        mode, uid, gid, size = member.mode, member.uid, member.gid, member.size
        if (
            suffix < 1 << 16
            and shared < 1 << 16
            and 0 <= mode < 1 << 16
            and 0 <= uid < 1 << 32
            and 0 <= gid < 1 << 32
            and 0 <= size < 1 << 64
            and -_INT64 <= delta < _INT64
        ):
            out += _FIXED.pack(flags, shared, suffix, mode, uid, gid, size, delta)
        else:
            out.append(flags | WIDE)
            for number in (shared, suffix, mode, _zigzag(uid), _zigzag(gid), size, _zigzag(delta)):
                _varint(number, out)
        out += path[shared:]
        if fraction is not None:
            out += fraction
        if member.link is not None:
            _bytes(member.link, out)
        if member.xattrs:
            _varint(len(member.xattrs), out)
            for name, value in member.xattrs.items():
                _bytes(name, out)
                _bytes(value, out)
        if member.sha256 is not None:
            digest = bytes.fromhex(member.sha256)
            if len(digest) != 32:
                raise ValueError(f"{member.path!r}: a content digest that is not SHA-256")
            out += digest
        self._previous_path = path
        self._previous_seconds = seconds


def _bytes(text: str, out: bytearray) -> None:
    raw = text.encode("utf-8", "surrogateescape")
    _varint(len(raw), out)
    out += raw


class _Buffer:
    """The decoded stream's bytes, read on demand, with a position in them."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self.data = b""
        self.position = 0

    def need(self, count: int) -> None:
        """Make sure `count` bytes follow the position. Raise EntryFormatError at the end."""
        while len(self.data) - self.position < count:
            more = self._read(max(READ_SIZE, count))
            if not more:
                raise EntryFormatError("the entries end in the middle of a record")
            self.data = self.data[self.position :] + more
            self.position = 0

    def at_end(self) -> bool:
        if self.position < len(self.data):
            return False
        self.data, self.position = self._read(READ_SIZE), 0
        return not self.data

    def take(self, count: int) -> bytes:
        self.need(count)
        start = self.position
        self.position += count
        return self.data[start : self.position]

    def varint(self) -> int:
        value = shift = 0
        while True:
            self.need(1)
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 70:
                raise EntryFormatError("a number longer than 64 bits")

    def text(self) -> str:
        return self.take(self.varint()).decode("utf-8", "surrogateescape")


def decode_entries(read: Read) -> Iterator[Member]:
    """Given the reader of a decoded entries section (`read(size)`, b"" at the end), yield
    its members in order. Raise EntryFormatError if it is not `volkeep-entries-1`."""
    buffer = _Buffer(read)
    previous_path = b""
    seconds = 0
    fixed = _FIXED.size
    unpack = _FIXED.unpack_from
    while not buffer.at_end():
        flags = buffer.data[buffer.position]
        if flags & WIDE:
            buffer.position += 1
            shared, suffix, mode = buffer.varint(), buffer.varint(), buffer.varint()
            uid, gid = _unzigzag(buffer.varint()), _unzigzag(buffer.varint())
            size, delta = buffer.varint(), _unzigzag(buffer.varint())
        else:
            buffer.need(fixed)
            _, shared, suffix, mode, uid, gid, size, delta = unpack(buffer.data, buffer.position)
            buffer.position += fixed
        code = flags & 0x07
        if code >= len(TYPES) or shared > len(previous_path):
            raise EntryFormatError(f"a record that is not one (flags {flags:#04x})")
        path = previous_path[:shared] + buffer.take(suffix)
        seconds += delta
        mtime: float = seconds
        if flags & FRACTION:
            digits = buffer.take(1)[0]
            if digits:
                mtime = float(f"{seconds}.{buffer.take(digits).decode()}")
            else:
                mtime = _DOUBLE.unpack(buffer.take(_DOUBLE.size))[0]
        link = buffer.text() if flags & LINK else None
        xattrs = None
        if flags & XATTRS:
            xattrs = {buffer.text(): buffer.text() for _ in range(buffer.varint())}
        digest = buffer.take(32).hex() if flags & DIGEST else None
        yield Member(
            path.decode("utf-8", "surrogateescape"),
            TYPES[code],
            mode,
            uid,
            gid,
            size,
            mtime,
            link,
            digest,
            xattrs,
        )
        previous_path = path
