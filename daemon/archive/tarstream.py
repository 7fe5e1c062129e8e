"""A push parser for tar streams: it sees every member as the bytes pass, digests regular
files, and forwards the raw bytes of the members its caller keeps.

It never holds more than one header (and its extended headers) in memory, so memory stays
flat however large the stream. It understands what the helpers' tars write: ustar, GNU long
names and links ('L'/'K') and PAX headers ('x'; global 'g' headers are checked and ignored,
as the Docker Engine ignores them). Sparse members are refused: volkeep's tar flags never
produce them.

A restore hands the archive to the Docker Engine, whose extractor is Go's archive/tar. The
scanner reads a stream exactly as Go does or refuses it, so that the path guard (SPEC §5.5)
and the manifest see the members a restore writes, no more and no other. Where tar readers
disagree on what some bytes mean (Go, Python's tarfile, GNU tar: a prefix field in a GNU
header, two long names for one member, a regular file with a directory's name...), the
stream is refused rather than read one way; the tars of the helpers never write them.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

BLOCK = 512
MAX_EXTENDED_HEADER = 1 << 20  # a longer name or PAX header is not a volume, it is an attack
ZERO_BLOCK = bytes(BLOCK)

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


# A numeric header field as Go's archive/tar (the Engine's extractor) and Python's tarfile
# both read it, to the same value: octal digits between spaces, then spaces or NULs.
_OCTAL = re.compile(rb" *([0-7]*)[ \0]*")
_PAX_INTEGER = re.compile(r"[+-]?[0-9]+")  # Go's strconv.ParseInt(value, 10, 64)
_PAX_TIME = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?")  # Go's parsePAXTime
_INT64 = 1 << 63
_NAME_KEYS = ("path", "linkpath", "uname", "gname")  # Go refuses a NUL in their values
_HEADER_NUMBERS = (
    ("mode", 100, 108),
    ("uid", 108, 116),
    ("gid", 116, 124),
    ("size", 124, 136),
    ("mtime", 136, 148),
)
_DEVICE_NUMBERS = (("devmajor", 329, 337), ("devminor", 337, 345))
_EXTENDED_NAMES = {
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"x": "PAX header",
    b"g": "global PAX header",
}


def _number(field_bytes: bytes) -> int | None:
    """Given a numeric header field, return its value, or None if it is not a number."""
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for values too large for octal
        if field_bytes[0] not in (0x80, 0xFF):
            return None  # Go would read the marker byte's other bits, tarfile refuses them
        value = int.from_bytes(field_bytes[1:], "big")
        if field_bytes[0] == 0xFF:
            value -= 1 << (8 * len(field_bytes) - 8)
        return value if -_INT64 <= value < _INT64 else None  # Go's int64, as Go checks
    match = _OCTAL.fullmatch(field_bytes)
    if match is None:
        return None
    return int(match[1], 8) if match[1] else 0


def _checksum_ok(block: bytes) -> bool:
    """Say whether the header's checksum is right, summed unsigned or (as some old tars did,
    and as Go and tarfile accept) signed."""
    stored = _OCTAL.fullmatch(block[148:156])
    if stored is None:
        return False
    value = int(stored[1] or b"0", 8)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if value == unsigned:
        return True
    high = sum(1 for byte in block[:148] + block[156:] if byte & 0x80)
    return value == unsigned - 256 * high


# The header GNU tar, busybox and tarfile write for nearly every member: octal numbers
# ending in NUL, the checksum as "%06o\0 ", ustar or GNU magic, no prefix. One match reads
# it; any other header takes the careful way (_checksum_ok and _read_header).
_PLAIN = re.compile(
    rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 "
    rb".{101}ustar(?:\x0000|  \0).{64}(?:[0-7]{7}\0|\0{8}){2}\0",
    re.DOTALL,
)


def _plain_header(block: bytes) -> re.Match[bytes] | None:
    """Given a header block, return the match of its numbers if it is a plain one with a
    right checksum, else None."""
    plain = _PLAIN.match(block, 100)
    if plain is None or block[508:512] == b"tar\0":  # a star header, read the careful way
        return None
    # The unsigned sum of the bytes, the checksum field counted as spaces. Adler-32's low
    # half is 1 + the sum of the bytes, exact for 256 bytes (at most 65280 < 65521), and
    # much faster than sum() over a bytes object.
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    unsigned = total - sum(block[148:156]) + 8 * 32
    return plain if int(plain[6], 8) == unsigned else None


def _read_header(block: bytes, at: int) -> tuple[str, list[int]]:
    """Given a header block whose checksum is right, return its full name and its mode,
    uid, gid, size and mtime. Raise TarFormatError, naming the member, for what Go's
    archive/tar refuses or reads otherwise than tarfile."""
    name = _decode(block[0:100])
    where = f"member {name!r} (header at offset {at})"
    numbers = []
    for field, start, end in _HEADER_NUMBERS:
        value = _number(block[start:end])
        if value is None or (value < 0 and field == "size"):
            raise TarFormatError(f"{where}: bad {field} field {block[start:end]!r}")
        numbers.append(value)
    magic = block[257:265]
    if magic.startswith(b"ustar\0"):  # POSIX ustar or pax; Go does not check the version
        if block[508:512] == b"tar\0":
            raise TarFormatError(f"{where}: a star header, which tar readers read differently")
        if block[345]:
            name = _decode(block[345:500]) + "/" + name
    elif block[345]:
        # In a GNU header those bytes are times, Go reads no prefix there (nor in a
        # pre-POSIX one) and tarfile does: refused rather than read one way.
        raise TarFormatError(f"{where}: bytes in the prefix field of a non-POSIX header")
    if magic.startswith(b"ustar"):  # Go checks the device numbers of ustar and GNU headers
        for field, start, end in _DEVICE_NUMBERS:
            if _number(block[start:end]) is None:
                raise TarFormatError(f"{where}: bad {field} field {block[start:end]!r}")
    return name, numbers


def _parse_pax(data: bytes) -> dict[str, str]:
    """Given the data of a PAX header, return its records as Go's archive/tar reads them:
    "<length> <key>=<value>\\n" from the first byte to the last. Raise ValueError naming
    what is wrong otherwise."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        length_field = data[position:space] if space > position else b""
        if not length_field.isdigit():
            raise ValueError(f"record length {length_field!r} at byte {position} is not a number")
        end = position + int(length_field)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise ValueError(f"record at byte {position} does not end where its length says")
        raw_key, equals, raw_value = data[space + 1 : end - 1].partition(b"=")
        if not raw_key or not equals or b"\0" in raw_key:
            raise ValueError(f"record at byte {position} has no key")
        key = raw_key.decode("utf-8", "surrogateescape")
        if key in _NAME_KEYS and b"\0" in raw_value:
            raise ValueError(f"record {key!r} holds a NUL")
        if key.startswith("GNU.sparse."):
            raise ValueError("sparse tar members are not supported")
        records[key] = raw_value.decode("utf-8", "surrogateescape")
        position = end
    return records


