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


class BackgroundSha256:
    """SHA-256 taken on a thread of its own (hashlib releases the GIL while it hashes a
    large piece): `update` copies what it is given into a buffer, and hands each PIECE
    bytes over. Memory: at most three pieces (256 KiB each: hashlib releases the GIL
    from 2 KiB on, and 1 MiB pieces added to a first backup's peak RSS)."""

    PIECE = 1 << 18

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._buffer = bytearray()
        self._pieces: queue.Queue[bytearray | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= self.PIECE:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._hash_pieces, name="volkeep-sha256", daemon=True
                )
                self._thread.start()
            self._pieces.put(self._buffer)
            self._buffer = bytearray()

    def _hash_pieces(self) -> None:
        while (piece := self._pieces.get()) is not None:
            self._sha256.update(piece)

    def close(self) -> None:
        """Wait until every piece handed over is hashed; end the thread."""
        if self._thread is not None:
            self._pieces.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        """Return the SHA-256 of everything given so far."""
        self.close()
        self._sha256.update(self._buffer)
        self._buffer.clear()
        return self._sha256.hexdigest()
