"""The helper's listing (daemon.engine.listing): read back as the script writes it, a file
name holding a newline or looking like a record cannot pass for another object."""

from __future__ import annotations

import pytest

from daemon.actions.unchanged import _listed_path
from daemon.archive.tarstream import normalize_path
from daemon.engine.listing import ListingError, ListingParser, kind_of
from daemon.state.filelist import ListedRow

RECORD = b"12 1 5 1700000000 1700000001 81a4 0 0"


def parsed(stream: bytes, piece: int) -> tuple[list[ListedRow], bytes, ListingParser]:
    listed: list[ListedRow] = []
    parser = ListingParser(listed.append)
    rest = b""
    for start in range(0, len(stream), piece):
        rest += parser.feed(stream[start : start + piece])
    parser.close()
    return listed, rest, parser


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_names_with_newlines_and_fake_records_are_one_object_each(piece):
    fake = b"./x\n1 1 0 0 0 41ed 0 0\n./y"
    stream = b"2\n" + RECORD + b"\n" + RECORD.replace(b"12", b"13", 1) + b"\n./a\0" + fake + b"\0"
    listed, rest, parser = parsed(stream + b"skip\nend\nTAR BYTES", piece)
    assert [item.path for item in listed] == ["./a", fake.decode()]
    assert [item.inode for item in listed] == [12, 13]
    assert kind_of(listed[0].mode) == "file" and listed[0].ctime == 1700000001
    assert rest == b"TAR BYTES" and not parser.complete


def test_a_listing_cut_short_or_damaged_is_refused():
    with pytest.raises(ListingError, match="cut short"):
        parsed(b"1\n" + RECORD + b"\n./a\0", 4096)
    with pytest.raises(ListingError, match="damaged"):
        parsed(b"1\n12 x\n./a\0end\n", 4096)
    with pytest.raises(ListingError, match="damaged"):
        parsed(b"3\n" + RECORD + b"\n" + RECORD + b"x\n" + RECORD + b"\n./a\0./b\0./c\0end\n", 5)
    with pytest.raises(ListingError, match="longer than 64 KiB"):
        parsed(b"2\n" + RECORD + b"\n" + b"1" * (1 << 17), 1 << 15)


@pytest.mark.parametrize("piece", [1, 5, 4096])
def test_each_batch_pairs_its_own_records_with_its_paths(piece):
    first = b"2\n" + RECORD + b"\n" + RECORD.replace(b"12", b"13", 1) + b"\n./a\0./b\0"
    second = b"1\n" + RECORD.replace(b"12", b"14", 1) + b"\n./c\0"
    listed, rest, parser = parsed(first + second + b"end\n", piece)
    assert [(item.path, item.inode) for item in listed] == [("./a", 12), ("./b", 13), ("./c", 14)]
    assert rest == b"" and parser.complete and parser.count == 3


@pytest.mark.parametrize("name", [".", "./a", "./a/b c/d", "./a\nb/-x", "./.hidden/..x"])
def test_a_listed_name_is_the_path_of_its_member_in_a_backup(name):
    assert _listed_path(name) == normalize_path(name)