def _pax_integer(value: str) -> int | None:
    if _PAX_INTEGER.fullmatch(value) is None or not -_INT64 <= int(value) < _INT64:
        return None
    return int(value)


def _pax_time(value: str) -> float | None:
    if _PAX_TIME.fullmatch(value) is None or not -_INT64 <= int(value.partition(".")[0]) < _INT64:
        return None
    number = float(value)
    return int(number) if number.is_integer() else number


_PAX_NUMBERS: dict[str, Callable[[str], float | None]] = {
    "uid": _pax_integer,
    "gid": _pax_integer,
    "size": _pax_integer,
    "mtime": _pax_time,
    "atime": _pax_time,  # read only to be refused when Go refuses them
    "ctime": _pax_time,
}


def _pax_numbers(records: dict[str, str], name: str) -> dict[str, float]:
    """Given a member's PAX records, return the numbers among them (uid, gid and size as
    ints). An empty one is left out: Go's archive/tar keeps the header's value then. Raise
    TarFormatError naming the member for one that is not a number."""
    numbers: dict[str, float] = {}
    for key, value in records.items():
        parse = _PAX_NUMBERS.get(key)
        if parse is not None and value:
            number = parse(value)
            if number is None:
                raise TarFormatError(f"member {name!r}: PAX {key} {value!r} is not a number")
            numbers[key] = number
    return numbers


Include = Callable[[Member], bool]


