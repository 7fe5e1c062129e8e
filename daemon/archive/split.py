"""Split one tar stream into member-aligned streams that extract side by side.

The Docker Engine extracts one tar on one thread (docs/benchmarks.md, "Parallel
extraction"); several tars into the same directory, one per helper container, extract in
parallel. What moby's extractor does decides how a stream is cut:

- it creates a member's missing parent directories (mode 0755, owned by root), and merges
  a directory member into a directory that exists: it applies the member's owner, mode and
  extended attributes to it;
- it sets a directory's mtime at the end of its own stream, and any file created in the
  directory afterwards, by another stream, changes it again;
- a hard link needs its target to exist.

So the members that create content (regular files, symlinks, fifos) are dealt to the
`streams` parallel streams a directory at a time: the members of one directory go to the
stream given the fewest bytes so far, and stay there until it has been given STAY_BYTES
more than another (two extractors creating files in one directory wait on its lock: dealt
member by member, a 200,000-file restore into ext4 took twice as long). The directories
and hard links, and the bytes outside members (global headers, the end marker), go to one
last stream, extracted once all the others have ended: it finds every directory and every
link target there and leaves each directory with its recorded owner, mode and mtime.

Only a restore into an empty target is split: where content is already there, a directory
member must replace a file or symlink of its name before its children are written into it
(a `--path` restore writes over the target in one stream, as the archive comes).
"""

from __future__ import annotations

import posixpath

from daemon.archive.tarstream import BLOCK, Member

# An archive with fewer members and fewer bytes than these extracts in one stream: a
# helper per stream costs ~0.2 s to create and remove, which a small archive does not win
# back.
SPLIT_MEMBERS = 1_000
SPLIT_BYTES = 64 << 20
# Parallel streams at most, whatever the Docker host's CPU count: measured on 2 CPUs.
MAX_STREAMS = 4
# A directory's members move to another stream once theirs is this far ahead of it.
STAY_BYTES = 16 << 20
END_MARKER = bytes(2 * BLOCK)
LAST_TYPES = frozenset({"dir", "hardlink"})


def extraction_streams(cpus: int | None, members: int, tar_size: int, whole: bool) -> int:
    """Given the Docker host's CPU count, an archive's member count and tar size, and
    whether the restore is whole (into an empty target), return how many parallel streams
    to extract it in: 1 (one stream, not split) for a partial restore or a small archive."""
    if not whole or (members < SPLIT_MEMBERS and tar_size < SPLIT_BYTES):
        return 1
    return max(1, min(MAX_STREAMS, cpus or 1))


class StreamSplit:
    """Deals the members of one tar stream to `streams` parallel streams and the last one
    (numbered `streams`); see the module's docstring."""

    def __init__(self, streams: int) -> None:
        self.last = streams
        self._given = [0] * streams  # bytes dealt to each parallel stream so far
        self._directory: str | None = None  # of the member dealt last
        self._stream = 0  # where it went

    def route(self, member: Member | None) -> int:
        """Given a member (None: bytes outside members), return the stream its bytes go to."""
        if member is None or member.type in LAST_TYPES:
            return self.last
        directory = posixpath.dirname(member.path)
        given = self._given
        if directory != self._directory or given[self._stream] - min(given) > STAY_BYTES:
            self._directory = directory
            self._stream = given.index(min(given))
        given[self._stream] += BLOCK + member.size  # a header, and the data
        return self._stream
