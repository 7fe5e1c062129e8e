"""Which members a partial restore (`restore --path PATTERN`) writes, and which symlinks the
Engine's extractor would refuse.

Patterns mean what exclude patterns mean (daemon.archive.exclude): `*.conf` matches a name
at any depth, `uploads/` directories only, `app/config.yml` is anchored at the volume root,
`**` spans directories. A matched directory brings everything under it; every member
brings its parent directories (their owner, mode and mtime as recorded), never the volume
root; a hard link brings the file it links to.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from daemon.archive.exclude import is_excluded
from daemon.archive.tarstream import Member


@dataclass(frozen=True)
class Selection:
    """The members a partial restore writes: those the patterns match (matched again as
    each passes, so that memory does not grow with them), and `added`: the parent
    directories and hard-link targets they bring."""

    patterns: tuple[str, ...]
    added: frozenset[str]
    count: int  # members matched

    def keeps(self, member: Member) -> bool:
        return member.path in self.added or _matched(self.patterns, member)

    def __bool__(self) -> bool:
        return self.count > 0


def _matched(patterns: Sequence[str], member: Member) -> bool:
    # A path under a matched directory matches too: is_excluded tries every prefix.
    return is_excluded(patterns, member.path, member.type == "dir")


def select_members(entries: Iterable[Member], patterns: Sequence[str]) -> Selection:
    """Given a manifest's entries and patterns, return the selection of members to
    restore. It holds the paths the matched members bring (parent directories, hard-link
    targets), not the matched ones."""
    chosen = tuple(patterns)
    count = 0
    added: set[str] = set()
    for entry in entries:
        if not _matched(chosen, entry):
            continue
        count += 1
        brought = [entry.path]
        if entry.type == "hardlink" and entry.link:
            brought.append(entry.link)
            if not is_excluded(chosen, entry.link, False):
                added.add(entry.link)
        for path in brought:
            parent = posixpath.dirname(path)
            while parent and parent not in added and not is_excluded(chosen, parent, True):
                added.add(parent)  # a matched parent brings its own parents
                parent = posixpath.dirname(parent)
    added.discard(".")
    return Selection(chosen, frozenset(added), count)


def leaves_the_target(member: Member) -> bool:
    """Whether the Engine's archive extractor refuses this member as "invalid symlink": a
    relative symlink whose target climbs above the volume root. Such a link is ordinary
    content (SPEC §5.5): it is created after the extraction, as recorded, never followed."""
    if member.type != "symlink" or not member.link or member.link.startswith("/"):
        return False
    joined = posixpath.normpath(posixpath.join("/dst", posixpath.dirname(member.path), member.link))
    return not (joined == "/dst" or joined.startswith("/dst/"))
