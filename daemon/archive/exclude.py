"""Exclude patterns, with one meaning whatever tar the helper image has.

Patterns are globs relative to the volume root, read like .gitignore lines:
`*.tmp` (no slash) matches that name at any depth; `cache/` (trailing slash) matches
directories only; `app/cache` (a slash inside) is anchored at the volume root; `*` and `?`
never cross a `/`, `**` matches any number of directories. A directory that matches takes
everything below it along.

Hard links: tar stores a file's content under the first of its names it meets and every
later name as a link to that first one. When the first name is excluded and a later one is
not, the later name cannot be kept: the content went by with the excluded name, and
holding back excluded content in case a link to it follows would take memory without
bound (SPEC §5.7), or a temporary disk. Leaving the name out would lose a file nobody
excluded. So the backup fails, naming both paths: exclude both names, or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from daemon.archive.tarstream import Member
from daemon.errors import OperationError


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

    Excluded paths go, and so do device nodes (with the hard links to them): restore
    refuses them (SPEC §5.5), so an archive holding one could never be restored. A kept
    hard link to an excluded file fails the backup (see above).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = patterns
        # The device nodes met (few). Excluded paths are matched again, not remembered.
        self._devices: set[str] = set()
        self.excluded = 0
        self.skipped: list[tuple[str, str]] = []  # (path, why) of what was left out unasked

    def include(self, member: Member) -> bool:
        """Given the next member of the helper's stream, say whether the backup keeps it.

        Raise OperationError, naming both paths, for a hard link that is kept while the
        name holding its content was excluded."""
        if member.type in ("char", "block"):
            self._devices.add(member.path)
            self.skipped.append((member.path, "device node"))
            return False
        if is_excluded(self._patterns, member.path, member.type == "dir"):
            self.excluded += 1
            return False
        if member.type == "hardlink" and member.link is not None:
            if member.link in self._devices:
                self.skipped.append((member.path, f"hard link to the device node {member.link!r}"))
                return False
            if is_excluded(self._patterns, member.link, False):
                raise OperationError(
                    f"{member.path!r} is a hard link to {member.link!r}, which the exclude "
                    f"patterns leave out: tar stored the content under {member.link!r} only, "
                    f"so {member.path!r} cannot be kept without it; exclude both names or "
                    "neither"
                )
        return True
