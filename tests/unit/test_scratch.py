"""Where a drill restores (daemon.rules.scratch): in memory only within a bound that the
restored tree cannot exceed, on disk otherwise; without Docker."""

from __future__ import annotations

import pytest

from daemon.rules.scratch import (
    MEMORY_CAP,
    OBJECT_MEMORY,
    PAGE,
    MemoryScratch,
    memory_scratch,
    memory_scratch_limits,
)

GIB = 1 << 30
SMALL = (10 << 20, 1_000)  # a 10 MB tar of 1,000 objects
HOST = 16 * GIB


def tar_size(sizes: list[int]) -> int:
    """Return the tar bytes of regular files of these sizes: a header each, the content
    padded to 512 bytes, the two zero blocks at the end."""
    return sum(512 + -(-size // 512) * 512 for size in sizes) + 1024


@pytest.mark.parametrize("sizes", [[0] * 5, [1] * 1000, [300] * 2000, [4097, 8191, 1 << 20]])
def test_the_memory_scratch_holds_every_file_rounded_up_to_whole_pages(sizes: list[int]) -> None:
    limits = memory_scratch_limits(tar_size(sizes), len(sizes))

    assert limits.size >= sum(-(-size // PAGE) * PAGE for size in sizes)
    assert limits.inodes > len(sizes)
    assert limits.memory == limits.size + OBJECT_MEMORY * limits.inodes


def test_auto_drills_a_small_archive_in_memory() -> None:
    assert memory_scratch("auto", *SMALL, HOST) == memory_scratch_limits(*SMALL)


def test_disk_keeps_even_a_small_archive_on_disk() -> None:
    assert memory_scratch("disk", *SMALL, HOST) is None


def test_auto_takes_at_most_a_quarter_of_the_host_memory() -> None:
    fits = memory_scratch_limits(*SMALL).memory
    assert memory_scratch("auto", *SMALL, 4 * fits) is not None
    assert memory_scratch("auto", *SMALL, 4 * fits - 4) is None


def test_auto_takes_at_most_the_cap_on_a_large_host() -> None:
    at_cap = MEMORY_CAP - OBJECT_MEMORY * (1_000 + 64) - PAGE * 1_000
    assert memory_scratch("auto", at_cap, 1_000, 1024 * GIB) is not None
    assert memory_scratch("auto", at_cap + 1, 1_000, 1024 * GIB) is None


def test_auto_counts_a_page_per_small_file_not_its_tar_bytes() -> None:
    """200,000 files of 300 bytes are a 205 MB tar but take 819 MB of pages."""
    files = 200_000
    assert memory_scratch("auto", tar_size([300] * files), files, 4 * GIB) is None


def test_auto_keeps_the_archive_on_disk_when_the_host_memory_is_unknown() -> None:
    assert memory_scratch("auto", *SMALL, None) is None


def test_memory_takes_memory_whatever_the_size() -> None:
    limits = memory_scratch("memory", 100 * GIB, 10_000_000, HOST)
    assert limits == MemoryScratch(size=100 * GIB + PAGE * 10_000_000, inodes=10_000_064)
