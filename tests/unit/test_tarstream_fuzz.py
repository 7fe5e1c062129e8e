"""The tar scanner against Python's tarfile, on generated archives and damaged copies of them.

Whatever the bytes, the scanner ends (no hang), raises nothing but TarFormatError (and
UnsafeMember from a guard), gives the same result however the stream is cut into pieces,
and, when both it and tarfile read a stream to its end marker, lists the same members.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.archive import tarstream
from daemon.archive.safety import PathGuard, UnsafeMember
from daemon.archive.tarstream import BLOCK, TarFormatError, TarScanner, normalize_path

FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
}
# Where a damaged byte does most harm: the numbers, checksum, type, link name, magic,
# device numbers and prefix of a header, and the start of what follows it.
HEADER_SPOTS = [0, 1, 99, 100, 107, 108, 123, 134, 135, 136, 148, 155, 156, 157]
HEADER_SPOTS += [256, 257, 262, 263, 264, 329, 337, 345, 346, 499, 500, 508, 512, 513]
NASTY_BYTES = b"\x00 /.0123456789=\n\x80\xff\x05xgLKS"

# A hang fails by pytest-timeout (a deadline cannot stop a loop); a slow example by the
# deadline. The example counts keep the whole file to about ten seconds.
FUZZ = settings(
    deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# One alphabet for every text drawn: Hypothesis's shrinker trips over texts of different
# alphabets in one test. Digits, dots and dashes make numbers, or nearly.
ALPHABET = "ab/.ü-0123456789 x"
names = st.text(alphabet=ALPHABET, min_size=1, max_size=24) | st.builds(
    lambda head, tail: head + "/" + tail,
    st.text(alphabet=ALPHABET, min_size=60, max_size=120),
    st.text(alphabet=ALPHABET, min_size=1, max_size=60),
)
pax_values = st.text(alphabet=ALPHABET, max_size=6)
pax_records = st.dictionaries(
    st.sampled_from(["comment", "uname", "SCHILY.xattr.user.k", "mtime"]),
    st.integers(0, 2**33).map(str),
    max_size=3,
)
nasty_pax_records = st.dictionaries(
    st.sampled_from(["comment", "uname", "SCHILY.xattr.user.k", "path", "linkpath", "size"])
    | st.sampled_from(["uid", "gid", "mtime", "atime"]),
    pax_values,
    max_size=3,
)
global_records = st.dictionaries(
    st.sampled_from(["comment", "uname", "gname", "uid", "mtime"]), pax_values, max_size=2
)


def _tar(*contents: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for index, content in enumerate(contents):
            member = tarfile.TarInfo(f"f{index}")
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


FALLBACK = _tar(b"x" * 700, b"")


@st.composite
def members(draw: st.DrawFn, fmt: int, nasty: bool) -> tuple[tarfile.TarInfo, bytes | None]:
    kind = draw(st.sampled_from(list(KINDS)))
    name = draw(names)
    if kind != tarfile.DIRTYPE and not nasty:
        name = name.rstrip("/") or "f"  # a regular file named "x/" is refused, rightly
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mode = draw(st.integers(0, 0o7777))
    big = fmt != tarfile.USTAR_FORMAT
    member.uid = draw(st.integers(0, 10**9 if big else 0o7777777))
    member.gid = draw(st.integers(0, 0o7777777))
    member.mtime = draw(st.integers(0, 2**33 if big else 8**11 - 1))
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        member.linkname = draw(names)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        member.devmajor, member.devminor = draw(st.integers(0, 300)), draw(st.integers(0, 300))
    if fmt == tarfile.PAX_FORMAT:
        nasty_records = nasty and draw(st.sampled_from([False, False, True]))
        member.pax_headers = draw(nasty_pax_records if nasty_records else pax_records)
    content = draw(st.binary(max_size=1500)) if kind == tarfile.REGTYPE else None
    return member, content


@st.composite
def archives(draw: st.DrawFn, nasty: bool = False) -> bytes:
    """A tar stream written by tarfile in one of its formats; `nasty` ones may carry PAX
    records that are not numbers or that contradict the header."""
    fmt = draw(st.sampled_from(FORMATS))
    drawn = draw(st.lists(members(fmt, nasty), min_size=1, max_size=5))
    pax_headers = draw(global_records) if fmt == tarfile.PAX_FORMAT else None
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=fmt, pax_headers=pax_headers) as out:
            for member, content in drawn:
                if content is not None:
                    member.size = len(content)
                out.addfile(member, io.BytesIO(content) if content is not None else None)
            end = out.offset
    except ValueError:  # a name or number the format cannot hold
        return FALLBACK
    return buffer.getvalue()[: end + 2 * BLOCK]  # without tarfile's record padding


def _is_header(block: bytes) -> bool:
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip(), 8)
    except ValueError:
        return False
    return stored == sum(block) - sum(block[148:156]) + 256


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A generated archive with bytes overwritten (in headers mostly, their checksums made
    right again most of the time), blocks repeated or dropped, and maybe cut short."""
    data = draw(archives(nasty=True))
    blocks = [bytearray(data[at : at + BLOCK]) for at in range(0, len(data), BLOCK)]
    headers = [_is_header(bytes(block)) for block in blocks]
    for _ in range(draw(st.integers(0, 2))):
        index = draw(st.integers(0, len(blocks) - 1))
        if draw(st.booleans()):
            target = draw(st.integers(0, len(blocks)))
            blocks.insert(target, bytearray(blocks[index]))
            headers.insert(target, headers[index])
        elif len(blocks) > 1:
            del blocks[index], headers[index]
    header_indexes = [index for index, header in enumerate(headers) if header]
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        if header_indexes and draw(st.sampled_from([True, True, True, False])):
            index = draw(st.sampled_from(header_indexes))
            spot = draw(st.sampled_from(HEADER_SPOTS) | st.integers(0, BLOCK - 1))
            index, spot = index + spot // BLOCK, spot % BLOCK
        else:
            index, spot = draw(st.integers(0, len(blocks) - 1)), draw(st.integers(0, BLOCK - 1))
        if index < len(blocks):
            blocks[index][spot] = draw(st.sampled_from(NASTY_BYTES) | st.integers(0, 255))
    if draw(st.sampled_from([True, True, True, True, False])):
        for index in header_indexes:
            _fix_checksum(blocks[index])
    result = b"".join(blocks) + bytes(2 * BLOCK)  # an end marker again, if one was dropped
    if draw(st.sampled_from([False, False, False, False, False, True])):
        result = result[: draw(st.integers(0, len(result) - 1))]
    return result


