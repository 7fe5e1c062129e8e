"""The path-safety check: only members that stay inside the target pass."""

from __future__ import annotations

import pytest

from daemon.archive.safety import PathGuard, UnsafeMember
from daemon.archive.tarstream import Member


def member(path: str, kind: str = "file", link: str | None = None) -> Member:
    return Member(path, kind, 0o644, 0, 0, 0, 0, link=link)


def check_all(*members: Member) -> None:
    guard = PathGuard()
    for each in members:
        guard.check(each)


def test_ordinary_content_passes_including_symlinks_pointing_outside() -> None:
    check_all(
        member(".", "dir"),
        member("a", "dir"),
        member("a/file"),
        member("out", "symlink", "/etc/passwd"),
        member("up", "symlink", "../../.."),
        member("a/hard", "hardlink", "a/file"),
        member("hard_to_symlink", "hardlink", "out"),
        member("fifo", "fifo"),
    )


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([member("/etc/cron.d/evil")], "absolute"),
        ([member("../evil")], "climbs"),
        ([member("a/../../evil")], "climbs"),
        ([member("link", "symlink", "/etc"), member("link/evil")], "through the symlink"),
        ([member("link", "symlink", "."), member("link/x/y")], "through the symlink"),
        ([member("hard", "hardlink", "/etc/shadow")], "hard link target: absolute"),
        ([member("hard", "hardlink", "../x")], "hard link target: name climbs"),
        (
            [member("link", "symlink", "/etc"), member("hard", "hardlink", "link/shadow")],
            "hard link target through the symlink",
        ),
        (  # a hard link to a symlink is that symlink again
            [member("s", "symlink", "/etc"), member("h", "hardlink", "s"), member("h/evil")],
            "through the symlink 'h'",
        ),
        (
            [
                member("s", "symlink", "/etc"),
                member("h", "hardlink", "s"),
                member("h2", "hardlink", "h"),
                member("h2/evil"),
            ],
            "through the symlink 'h2'",
        ),
        ([member("dev", "char")], "device node"),
        ([member("dev", "block")], "device node"),
        ([member(".", "symlink", "/")], "root is not a directory"),
    ],
)
def test_escapes_are_refused(members: list[Member], reason: str) -> None:
    with pytest.raises(UnsafeMember, match=reason):
        check_all(*members)
