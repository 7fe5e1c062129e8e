"""A sealed section kept aside until it is stored: zstd, then age to the recipients (see
`daemon.archive.sealing`), into an unnamed spool file (memory up to SPOOL_MEMORY, then a
file in `spool_dir` that a crash leaves nowhere). Its SHA-256 names it in the store.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from daemon.archive.digest import HashingWriter
from daemon.archive.sealing import SectionWriter
from daemon.config.keys import Recipient

SPOOL_MEMORY = 1 << 20
READ_SIZE = 1 << 20


class SpooledSection:
    """Takes plain bytes by `write`; after `finish`, `stored()` yields the stored bytes."""

    def __init__(self, recipients: Sequence[Recipient] = (), spool_dir: Path | None = None) -> None:
        where = str(spool_dir) if spool_dir else None
        self._spool = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=where)  # noqa: SIM115
        self._stored = HashingWriter(self._spool)
        self._section = SectionWriter(self._stored, recipients)
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._section.write(data)

    def finish(self) -> None:
        """End the section. Raise OSError if the spool cannot take it."""
        self._section.finish()
        self._finished = True

    @property
    def size(self) -> int:
        return self._stored.size

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the stored bytes (complete once finished)."""
        return self._stored.hexdigest()

    def stored(self) -> Iterator[bytes]:
        """Yield the stored bytes, from the start again at each call (one per storage)."""
        assert self._finished, "finish the section first"
        self._spool.seek(0)
        while piece := self._spool.read(READ_SIZE):
            yield piece

    def close(self) -> None:
        self._section.close()
        self._spool.close()

    def __enter__(self) -> SpooledSection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