Listing = list[tuple[str, str, int, str | None]]  # path, type, size and link of each member


@dataclass
class Outcome:
    members: list[tuple[str, str, int, str | None, str | None]]
    emitted: bytes
    error: str | None


def scan(data: bytes, pieces: list[int], guarded: bool = False) -> Outcome:
    """Feed the stream cut into pieces of the given sizes (in turn, over and over)."""
    members: list[tuple[str, str, int, str | None, str | None]] = []
    emitted = bytearray()
    scanner = TarScanner(
        emit=emitted.extend,
        include=PathGuard().admit if guarded else None,
        done=lambda m: members.append((m.path, m.type, m.size, m.link, m.sha256)),
    )
    error = None
    try:
        position, turn = 0, 0
        while position < len(data):
            piece = pieces[turn % len(pieces)]
            scanner.feed(data[position : position + piece])
            position, turn = position + piece, turn + 1
        scanner.close()
    except (TarFormatError, UnsafeMember) as refused:
        if isinstance(refused, UnsafeMember) and not guarded:
            raise
        error = f"{type(refused).__name__}: {refused}"
    return Outcome(members, bytes(emitted), error)


def tarfile_members(data: bytes) -> Listing | None:
    """The members tarfile reads, or None unless it read the stream to its end marker (it
    stops quietly at a damaged header after the first)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            infos = archive.getmembers()
            end = archive.offset
    except Exception:  # tarfile's own errors, and what it lets escape on damaged input
        return None
    if data[end : end + 2 * BLOCK] != bytes(2 * BLOCK):
        return None
    listed: Listing = []
    for info in infos:
        kind = "file" if info.isreg() else KINDS.get(info.type, "unknown")
        link = None
        if info.issym():
            link = info.linkname
        elif info.islnk():
            link = normalize_path(info.linkname)
        listed.append((normalize_path(info.name), kind, info.size if info.isreg() else 0, link))
    return listed


piece_sizes = st.lists(st.integers(1, 3 * BLOCK), min_size=1, max_size=4)


def check(data: bytes, cuts: list[int]) -> tuple[Outcome, Listing | None]:
    """Check the promises on one stream; return the scanner's outcome and tarfile's list."""
    whole = scan(data, [len(data) or 1])
    assert scan(data, cuts) == whole
    assert scan(data, [BLOCK - 1, 1, BLOCK + 1]) == whole
    guarded = scan(data, cuts, guarded=True)
    assert guarded == scan(data, [len(data) or 1], guarded=True)
    listed = tarfile_members(data)
    verdicts = ("refuses", "reads")
    event(f"scanner {verdicts[whole.error is None]}, tarfile {verdicts[listed is not None]}")
    if whole.error is None and listed is not None:
        assert [comparable(*member[:4]) for member in whole.members] == [
            comparable(*member) for member in listed
        ]
    return whole, listed


def comparable(
    path: str, kind: str, size: int, link: str | None
) -> tuple[str, str, int, str | None]:
    """A member as tarfile can tell it. It strips a directory's trailing slashes before
    anything else, so a directory named "/" (absolute for the scanner, which keeps it for
    the guard to refuse) is "" to it, the volume root: the two are not told apart."""
    return ("." if kind == "dir" and path == "/" else path), kind, size, link


@pytest.mark.timeout(180)
@settings(FUZZ, max_examples=150)
@given(data=archives(), cuts=piece_sizes)
def test_generated_archives_read_as_tarfile_reads_them(data: bytes, cuts: list[int]) -> None:
    whole, listed = check(data, cuts)
    assert whole.error is None
    assert listed is not None


@pytest.mark.timeout(180)
@settings(FUZZ, max_examples=600)
@given(data=damaged(), cuts=piece_sizes)
def test_damaged_archives_are_refused_or_read_as_tarfile_reads_them(
    data: bytes, cuts: list[int]
) -> None:
    check(data, cuts)


@pytest.mark.timeout(180)
@settings(FUZZ, max_examples=100)
@given(data=damaged())
def test_the_fast_path_reads_a_header_as_the_careful_path_does(data: bytes) -> None:
    for at in range(0, len(data) - BLOCK + 1, BLOCK):
        block = data[at : at + BLOCK]
        plain = tarstream._plain_header(block)
        if plain is not None:
            assert tarstream._checksum_ok(block)
            numbers = [int(plain[group], 8) for group in range(1, 6)]
            assert tarstream._read_header(block, at) == (tarstream._decode(block[:100]), numbers)
