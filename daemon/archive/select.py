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

from daemon.archive.exclude import is_excluded
from daemon.archive.tarstream import Member


def select_members(entries: Iterable[Member], patterns: Sequence[str]) -> set[str]:
    """Given a manifest's entries (parents before children, as tar writes them) and
    patterns, return the paths of the members to restore."""
    chosen: set[str] = set()
    links: list[Member] = []
    for entry in entries:
        parent = posixpath.dirname(entry.path) or "."
        inherited = parent != "." and parent in chosen
        if inherited or is_excluded(patterns, entry.path, entry.type == "dir"):
            chosen.add(entry.path)
            if entry.type == "hardlink" and entry.link:
                links.append(entry)
    chosen.update(link.link for link in links if link.link)
    for path in list(chosen):
        parent = posixpath.dirname(path)
        while parent and parent not in chosen:
            chosen.add(parent)
            parent = posixpath.dirname(parent)
    chosen.discard(".")
    return chosen


def leaves_the_target(member: Member) -> bool:
    """Whether the Engine's archive extractor refuses this member as "invalid symlink": a
    relative symlink whose target climbs above the volume root. Such a link is ordinary
    content (SPEC §5.5): it is created after the extraction, as recorded, never followed."""
    if member.type != "symlink" or not member.link or member.link.startswith("/"):
        return False
    joined = posixpath.normpath(posixpath.join("/dst", posixpath.dirname(member.path), member.link))
    return not (joined == "/dst" or joined.startswith("/dst/"))
