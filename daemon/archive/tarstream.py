"""A push parser for tar streams: it sees every member as the bytes pass, digests regular
files, and forwards the raw bytes of the members its caller keeps.

It never holds more than one header (and its extended headers) in memory, so memory stays
flat however large the stream. It understands what the helpers' tars write: ustar, GNU long
names and links ('L'/'K') and PAX headers ('x'/'g'). Sparse members are refused: volkeep's
tar flags never produce them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BLOCK = 512
MAX_EXTENDED_HEADER = 1 << 20  # a longer name or PAX header is not a volume, it is an attack

TYPES = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}
EXTENDED = {b"L", b"K", b"x", b"g"}


class TarFormatError(ValueError):
    """The stream is not a tar stream volkeep can read (corrupt, truncated or unsupported)."""


@dataclass(slots=True)
class Member:
    """One file system object of a tar stream, as the manifest records it."""

    path: str  # relative to the volume root, without "./"; "." is the root itself
    type: str  # file, dir, symlink, hardlink, fifo, char, block
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    link: str | None = None  # symlink target as written, or hard link target path
    sha256: str | None = None  # content digest of regular files, set once the data has passed
    xattrs: dict[str, str] | None = None  # extended attributes, when the tar carried them

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime": self.mtime,
            "link": self.link,
            "sha256": self.sha256,
        }
        if self.xattrs:
            entry["xattrs"] = self.xattrs
        return entry

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Member:
        return cls(
            path=entry["path"],
            type=entry["type"],
            mode=entry["mode"],
            uid=entry["uid"],
            gid=entry["gid"],
            size=entry["size"],
            mtime=entry["mtime"],
            link=entry["link"],
            sha256=entry["sha256"],
            xattrs=entry.get("xattrs"),
        )


def normalize_path(name: str) -> str:
    """Given a member name as written in the stream, return it relative to the volume root.

    "./a/b/" becomes "a/b" and "./" becomes ".". Leading "/" and ".." are kept so that the
    safety check can see and refuse them.
    """
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/"):
        return "/" + "/".join(parts)
    return "/".join(parts) or "."


def _decode(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for values too large for octal
        value = int.from_bytes(field_bytes[1:], "big")
        return value - (1 << (8 * len(field_bytes) - 8)) if field_bytes[0] == 0xFF else value
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number field {field_bytes!r} in tar header") from None


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position)
        if space < 0:
            raise TarFormatError("malformed PAX header")
        length = int(data[position:space])
        record = data[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == unsigned


Include = Callable[[Member], bool]
Emit = Callable[[bytes | bytearray | memoryview], object]


class TarScanner:
    """Feed it a tar stream piece by piece; it reports members and forwards kept bytes.

    `include(member)` is called once each member's header is complete and decides whether
    its bytes are forwarded to `emit`; `done(member)` is called for each kept member once
    its data has passed
    (with `sha256` set for regular files, unless `digests` is off). `include` may raise to
    stop the stream before the member's bytes are forwarded.
    """

    def __init__(
        self,
        emit: Emit | None = None,
        include: Include | None = None,
        done: Callable[[Member], None] | None = None,
        *,
        digests: bool = True,
    ) -> None:
        self._digests = digests
        self._emit = emit
        self._include = include
        self._done = done
        self._header = bytearray()  # the block being assembled
        self._pending = bytearray()  # raw extended headers belonging to the next member
        self._extended: dict[str, str] = {}
        self._global: dict[str, str] = {}
        self._extended_type: bytes | None = None
        self._extended_data = bytearray()
        self._remaining = 0  # data bytes of the current member (or extended header) still due
        self._padding = 0
        self._member: Member | None = None
        self._keep = True
        self._digest: Any = None
        self._zero_blocks = 0
        self.ended = False
        self.offset = 0  # bytes of the stream seen so far

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.offset += len(view)
        while view:
            if self.ended:
                return  # whatever follows the end marker is record padding
            if self._remaining:
                view = self._take_data(view)
            elif self._padding:
                take = min(self._padding, len(view))
                if self._keep and self._extended_type is None:
                    self._out(view[:take])
                elif self._extended_type is not None:
                    self._pending += view[:take]
                self._padding -= take
                view = view[take:]
                if not self._padding:
                    self._end_of_data()
            else:
                take = min(BLOCK - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._on_header(block)

    def close(self) -> None:
        """Raise TarFormatError unless the stream ended where a tar stream may end."""
        if not self.ended:
            raise TarFormatError(
                f"truncated tar stream: it stops after {self.offset} bytes without an end marker"
            )

    def _out(self, data: bytes | bytearray | memoryview) -> None:
        if self._emit is not None:
            self._emit(data)

    def _take_data(self, view: memoryview) -> memoryview:
        take = min(self._remaining, len(view))
        piece = view[:take]
        if self._extended_type is not None:
            self._extended_data += piece
            self._pending += piece
        else:
            if self._digest is not None:
                self._digest.update(piece)
            if self._keep:
                self._out(piece)
        self._remaining -= take
        if not self._remaining and not self._padding:
            self._end_of_data()
        return view[take:]

    def _on_header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            if self._pending:
                raise TarFormatError("extended header followed by an end marker")
            self._zero_blocks += 1
            self._out(block)
            if self._zero_blocks == 2:
                self.ended = True
            return
        if self._zero_blocks:
            raise TarFormatError(f"data after a zero block at offset {self.offset}")
        if not _checksum_ok(block):
            raise TarFormatError(f"bad tar header checksum near offset {self.offset}")
        typeflag = block[156:157]
        size = _number(block[124:136])
        if typeflag in EXTENDED:
            if size > MAX_EXTENDED_HEADER:
                raise TarFormatError(f"extended tar header of {size} bytes")
            self._extended_type = typeflag
            self._pending += block
            self._start_data(size)
            return
        member = self._member_from(block, typeflag, size)
        self._member = member
        self._keep = self._include(member) if self._include else True
        if self._keep:
            if self._pending:
                self._out(self._pending)
            self._out(block)
        self._pending.clear()
        self._extended = {}
        wanted = self._keep and self._digests and member.type == "file"
        self._digest = hashlib.sha256() if wanted else None
        # Like POSIX readers, only regular files (and unknown types) carry data blocks.
        self._start_data(member.size)

    def _start_data(self, size: int) -> None:
        self._remaining = size
        self._padding = -size % BLOCK
        if not size:
            self._end_of_data()

    def _end_of_data(self) -> None:
        if self._extended_type is not None:
            self._on_extended(self._extended_type, bytes(self._extended_data))
            self._extended_type = None
            self._extended_data.clear()
            return
        member = self._member
        if member is None:
            return
        if self._digest is not None:
            member.sha256 = self._digest.hexdigest()
        self._member = None
        self._digest = None
        if self._keep and self._done is not None:
            self._done(member)

    def _on_extended(self, typeflag: bytes, data: bytes) -> None:
        if typeflag == b"L":
            self._extended["path"] = _decode(data)
        elif typeflag == b"K":
            self._extended["linkpath"] = _decode(data)
        elif typeflag == b"x":
            self._extended.update(_parse_pax(data))
        else:  # a global header applies to every member that follows; forward it as it is
            self._global.update(_parse_pax(data))
            self._out(self._pending)
            self._pending.clear()

    def _member_from(self, block: bytes, typeflag: bytes, size: int) -> Member:
        records = {**self._global, **self._extended}
        if any(key.startswith("GNU.sparse.") for key in records) or typeflag == b"S":
            raise TarFormatError("sparse tar members are not supported")
        if typeflag not in TYPES:
            raise TarFormatError(f"unsupported tar member type {typeflag!r}")
        name = _decode(block[0:100])
        if block[257:263] == b"ustar\0" and block[345] != 0:
            name = _decode(block[345:500]) + "/" + name
        name = records.get("path", name)
        link = records.get("linkpath", _decode(block[157:257]))
        kind = TYPES[typeflag]
        if kind == "file" and name.endswith("/"):
            kind = "dir"  # pre-POSIX tars mark directories by a trailing slash only
        if kind == "hardlink":
            link = normalize_path(link)
        return Member(
            path=normalize_path(name),
            type=kind,
            mode=_number(block[100:108]) & 0o7777,
            uid=int(records.get("uid", _number(block[108:116]))),
            gid=int(records.get("gid", _number(block[116:124]))),
            size=int(records.get("size", size)) if kind == "file" else 0,
            mtime=_mtime(records.get("mtime"), _number(block[136:148])),
            link=link if kind in ("symlink", "hardlink") else None,
            xattrs={
                key.removeprefix("SCHILY.xattr."): value
                for key, value in records.items()
                if key.startswith("SCHILY.xattr.")
            }
            or None,
        )


def _mtime(pax_value: str | None, header_value: int) -> float:
    if pax_value is None:
        return header_value
    value = float(pax_value)
    return int(value) if value.is_integer() else value
