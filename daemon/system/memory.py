"""glibc's malloc and threads: one arena for the whole process.

glibc gives each thread that allocates an arena of its own (up to eight per core), and an
arena keeps what was freed in it for its next allocations. Reading a deduplicated archive
hands buffers of megabytes from thread to thread (packs fetched and opened in a pool,
pieces of the tar passed to the one that sends them): with an arena per thread, each kept
a few of them, and a restore of the benchmark's mixed volume peaked at 158-178 MiB; with
one arena at 127-133 MiB, for the same CPU seconds (docs/benchmarks.md). Python's own small
objects do not go through these arenas (pymalloc), and the big buffers (zstd, BLAKE3,
SHA-256 of megabytes) are taken once each: one lock costs nothing measurable.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_malloc_arena() -> None:
    """Ask glibc's malloc for one arena, shared by every thread (call before threads
    start). Nothing happens on a C library without mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 1)
