"""Exclude patterns mean the same thing whatever tar the helper has."""

from __future__ import annotations

import io
import tarfile

import pytest

from daemon.archive.exclude import MemberFilter, is_excluded
from daemon.archive.tarstream import Member, TarScanner
from daemon.errors import OperationError


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "excluded"),
    [
        ("*.tmp", "x.tmp", False, True),
        ("*.tmp", "deep/down/y.tmp", False, True),
        ("*.tmp", "x.tmp.keep", False, False),
        ("cache/", "cache", True, True),
        ("cache/", "cache", False, False),  # a file named cache stays
        ("cache/", "cache/inside/file", False, True),
        ("cache/", "sub/cache/file", False, True),
        ("app/cache", "app/cache/file", False, True),
        ("app/cache", "other/app/cache", False, False),  # anchored at the volume root
        ("app/*.log", "app/sub/x.log", False, False),  # * never crosses /
        ("app/**/x.log", "app/sub/deeper/x.log", False, True),
        ("app/**/x.log", "app/x.log", False, True),
        ("*.tmp", ".", True, False),  # never the root
    ],
)
def test_pattern_semantics(pattern: str, path: str, is_dir: bool, excluded: bool) -> None:
    assert is_excluded([pattern], path, is_dir) is excluded


def member(path: str, kind: str = "file", link: str | None = None) -> Member:
    return Member(path, kind, 0o644, 0, 0, 0, 0, link=link)


def test_the_filter_drops_excluded_paths_device_nodes_and_links_to_device_nodes() -> None:
    selection = MemberFilter(["*.tmp", "cache/"])
    kept = [
        m.path
        for m in [
            member("a.tmp"),
            member("b"),
            member("null", "char"),
            member("null2", "hardlink", link="null"),
            member("d", "hardlink", link="b"),
            member("cache", "dir"),
            member("cache/x"),
            member("cache/y", "hardlink", link="cache/x"),  # excluded itself: no loss
        ]
        if selection.include(m)
    ]
    assert kept == ["b", "d"]
    assert selection.excluded == 4
    assert [path for path, _ in selection.skipped] == ["null", "null2"]


def test_a_kept_hard_link_to_an_excluded_file_fails_naming_both_paths() -> None:
    # tar met cache/x first: the content went by under the excluded name, and keep/y,
    # which nobody excluded, is only a link to it. Dropping keep/y would lose a file.
    selection = MemberFilter(["cache/"])
    assert not selection.include(member("cache", "dir"))
    assert not selection.include(member("cache/x"))
    with pytest.raises(OperationError, match=r"'keep/y' is a hard link to 'cache/x'.*neither"):
        selection.include(member("keep/y", "hardlink", link="cache/x"))


def test_the_stream_stops_before_the_link_is_forwarded() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        content = tarfile.TarInfo("./cache/x")
        content.size = 3
        archive.addfile(content, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("./keep/y")
        link.type, link.linkname = tarfile.LNKTYPE, "./cache/x"
        archive.addfile(link)
    emitted = bytearray()
    scanner = TarScanner(emit=emitted.extend, include=MemberFilter(["cache/"]).include)
    with pytest.raises(OperationError, match="'keep/y'"):
        scanner.feed(buffer.getvalue())
    assert b"keep/y" not in emitted
