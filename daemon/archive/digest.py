"""SHA-256 and byte counts of the stored bytes, taken as they pass in either direction."""

from __future__ import annotations

import hashlib
from typing import Protocol

from daemon.archive.compression import Sink


class HashingWriter:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> object:
        self._sha256.update(data)
        self.size += len(data)
        return self._sink.write(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class HashingReader:
    def __init__(self, source: Readable) -> None:
        self._source = source
        self._sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._sha256.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def kept(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """Given a piece of a stream that its giver may reuse once the call returns, return
    it as it can be kept: itself if it is `bytes` or a view of `bytes` (immutable: no copy
    needed), else a copy."""
    if isinstance(data, bytes) or (
        isinstance(data, memoryview) and type(data.obj) is bytes and data.contiguous
    ):
        return data
    return bytes(data)
