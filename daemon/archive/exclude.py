"""Exclude patterns, with one meaning whatever tar the helper image has.

Patterns are globs relative to the volume root, read like .gitignore lines:
`*.tmp` (no slash) matches that name at any depth; `cache/` (trailing slash) matches
directories only; `app/cache` (a slash inside) is anchored at the volume root; `*` and `?`
never cross a `/`, `**` matches any number of directories. A directory that matches takes
everything below it along.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from daemon.archive.tarstream import Member


def _match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(rest, parts[index:]) for index in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match_parts(rest, parts[1:])


def _matches(pattern: str, parts: Sequence[str], is_dir: bool) -> bool:
    if pattern.endswith("/"):
        if not is_dir:
            return False
        pattern = pattern.rstrip("/")
    if "/" in pattern:
        return _match_parts(pattern.strip("/").split("/"), parts)
    return fnmatchcase(parts[-1], pattern)


def is_excluded(patterns: Sequence[str], path: str, is_dir: bool) -> bool:
    """Given exclude patterns and a member path ("a/b/c", "." for the root), say whether the
    member or one of the directories above it is excluded."""
    if path == "." or not patterns:
        return False
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        prefix_is_dir = is_dir or depth < len(parts)
        if any(_matches(pattern, parts[:depth], prefix_is_dir) for pattern in patterns):
            return True
    return False


class MemberFilter:
    """Decides, member by member, what a backup keeps.

    Excluded paths go, and so do device nodes: restore refuses them (SPEC §5.5), so an
    archive holding one could never be restored. A hard link to an excluded file goes too.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = patterns
        self._excluded_files: set[str] = set()
        self.excluded = 0
        self.skipped: list[tuple[str, str]] = []  # (path, why) of what was left out unasked

    def include(self, member: Member) -> bool:
        if member.type in ("char", "block"):
            self.skipped.append((member.path, "device node"))
            return False
        if is_excluded(self._patterns, member.path, member.type == "dir"):
            self.excluded += 1
            self._excluded_files.add(member.path)
            return False
        if member.type == "hardlink" and member.link in self._excluded_files:
            self.skipped.append((member.path, f"hard link to the excluded {member.link!r}"))
            return False
        return True
