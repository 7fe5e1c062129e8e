"""Where a drill restores an archive: a scratch volume on disk, or one in memory (tmpfs).

Restoring into memory skips the disk twice: the files are written and read back without
it, and the volume's removal is an unmount, where dockerd's removal of a volume on disk
unlinks every file (minutes for a few hundred thousand files on a disk mounted with
`discard`). It holds the restored files in the Docker host's memory for the drill's
duration, so `auto` takes it only for an archive that fits a conservative bound
(docs/drills.md, "The scratch volume").
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.model import DrillScratch

# The tmpfs page: a file takes whole pages. Pages larger than this (some arm64 kernels)
# can make the bound short; the restore then fails for want of space and the drill starts
# again on disk.
PAGE = 4096
# The kernel's own memory per object (inode and dentry), beside its pages: not counted by
# tmpfs's size limit, counted here.
OBJECT_MEMORY = 1024
SPARE_INODES = 64  # the volume root, and room to spare
MEMORY_SHARE = 4  # `auto` takes at most a quarter of the Docker host's memory
MEMORY_CAP = 2 << 30  # and at most 2 GiB, whatever the host has


@dataclass(frozen=True)
class MemoryScratch:
    """The limits of a scratch volume in memory."""

    size: int  # bytes of file content the tmpfs may hold (its size= option)
    inodes: int  # objects it may hold (its nr_inodes= option)

    @property
    def memory(self) -> int:
        """Return the most memory the volume can take: its pages and its objects."""
        return self.size + OBJECT_MEMORY * self.inodes


def memory_scratch_limits(tar_size: int, entry_count: int) -> MemoryScratch:
    """Given an archive's tar size and number of objects, return limits a tmpfs holding its
    restored tree cannot exceed: a regular file takes its size rounded up to pages, at most
    its tar bytes (header and content) plus a page; a symbolic link at most a page; a
    directory, a hard link or a special file no page."""
    return MemoryScratch(size=tar_size + PAGE * entry_count, inodes=entry_count + SPARE_INODES)


def memory_scratch(
    setting: DrillScratch, tar_size: int, entry_count: int, host_memory: int | None
) -> MemoryScratch | None:
    """Given the policy's `drill.scratch`, the archive's tar size and number of objects and
    the Docker host's memory in bytes (None: unknown), return the limits of the scratch
    volume in memory to drill the archive in, or None to drill it on disk.

    - disk: on disk;
    - memory: in memory, whatever its size;
    - auto: in memory when the most it can take is at most a quarter of the host's memory
      and at most MEMORY_CAP; on disk otherwise, and when the host's memory is unknown.
    """
    if setting == "disk":
        return None
    limits = memory_scratch_limits(tar_size, entry_count)
    if setting == "memory":
        return limits
    if host_memory is None:
        return None
    bound = min(host_memory // MEMORY_SHARE, MEMORY_CAP)
    return limits if limits.memory <= bound else None
