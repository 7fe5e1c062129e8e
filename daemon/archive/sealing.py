"""The manifest's entries section on its way to storage and back: zstd, then, for an
encrypted archive, age to the archive's own recipients (the entries hold every path and
digest of the volume: they stay sealed, while the summary stays clear, SPEC §4).

Both directions stream: memory is a compression window and a few pieces, whatever the
number of entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Protocol, cast

import zstandard

from daemon.archive.compression import Sink
from daemon.archive.encryption import EncryptingWriter, decrypting_reader, encrypting_writer
from daemon.config.keys import Identities, Recipient

# zstd level 3: levels up to 9 save about 2% of the section, at twice the time or more
# (measured on a million small files); 19 saves 2% more at fifty times the time.
LEVEL = 3
MAX_WINDOW = 1 << 23  # what a hostile section may make the decompressor allocate


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Opened(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Decrypt = Callable[[Readable], Opened]


class SectionWriter:
    """Compresses (and seals) what it is given into the sink; `finish` ends the section."""

    def __init__(self, sink: Sink, recipients: Sequence[Recipient] = ()) -> None:
        self._sealing: EncryptingWriter | None = None
        target = sink
        if recipients:
            target = self._sealing = encrypting_writer(sink, recipients)
        compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
        self._compressing = compressor.stream_writer(cast(IO[bytes], target), closefd=False)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._compressing.write(data)

    def finish(self) -> None:
        """End the zstd frame and the age file. Raise what the sink raised."""
        self._compressing.flush(zstandard.FLUSH_FRAME)
        if self._sealing is not None:
            self._sealing.finish()

    def close(self) -> None:
        """Abandon an unfinished section (stops the age worker); harmless after `finish`."""
        if self._sealing is not None:
            self._sealing.close()


def opener(identities: Identities, encrypted_to: Sequence[str]) -> Decrypt:
    """Given identities, return what opens a sealed section with them; reading it raises
    EncryptionError (NoIdentityMatches, ArchiveModified) when it cannot be opened."""

    def decrypt(source: Readable) -> Opened:
        return decrypting_reader(source, identities, encrypted_to=encrypted_to)

    return decrypt


@contextmanager
def section_reader(source: Readable, decrypt: Decrypt | None) -> Iterator[Readable]:
    """Given the stored bytes of a section (sealed if `decrypt` is given), yield the reader
    of its plain entries; reading raises zstandard.ZstdError for damaged bytes."""
    plain = decrypt(source) if decrypt is not None else None
    try:
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        yield decompressor.stream_reader(cast(IO[bytes], plain or source), closefd=False)
    finally:
        if plain is not None:
            plain.close()
