"""Writing an archive's members on the host (daemon.archive.unpack): what stays in memory."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from collections.abc import Iterator

from daemon.archive.unpack import members

MIB = 1 << 20


def tiny_files(count: int) -> bytes:
    """Given a count, return a PAX tar of that many files of a dozen bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(count):
            content = f"tiny file {index}\n".encode()
            member = tarfile.TarInfo(f"d{index // 1000:04d}/t{index:07d}")
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def pieces(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), MIB):
        yield data[start : start + MIB]


def test_reading_members_keeps_no_header_of_members_already_written() -> None:
    # 20,000 headers kept (tarfile's stream mode keeps them all) are some 25 MiB; the stream's
    # own buffer is 1 MiB
    data = tiny_files(20_000)
    tracemalloc.start()
    try:
        seen = sum(1 for _ in members(pieces(data)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 20_000
    assert peak < 6 * MIB, f"reading 20,000 members held {peak / MIB:.1f} MiB at its peak"
