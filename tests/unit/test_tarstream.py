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
