"""Stream compression: zstd (default), gzip and none, behind one small interface."""

from __future__ import annotations

import zlib
from typing import IO, BinaryIO, Protocol, cast

import zstandard

from daemon.config.model import Compression

SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
DEFAULT_LEVELS = {"zstd": 3, "gzip": 6}
JOB_SIZE = 2 << 20


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


class Compressor(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def finish(self) -> None: ...


class _Zstd:
    def __init__(self, level: int, sink: Sink, threads: int) -> None:
        # Jobs of 2 MiB instead of the default 4 windows: the same ratio, and 40 MB less
        # memory held by the worker buffers (measured on the benchmark's mixed volume).
        parameters = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, job_size=JOB_SIZE
        )
        context = zstandard.ZstdCompressor(compression_params=parameters)
        self._writer = context.stream_writer(
            cast(IO[bytes], sink), closefd=False, write_size=1 << 20
        )

    def write(self, data: bytes | bytearray | memoryview) -> object:
        return self._writer.write(data)

    def finish(self) -> None:
        self._writer.flush(zstandard.FLUSH_FRAME)


class _Gzip:
    def __init__(self, level: int, sink: Sink) -> None:
        self._sink = sink
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip framing

    def write(self, data: bytes | bytearray | memoryview) -> object:
        return self._sink.write(self._compressor.compress(data))

    def finish(self) -> None:
        self._sink.write(self._compressor.flush())


class _Plain:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes | bytearray | memoryview) -> object:
        return self._sink.write(data)

    def finish(self) -> None:
        pass


def compressor(compression: Compression, sink: Sink, threads: int) -> Compressor:
    """Given the policy's compression and a sink, return a compressor writing into the sink,
    on up to `threads` worker threads (zstd; gzip compresses on the caller's thread)."""
    algorithm = compression.algorithm
    if algorithm == "none":
        return _Plain(sink)
    level = compression.level if compression.level is not None else DEFAULT_LEVELS[algorithm]
    return _Zstd(level, sink, threads) if algorithm == "zstd" else _Gzip(level, sink)


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _GzipReader:
    def __init__(self, source: Readable) -> None:
        self._source = source
        self._decompressor = zlib.decompressobj(31)

    def read(self, size: int) -> bytes:
        while True:
            if self._decompressor.unconsumed_tail:
                data = self._decompressor.unconsumed_tail
            else:
                data = self._source.read(1 << 20)
                if not data:
                    if not self._decompressor.eof:
                        raise zlib.error("truncated gzip stream")
                    return self._decompressor.flush()
            chunk = self._decompressor.decompress(data, size)
            if chunk:
                return chunk
            if self._decompressor.eof:
                return b""


def decompressing_reader(algorithm: str, source: Readable) -> BinaryIO:
    """Given the manifest's compression and the stored bytes, return a reader of the tar."""
    if algorithm == "zstd":
        reader: BinaryIO = zstandard.ZstdDecompressor().stream_reader(
            source,  # type: ignore[arg-type]  # it needs only read()
            read_size=1 << 20,
            read_across_frames=True,
        )
        return reader
    if algorithm == "gzip":
        return _GzipReader(source)  # type: ignore[return-value]
    return source  # type: ignore[return-value]
