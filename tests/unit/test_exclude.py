"""Exclude patterns mean the same thing whatever tar the helper has."""

from __future__ import annotations

import pytest

from daemon.archive.exclude import MemberFilter, is_excluded
from daemon.archive.tarstream import Member


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


def test_the_filter_drops_device_nodes_and_links_to_excluded_files() -> None:
    selection = MemberFilter(["*.tmp"])
    kept = [
        m.path
        for m in [
            member("a.tmp"),
            member("b"),
            member("null", "char"),
            member("c", "hardlink", link="a.tmp"),
            member("d", "hardlink", link="b"),
        ]
        if selection.include(m)
    ]
    assert kept == ["b", "d"]
    assert selection.excluded == 1
    assert [path for path, _ in selection.skipped] == ["null", "c"]
