"""Writing an archive's members on the host (daemon.archive.unpack): what stays in memory, and
the reading that goes on while files are written."""

from __future__ import annotations

import io
import tarfile
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.archive.unpack import DirectoryWriter, members

MIB = 1 << 20


def tiny_files(count: int) -> bytes:
    """Given a count, return a PAX tar of that many files of a dozen bytes, a thousand to a
    directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(count):
            if index % 1000 == 0:
                directory = tarfile.TarInfo(f"d{index // 1000:04d}")
                directory.type = tarfile.DIRTYPE
                archive.addfile(directory)
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
    assert seen == 20_020
    assert peak < 6 * MIB, f"reading 20,000 members held {peak / MIB:.1f} MiB at its peak"


def test_the_stream_is_read_on_while_a_file_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Creating a file costs the kernel 100-600 us; the stream's decompression goes on
    # meanwhile. Here writing waits until the whole stream is read: read on the thread that
    # writes, it never would be.
    streamed = threading.Event()
    write = DirectoryWriter._write

    def write_once_streamed(self: DirectoryWriter, *args: object) -> None:
        assert streamed.wait(timeout=5), "the stream waited for a file to be written"
        write(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(DirectoryWriter, "_write", write_once_streamed)

    def stream() -> Iterator[bytes]:
        data = tiny_files(20)
        for start in range(0, len(data), 512):
            if start + 512 >= len(data):
                streamed.set()  # as the last piece is read
            yield data[start : start + 512]

    writer = DirectoryWriter(tmp_path)
    try:
        assert writer.write_all(stream()) == 21
    finally:
        writer.close()
    assert (tmp_path / "d0000" / "t0000019").read_bytes() == b"tiny file 19\n"
