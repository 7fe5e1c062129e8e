"""SHA-256 and byte counts of the stored bytes, taken as they pass in either direction."""

from __future__ import annotations

import hashlib
import queue
import threading
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


class BackgroundSha256:
    """SHA-256 taken on a thread of its own (hashlib releases the GIL while it hashes a
    large piece): `update` keeps what it is given (`kept`: copied only if it may change),
    and hands over every PIECE bytes. Memory: at most three pieces' worth of the stream
    (256 KiB each: hashlib releases the GIL from 2 KiB on, and 1 MiB pieces added to a
    first backup's peak RSS), and the buffers the kept views hold alive."""

    PIECE = 1 << 18

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self._pieces: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._parts.append(kept(data))
        self._size += len(data)
        if self._size >= self.PIECE:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._hash_pieces, name="volkeep-sha256", daemon=True
                )
                self._thread.start()
            self._pieces.put(self._parts)
            self._parts, self._size = [], 0

    def _hash_pieces(self) -> None:
        while (parts := self._pieces.get()) is not None:
            for part in parts:
                self._sha256.update(part)

    def close(self) -> None:
        """Wait until every piece handed over is hashed; end the thread."""
        if self._thread is not None:
            self._pieces.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        """Return the SHA-256 of everything given so far."""
        self.close()
        for part in self._parts:
            self._sha256.update(part)
        self._parts, self._size = [], 0
        return self._sha256.hexdigest()
