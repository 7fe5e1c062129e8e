"""The tar stream parser against streams written by Python's tarfile in every format."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from daemon.archive.tarstream import Member, TarFormatError, TarScanner, normalize_path


def make_tar(fmt: int, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, content in members:
            if content is not None:
                info.size = len(content)
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    for key, value in fields.items():
        setattr(member, key, value)
    return member


def scan(data: bytes, piece: int = 32768, **kwargs: object) -> tuple[list[Member], bytes]:
    members: list[Member] = []
    out = bytearray()
    scanner = TarScanner(emit=out.extend, done=members.append, **kwargs)  # type: ignore[arg-type]
    for start in range(0, len(data), piece):
        scanner.feed(data[start : start + piece])
    scanner.close()
    return members, bytes(out)


def header(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **fields: object) -> bytes:
    """One ustar header block, as tarfile writes it."""
    return info(name, kind, size=size, **fields).tobuf(tarfile.USTAR_FORMAT)


def patched(block: bytes, offset: int, value: bytes) -> bytes:
    """The header block with `value` written at `offset` and its checksum made right again."""
    changed = bytearray(block)
    changed[offset : offset + len(value)] = value
    changed[148:156] = b" " * 8
    changed[148:156] = b"%06o\0 " % sum(changed)
    return bytes(changed)


def member_data(block: bytes, data: bytes) -> bytes:
    return block + data + bytes(-len(data) % 512)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX record with its length right."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def pax_member(records: bytes, name: str = "f", content: bytes = b"") -> bytes:
    """A stream of one PAX header holding `records` as they are, its member and the end."""
    extended = member_data(header(f"PaxHeaders/{name}", tarfile.XHDTYPE, len(records)), records)
    return extended + member_data(header(name, size=len(content)), content) + END


END = bytes(1024)
LONG = "d" * 120 + "/" + "ü" * 90 + "/file"
CONTENT = b"x" * 5000 + bytes(range(256))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_format_gives_the_same_members(fmt: int) -> None:
    long_name = LONG if fmt != tarfile.USTAR_FORMAT else "a" * 90 + "/" + "b" * 60
    hard_target = long_name if fmt != tarfile.USTAR_FORMAT else "b" * 98  # ustar: 100 bytes
    data = make_tar(
        fmt,
        [
            (info("./", tarfile.DIRTYPE, mode=0o750, uid=999, gid=999), None),
            (info(f"./{long_name}", mode=0o4755, uid=65534, gid=0, mtime=3786912000), CONTENT),
            (info("./link", tarfile.SYMTYPE, linkname="/etc/passwd", mtime=157766400), None),
            (info("./hard", tarfile.LNKTYPE, linkname=f"./{hard_target}"), None),
            (info("./fifo", tarfile.FIFOTYPE, mode=0o600), None),
            (info("./empty", mode=0), b""),
        ],
    )
    members, out = scan(data)
    assert [(m.path, m.type) for m in members] == [
        (".", "dir"),
        (long_name, "file"),
        ("link", "symlink"),
        ("hard", "hardlink"),
        ("fifo", "fifo"),
        ("empty", "file"),
    ]
    root, big, link, hard, fifo, empty = members
    assert (root.mode, root.uid, root.gid) == (0o750, 999, 999)
    assert (big.mode, big.uid, big.size, big.mtime) == (0o4755, 65534, len(CONTENT), 3786912000)
    assert big.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert (link.link, link.mtime, link.sha256) == ("/etc/passwd", 157766400, None)
    assert hard.link == hard_target
    assert (fifo.mode, empty.mode, empty.sha256) == (0o600, 0, hashlib.sha256(b"").hexdigest())
    assert out == data[: len(out)] and len(out) % 512 == 0


def test_feeding_byte_by_byte_equals_feeding_whole() -> None:
    data = make_tar(tarfile.PAX_FORMAT, [(info(f"./{LONG}"), CONTENT), (info("./b"), b"b")])
    assert scan(data, piece=1) == scan(data, piece=len(data))


def test_large_ids_in_base_256_are_read() -> None:
    data = make_tar(tarfile.GNU_FORMAT, [(info("./f", uid=3_000_000, gid=4_000_000), b"")])
    (member,), _ = scan(data)
    assert (member.uid, member.gid) == (3_000_000, 4_000_000)


def test_members_left_out_are_not_forwarded() -> None:
    data = make_tar(
        tarfile.GNU_FORMAT, [(info("./keep"), b"k" * 700), (info(f"./{LONG}"), CONTENT)]
    )
    members, out = scan(data, include=lambda member: member.path == "keep")
    assert [m.path for m in members] == ["keep"]
    with tarfile.open(fileobj=io.BytesIO(out)) as archive:
        names = archive.getnames()
    assert names == ["./keep"]


def test_a_truncated_stream_is_reported() -> None:
    data = make_tar(tarfile.USTAR_FORMAT, [(info("./f"), CONTENT)])
    with pytest.raises(TarFormatError, match="truncated"):
        scan(data[:2048])


def test_a_corrupt_header_is_reported() -> None:
    data = bytearray(make_tar(tarfile.USTAR_FORMAT, [(info("./f"), CONTENT)]))
    data[10] ^= 0xFF
    with pytest.raises(TarFormatError, match="checksum"):
        scan(bytes(data))


def test_sparse_members_are_refused() -> None:
    data = bytearray(make_tar(tarfile.GNU_FORMAT, [(info("./f"), b"")]))
    data[156:157] = b"S"
    data[148:156] = b"        "
    data[148:156] = f"{sum(data[:512]):06o}\0 ".encode()
    with pytest.raises(TarFormatError, match="sparse"):
        scan(bytes(data))


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("./", "."),
        (".", "."),
        ("./a/b/", "a/b"),
        ("a//b", "a/b"),
        ("/etc/x", "/etc/x"),
        ("./../x", "../x"),
    ],
)
def test_names_are_normalized_without_hiding_escapes(name: str, normalized: str) -> None:
    assert normalize_path(name) == normalized


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "records",
    [
        b"0 path=x\n",  # a length of zero used to loop for ever
        b"abc path=x\n",
        b"-11 path=x\n",
        b"3 a=\n",  # shorter than its own length field
        b"99 path=x\n",  # longer than the header
        b"11 path=xyz\n",  # the length does not end at the newline
        b"10 pathxy\n",  # no '='
        b"7 =xy\n",  # no key
        b"11 path=x\n\0",  # something after the last record
        b"path=x\n",  # no length at all
    ],
)
def test_a_malformed_pax_header_is_refused(records: bytes) -> None:
    with pytest.raises(TarFormatError, match="PAX header 'PaxHeaders/f'"):
        scan(pax_member(records))


@pytest.mark.parametrize("key", [b"uid", b"gid", b"size", b"mtime", b"atime", b"ctime"])
@pytest.mark.parametrize("value", [b"abc", b"1_0", b" 10", b"0x10", b"1e3", b"nan", b"1.2.3"])
def test_a_pax_number_that_is_not_one_is_refused_naming_the_member(
    key: bytes, value: bytes
) -> None:
    with pytest.raises(TarFormatError, match=f"member 'f': PAX {key.decode()} "):
        scan(pax_member(pax_record(key, value)))


@pytest.mark.parametrize(
    ("offset", "field"), [(100, "mode"), (108, "uid"), (116, "gid"), (124, "size"), (136, "mtime")]
)
def test_a_header_number_that_is_not_one_is_refused_naming_the_member(
    offset: int, field: str
) -> None:
    data = patched(header("f"), offset, b"12x4") + END
    with pytest.raises(TarFormatError, match=f"member 'f' .*: bad {field} field"):
        scan(data)


def test_valid_pax_numbers_are_read() -> None:
    records = b"12 uid=1000\n12 gid=-200\n" + pax_record(b"mtime", b"1700000000.5")
    (member,), _ = scan(pax_member(records))
    assert (member.uid, member.gid, member.mtime) == (1000, -200, 1700000000.5)


@pytest.mark.parametrize("typeflag", [b"0", b"7"])
def test_a_regular_file_with_a_directory_name_is_refused(typeflag: bytes) -> None:
    # Go's archive/tar reads the block below as the content of "d/"; a scanner that took
    # "d/" for a directory would see a member "evil" that the Engine never sees.
    hidden = header("evil")
    data = member_data(patched(header("d/", size=len(hidden)), 156, typeflag), hidden) + END
    with pytest.raises(TarFormatError, match=r"member 'd/'.*a directory's name"):
        scan(data)


def test_an_old_style_directory_is_a_directory_without_data() -> None:
    old_style = patched(header("d/", size=512), 156, b"\0")  # Go reads no data for it either
    members, _ = scan(old_style + member_data(header("f", size=1), b"x") + END)
    assert [(m.path, m.type, m.size) for m in members] == [("d", "dir", 0), ("f", "file", 1)]


def global_header(records: bytes) -> bytes:
    return member_data(header("GlobalHead", tarfile.XGLTYPE, len(records)), records)


def test_global_pax_headers_are_ignored_as_the_engine_ignores_them() -> None:
    records = pax_record(b"path", b"evil") + pax_record(b"uid", b"0")
    data = global_header(records) + member_data(header("f", size=1, uid=7), b"x") + END
    members, out = scan(data)
    assert [(m.path, m.uid) for m in members] == [("f", 7)]
    assert out == data  # forwarded as they came: the Engine skips them too


def test_a_global_pax_header_between_an_extended_header_and_its_member_is_refused() -> None:
    # Go drops the extended header's records there, tarfile keeps them: refused.
    extended = pax_member(pax_record(b"path", b"long"))
    data = extended[:1024] + global_header(pax_record(b"comment", b"x")) + extended[1024:]
    with pytest.raises(TarFormatError, match="global PAX header 'GlobalHead'"):
        scan(data)


@pytest.mark.parametrize("piece", [1, 100, 512, 4096])
@pytest.mark.parametrize(
    "size_field",
    [
        b"\xff" * 11 + b"\x00",  # -256 in base-256: parsing then depended on the chunks
        b"\xff" * 12,  # -1
        b"\x80" + (1 << 63).to_bytes(11, "big"),  # more than Go's int64
        b"\x81" + bytes(11),  # base-256 with bits in the marker byte: Go and tarfile differ
    ],
    ids=["minus-256", "minus-1", "beyond-int64", "marker-bits"],
)
def test_an_impossible_base_256_size_is_refused(size_field: bytes, piece: int) -> None:
    data = patched(header("f"), 124, size_field) + member_data(header("g", size=3), b"abc") + END
    with pytest.raises(TarFormatError, match=r"member 'f' .*: bad size field"):
        scan(data, piece=piece)


def test_a_negative_pax_size_is_refused() -> None:
    with pytest.raises(TarFormatError, match="member 'f': PAX size '-1' is negative"):
        scan(pax_member(pax_record(b"size", b"-1")))


def extended(kind: bytes, data: bytes) -> bytes:
    return member_data(
        header("././@LongLink" if kind in b"LK" else "PaxHeaders/f", kind, len(data)), data
    )


PAX_PATH = extended(tarfile.XHDTYPE, pax_record(b"path", b"long"))
LONG_NAME = extended(tarfile.GNUTYPE_LONGNAME, b"long\0")
FILE = member_data(header("f", size=1), b"x")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (patched(info("f").tobuf(tarfile.GNU_FORMAT), 345, b"p") + END, "prefix field"),
        (patched(patched(header("f"), 345, b"p"), 257, bytes(8)) + END, "prefix field"),
        (patched(header("f"), 508, b"tar\0") + END, "star header"),
        (patched(header("f"), 329, b"9x") + END, "bad devmajor"),
        (PAX_PATH + PAX_PATH + FILE + END, "PAX header .* a second one"),
        (LONG_NAME + LONG_NAME + FILE + END, "GNU long name .* a second one"),
        (LONG_NAME + PAX_PATH + FILE + END, "both a GNU long name and a PAX path"),
        (extended(tarfile.GNUTYPE_LONGNAME, b"\0") + FILE + END, "GNU long name .* empty"),
        (pax_member(pax_record(b"path", b"")), "an empty PAX path"),
        (pax_member(pax_record(b"size", b"")), "empty PAX size"),
        (pax_member(pax_record(b"path", b"a\0b")), "holds a NUL"),
        (pax_member(pax_record(b"GNU.sparse.map", b"0,1")), "sparse"),
        (PAX_PATH[:-1] + b"1" + FILE + END, "bytes other than zeros after its data"),
        (
            extended(tarfile.XHDTYPE, pax_record(b"path", b"d/"))
            + patched(header("x", size=0), 156, b"\0")
            + END,
            "differ on being a directory",
        ),
    ],
    ids=[
        "gnu-prefix",
        "v7-prefix",
        "star",
        "devmajor",
        "two-pax",
        "two-long-names",
        "long-name-and-pax-path",
        "empty-long-name",
        "empty-pax-path",
        "empty-pax-size",
        "nul-in-path",
        "sparse-pax",
        "pax-padding",
        "old-directory-by-long-name",
    ],
)
def test_what_tar_readers_read_differently_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(TarFormatError, match=reason):
        scan(data)


def test_a_signed_checksum_is_accepted_as_go_and_tarfile_accept_it() -> None:
    block = bytearray(header("ü"))
    block[148:156] = b" " * 8
    signed = sum(byte - 256 if byte & 0x80 else byte for byte in block)
    block[148:156] = b"%06o\0 " % signed
    members, _ = scan(bytes(block) + END)
    assert [m.path for m in members] == ["ü"]