class ContentDigest(Protocol):
    """What digests a regular file's content as it passes (hashlib's objects are)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


Emit = Callable[[bytes | bytearray | memoryview], object]


class TarScanner:
    """Feed it a tar stream piece by piece; it reports members and forwards kept bytes.

    `include(member)` is called once each member's header is complete and decides whether
    its bytes are forwarded to `emit`; `done(member)` is called for each kept member once
    its data has passed (with `sha256` set for regular files, unless `digests` is off: the
    `hexdigest()` of what `digest()` returns, fed the content; by default SHA-256).
    `include` may raise to stop the stream before the member's bytes are forwarded.
    With `content`, a kept regular file's data goes there instead of to `emit` (headers,
    extended headers, padding and the end blocks still go to `emit`): a reader that treats
    them apart needs no parse of its own. Bytearrays given to `emit` (or `content`) are
    reused afterwards: it must copy what it keeps of them.
    """

    def __init__(
        self,
        emit: Emit | None = None,
        include: Include | None = None,
        done: Callable[[Member], None] | None = None,
        *,
        digests: bool = True,
        digest: Callable[[], ContentDigest] = hashlib.sha256,
        content: Emit | None = None,
    ) -> None:
        self._digests = digests
        self._new_digest = digest
        self._emit = emit
        self._content = content
        self._include = include
        self._done = done
        self._header = bytearray()  # the block being assembled
        self._pending = bytearray()  # raw extended headers belonging to the next member
        self._long_name: str | None = None  # what the extended headers say of the next member
        self._long_link: str | None = None
        self._pax: dict[str, str] | None = None
        self._extended_type: bytes | None = None  # the extended header being read, if any
        self._extended_data = bytearray()
        self._extended_name = ""  # its own name and offset, for messages
        self._extended_at = 0
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
                view = self._take_padding(view)
            elif not self._header and len(view) >= BLOCK:  # a whole header in this piece
                block = bytes(view[:BLOCK])
                view = view[BLOCK:]
                self._on_header(block, self.offset - len(view) - BLOCK)
            else:
                take = min(BLOCK - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._on_header(block, self.offset - len(view) - BLOCK)

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
            if self._keep and self._content is not None:
                self._content(piece)
            elif self._keep:
                self._out(piece)
        self._remaining -= take
        if not self._remaining and not self._padding:
            self._end_of_data()
        return view[take:]

    def _take_padding(self, view: memoryview) -> memoryview:
        take = min(self._padding, len(view))
        piece = view[:take]
        if self._extended_type is not None:
            # tarfile reads a PAX header on into its padding, Go does not: only zeros there.
            if piece.tobytes().count(0) != take:
                raise TarFormatError(
                    f"{self._extended_description()}: bytes other than zeros after its data"
                )
            self._pending += piece
        elif self._keep:
            self._out(piece)
        self._padding -= take
        if not self._padding:
            self._end_of_data()
        return view[take:]

    def _on_header(self, block: bytes, at: int) -> None:
        if block == ZERO_BLOCK:
            if self._pending:
                raise TarFormatError(
                    f"{self._extended_description()}: followed by an end marker, not a member"
                )
            self._zero_blocks += 1
            self._out(block)
            if self._zero_blocks == 2:
                self.ended = True
            return
        if self._zero_blocks:
            raise TarFormatError(f"data after a zero block, at offset {at}")
        plain = _plain_header(block)
        if plain is not None:
            name = _decode(block[0:100])
            size = int(plain[4], 8)
        elif _checksum_ok(block):
            name, numbers = _read_header(block, at)
            size = numbers[3]
        else:
            raise TarFormatError(f"bad tar header checksum at offset {at}")
        typeflag = block[156:157]
        if typeflag in EXTENDED:
            self._start_extended(typeflag, name, size, block, at)
            return
        if plain is not None:
            numbers = [int(plain[1], 8), int(plain[2], 8), int(plain[3], 8), size, int(plain[5], 8)]
        member = self._member_from(block, typeflag, name, numbers)
        self._member = member
        self._keep = self._include(member) if self._include else True
        if self._keep:
            if self._pending:
                self._out(self._pending)
            self._out(block)
        self._pending.clear()
        self._long_name = self._long_link = self._pax = None
        wanted = self._keep and self._digests and member.type == "file"
        self._digest = self._new_digest() if wanted else None
        # Like POSIX readers, only regular files (and unknown types) carry data blocks.
        self._start_data(member.size)

    def _start_extended(self, typeflag: bytes, name: str, size: int, block: bytes, at: int) -> None:
        self._extended_type = typeflag
        self._extended_name, self._extended_at = name, at
        problem = None
        if size > MAX_EXTENDED_HEADER:
            problem = f"{size} bytes long"
        elif typeflag == b"g" and self._pending:
            # Go drops the extended headers before a global one, tarfile applies them to the
            # member after it: refused rather than read one way.
            problem = "between an extended header and its member"
        elif (
            (typeflag == b"x" and self._pax is not None)
            or (typeflag == b"L" and self._long_name is not None)
            or (typeflag == b"K" and self._long_link is not None)
        ):
            problem = "a second one for the same member"  # Go keeps the last, tarfile the first
        if problem is not None:
            raise TarFormatError(f"{self._extended_description()}: {problem}")
        self._pending += block
        self._start_data(size)

    def _extended_description(self) -> str:
        what = _EXTENDED_NAMES.get(self._extended_type or b"", "extended header")
        return f"{what} {self._extended_name!r} at offset {self._extended_at}"

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
        if typeflag in (b"L", b"K"):
            text = _decode(data)
            if not text:  # Go ignores an empty one, tarfile does not
                raise TarFormatError(f"{self._extended_description()}: empty")
            if typeflag == b"L":
                self._long_name = text
            else:
                self._long_link = text
        elif typeflag == b"x":
            self._pax = self._pax_records(data)
        else:
            # A global header is checked and ignored: Go's archive/tar hands it over as a
            # member of its own and the Engine's extractor skips it, so restoring never
            # applies its records to anything. It is forwarded as it came.
            self._pax_records(data)
            self._out(self._pending)
            self._pending.clear()

    def _pax_records(self, data: bytes) -> dict[str, str]:
        try:
            return _parse_pax(data)
        except ValueError as problem:
            raise TarFormatError(f"{self._extended_description()}: {problem}") from None

    def _member_from(self, block: bytes, typeflag: bytes, name: str, numbers: list[int]) -> Member:
        """Given a member's header and the extended headers before it, return the member as
        Go's archive/tar reads it; raise TarFormatError where Go refuses it or where tar
        readers disagree."""
        kind = TYPES.get(typeflag)
        if kind is None:
            if typeflag == b"S":
                raise TarFormatError(f"member {name!r}: sparse tar members are not supported")
            raise TarFormatError(f"member {name!r}: unsupported tar member type {typeflag!r}")
        records = self._pax or {}
        header_name = name
        name = _full_name(name, self._long_name, records, "path")
        link = _full_name(_decode(block[157:257]), self._long_link, records, "linkpath")
        if kind == "file" and name.endswith("/"):
            # Pre-POSIX tars mark directories by a trailing slash and type NUL: Go's
            # archive/tar reads those as directories without data. It reads a type 0 (or 7)
            # member named so as a regular file with data, GNU tar as a directory: readers
            # that disagree on where the next header starts are not followed, but refused.
            if typeflag != b"\0":
                raise TarFormatError(
                    f"member {name!r}: a regular file (type {typeflag.decode()}) with a "
                    "directory's name, which tar readers do not read alike"
                )
            kind = "dir"
        if typeflag == b"\0" and name.endswith("/") != header_name.endswith("/"):
            # Go decides by the long name, tarfile by the header's own: refused.
            raise TarFormatError(
                f"member {name!r}: its long name and its header name {header_name!r} differ "
                "on being a directory"
            )
        if kind == "hardlink":
            link = normalize_path(link)
        mode, uid, gid, size, header_mtime = numbers
        mtime: float = header_mtime
        if records:
            if records.get("size") == "":  # Go keeps the header's size, tarfile reads 0
                raise TarFormatError(f"member {name!r}: empty PAX size")
            pax_numbers = _pax_numbers(records, name)
            uid, gid = int(pax_numbers.get("uid", uid)), int(pax_numbers.get("gid", gid))
            size = int(pax_numbers.get("size", size))
            if size < 0:
                raise TarFormatError(f"member {name!r}: PAX size {records['size']!r} is negative")
            mtime = pax_numbers.get("mtime", mtime)
        return Member(
            path=normalize_path(name),
            type=kind,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            size=size if kind == "file" else 0,
            mtime=mtime,
            link=link if kind in ("symlink", "hardlink") else None,
            xattrs={
                key.removeprefix("SCHILY.xattr."): value
                for key, value in records.items()
                if key.startswith("SCHILY.xattr.")
            }
            or None,
        )


def _full_name(header_value: str, long_value: str | None, records: dict[str, str], key: str) -> str:
    """Return a member's name (or link name) from its GNU long name, its PAX record or its
    header. Both long forms at once are refused: Go ranks the GNU one first, tarfile the one
    that comes first; so is an empty PAX one (Go ignores it, tarfile does not)."""
    record = records.get(key)
    if record is not None and (long_value is not None or not record):
        problem = "both a GNU long name and a PAX" if record else "an empty PAX"
        raise TarFormatError(f"member {header_value!r}: {problem} {key}")
    if long_value is not None:
        return long_value
    return header_value if record is None else record
