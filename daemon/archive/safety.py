"""The one path-safety check (SPEC §5.5) that every restore and drill calls.

An archive member may only create something inside the target: no absolute names, no
names that climb with `..`, nothing written through a symlink the archive made (or a hard
link to one, which is the same symlink), no hard link to a path outside, no device nodes.
A symlink whose *target* points outside is ordinary content and is allowed: it is
restored as it was and never followed.
"""

from __future__ import annotations

from daemon.archive.tarstream import Member

REFUSED_TYPES = {"char": "device node", "block": "device node"}


class UnsafeMember(ValueError):
    """A member would write outside the target or create a refused object."""


def _unsafe_name(path: str) -> str | None:
    if path.startswith("/"):
        return "absolute name"
    if ".." in path.split("/"):
        return "name climbs with '..'"
    return None


class PathGuard:
    """Remembers the symlinks seen so far and checks each member in stream order."""

    def __init__(self) -> None:
        self._symlinks: set[str] = set()

    def _through_symlink(self, path: str) -> str | None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self._symlinks:
                return parent
        return None

    def check(self, member: Member) -> None:
        """Given the next member of a stream, raise UnsafeMember if restoring it is unsafe."""
        problem = _unsafe_name(member.path)
        if problem is None and member.type in REFUSED_TYPES:
            problem = REFUSED_TYPES[member.type]
        if problem is None and member.path == "." and member.type != "dir":
            problem = "the volume root is not a directory"
        if problem is None and (link := self._through_symlink(member.path)):
            problem = f"written through the symlink {link!r}"
        if problem is None and member.type == "hardlink" and member.link is not None:
            if (link_problem := _unsafe_name(member.link)) is not None:
                problem = f"hard link target: {link_problem}"
            elif (link := self._through_symlink(member.link)) is not None:
                problem = f"hard link target through the symlink {link!r}"
        if problem is not None:
            raise UnsafeMember(f"member {member.path!r}: {problem}")
        if member.type == "symlink" or (
            # A hard link to a symlink is that symlink under a second name (link(2) does not
            # follow it): what is written below that name goes through it just the same.
            member.type == "hardlink" and member.link in self._symlinks
        ):
            self._symlinks.add(member.path)

    def admit(self, member: Member) -> bool:
        """The guard as a TarScanner `include`: check the member, then keep it."""
        self.check(member)
        return True
