"""The manifest: the commit marker of an archive and its complete description (SPEC §4).

A manifest file (format 2) is a JSON summary, a newline, then the entries section:

    {
     "format": 2,
     "tool": {...}, "id": ..., "policy": ..., "volume": {...}, "host": ..., "archive": {...},
     ...
     "entries": {"count": 200000, "hardlinks": 0, "encoding": "volkeep-entries-1",
                 "compression": "zstd", "encryption": null, "size": 6600123, "sha256": "..."}
    }
    <size bytes: zstd of the entries, then age to the archive's recipients if it is encrypted>

The summary is all that list, status, prune and retention read, and it reads without the
entries. The entries (one per object, in the tar stream's order: daemon.archive.entries)
are written as the backup meets the members, into a spool (memory up to SPOOL_MEMORY, then
an unnamed file in the state dir, gone with the process), and streamed from it when the
manifest is published; readers stream them from the stored manifest. No step holds them
all (SPEC §5.7).

Format 3 is format 2 for a deduplicated archive (docs/format-dedup.md): `archive` names
its recipe and says `"layout": "deduplicated"`, `tar` adds the tar's SHA-256, and `chunks`
counts what the backup stored. Format 2 stays what a one-file archive writes. The entries
of a one-file archive are `volkeep-entries-1` (each regular file's SHA-256 included); a
deduplicated archive's are `volkeep-entries-2` (no content digest: its recipe's chunk ids
identify each file's content), or `volkeep-entries-1` when written before that.

Format 1 manifests (one JSON document: entries one per line, or `sealed_entries`, age of
zstd of JSON lines, for an encrypted archive) stay readable.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import zstandard

from daemon import __version__
from daemon.archive.encryption import NoIdentityMatches
from daemon.archive.entries import (
    DIGESTED,
    ENCODINGS,
    UNDIGESTED,
    EntryEncoder,
    EntryFormatError,
    decode_entries,
)
from daemon.archive.sealing import Decrypt, Readable, SectionWriter, section_reader
from daemon.archive.tarstream import Member
from daemon.config.keys import EncryptionError, Recipient
from daemon.rules.shrink import Content

FORMAT_VERSION = 2
DEDUPLICATED_FORMAT = 3
LEGACY_FORMAT = 1
SINGLE = "single"  # layouts: one archive file (formats 1 and 2)
DEDUPLICATED = "deduplicated"  # a recipe and chunks in packs (format 3)
ENTRIES_MARKER = b',\n "entries": ['  # format 1: the entries come last, one per line
SPOOL_MEMORY = 1 << 20  # entries sections up to this stay in memory; larger ones spill
READ_SIZE = 64 << 10
MAX_SUMMARY = 1 << 20
_FORMAT_2 = re.compile(rb'\{\s*"format"\s*:\s*[23]\s*[,}]')  # summary, then entries


class ManifestError(ValueError):
    """A manifest that cannot be read or lacks a required field."""


@dataclass(frozen=True)
class ChunkCounts:
    """What a deduplicated backup stored: its chunks, how many were new, in how many new
    packs, and the stored bytes it added to each storage (new packs and the index)."""

    chunks: int
    new_chunks: int
    new_packs: int
    added_bytes: int


@dataclass(frozen=True)
class FileListing:
    """How a deduplicated backup read the volume (docs/format-dedup.md, "Skipping unchanged
    files"): when the helper listed it, when the full read happened that its unchanged
    members go back to, the helper image, and how many members it read or took from the
    previous archive."""

    listed: datetime
    full_read: datetime
    helper_image: str
    read: int
    reused: int
    read_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "listed": self.listed.isoformat(),
            "full_read": self.full_read.isoformat(),
            "helper_image": self.helper_image,
            "read": self.read,
            "reused": self.reused,
            "read_bytes": self.read_bytes,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> FileListing:
        return cls(
            datetime.fromisoformat(document["listed"]),
            datetime.fromisoformat(document["full_read"]),
            document["helper_image"],
            document["read"],
            document["reused"],
            document["read_bytes"],
        )


class EntriesSealed(ManifestError):
    """The entries are encrypted and no identity was given to open them."""

    def __init__(self, recipients: list[str]) -> None:
        self.recipients = recipients
        super().__init__(f"the archive is encrypted to {', '.join(recipients) or 'age recipients'}")


@dataclass
class Manifest:
    """An archive's summary; `entries` are its objects when read with them (streamed
    again at each iteration from where they are kept)."""

    id: str
    policy: str
    volume: str
    started: datetime
    finished: datetime
    archive_file: str
    size: int
    sha256: str
    compression: str
    compression_level: int | None
    tar_flavour: str
    tar_size: int
    host: str
    kind: str = "backup"  # "backup", or "safety" for the copy taken before a forced restore
    volume_driver: str = "local"
    volume_labels: dict[str, str] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    encryption: str | None = None  # "age", or None
    recipients: list[str] = field(default_factory=list)  # the age public keys
    tool_version: str = __version__
    entry_count: int = 0
    hardlinks: int | None = None  # hard-link entries; None: not recorded (format 1)
    layout: str = SINGLE  # DEDUPLICATED: `archive_file` is the recipe (format 3)
    tar_sha256: str | None = None  # the tar's SHA-256 (format 3)
    chunk_counts: ChunkCounts | None = None  # format 3
    files: FileListing | None = None  # format 3, when the helper listed the volume
    # whether the entries carry each regular file's SHA-256 (False: volkeep-entries-2, a
    # deduplicated archive whose recipe identifies the content)
    content_digests: bool = True
    entries: Iterable[Member] = field(default=(), compare=False, repr=False)

    @property
    def added_bytes(self) -> int:
        """The stored bytes the backup added to its storage: the archive file, and for a
        deduplicated archive (whose file is its recipe) the new packs and index too."""
        counts = self.chunk_counts
        return self.size + (counts.added_bytes if counts is not None else 0)

    @property
    def content(self) -> Content:
        """What the volume held, as the shrink guard measures it: the objects and the tar's
        bytes, which every format records."""
        return Content(self.entry_count, self.tar_size)

    def to_json(self) -> bytes:
        """Return the manifest file of a manifest whose entries are at hand (in clear):
        the JSON summary, then the entries section."""
        with ManifestWriter(digests=self.content_digests) as writer:
            for entry in self.entries:
                writer.add(entry)
            writer.finish()
            return b"".join(writer.chunks(self))

    def document(self, entries: dict[str, Any]) -> dict[str, Any]:
        """Return the JSON summary, with `entries` describing the entries section."""
        document: dict[str, Any] = {
            "format": DEDUPLICATED_FORMAT if self.layout == DEDUPLICATED else FORMAT_VERSION,
            "tool": {"name": "volkeep", "version": self.tool_version},
            "id": self.id,
            "kind": self.kind,
            "policy": self.policy,
            "volume": {
                "name": self.volume,
                "driver": self.volume_driver,
                "labels": self.volume_labels,
            },
            "host": self.host,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "archive": {
                "file": self.archive_file,
                "size": self.size,
                "sha256": self.sha256,
                "compression": self.compression,
                "compression_level": self.compression_level,
                "encryption": self.encryption,
                "recipients": self.recipients,
            },
            "tar": {"flavour": self.tar_flavour, "size": self.tar_size},
            "exclude": self.exclude,
            "entries": entries,
        }
        if self.layout == DEDUPLICATED:
            document["archive"]["layout"] = DEDUPLICATED
            document["tar"]["sha256"] = self.tar_sha256
            counts = self.chunk_counts or ChunkCounts(0, 0, 0, 0)
            document["chunks"] = {
                "count": counts.chunks,
                "new": counts.new_chunks,
                "new_packs": counts.new_packs,
                "added_bytes": counts.added_bytes,
            }
            if self.files is not None:
                document["files"] = self.files.to_json()
        return document

    @classmethod
    def read(cls, source: Readable) -> Manifest:
        """Given a manifest file being read, return its summary (reading no further than
        the summary, for format 2). Raise ManifestError."""
        with _translated():
            return _summary(_open(source))

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Given the bytes of a manifest file, return its summary. Raise ManifestError."""
        return cls.read(io.BytesIO(raw))


def read_entries(source: Readable, decrypt: Decrypt | None = None) -> Iterator[Member]:
    """Given a manifest file being read, yield its entries, streamed. Sealed entries (an
    encrypted archive's) are opened with `decrypt`; raise EntriesSealed without it,
    NoIdentityMatches if it cannot open them, ManifestError if they are damaged."""
    with _translated():
        opened = _open(source)
        summary = _summary(opened)
        if opened.document["format"] in (FORMAT_VERSION, DEDUPLICATED_FORMAT):
            yield from _section_entries(source, opened, summary, decrypt)
        elif opened.whole is not None:
            yield from (Member.from_json(entry) for entry in opened.whole)
        elif "sealed_entries" in opened.document:
            if decrypt is None:
                raise EntriesSealed(summary.recipients)
            sealed = io.BytesIO(base64.b64decode(opened.document["sealed_entries"]))
            with section_reader(sealed, decrypt) as plain:
                yield from _counted(_json_lines(plain, b""), summary.entry_count)
        else:
            yield from _counted(_json_lines(source, opened.after), summary.entry_count)


class ManifestWriter:
    """Takes a backup's members as they pass and keeps its entries section, compressed
    (and sealed to `recipients`), until the manifest is written with `chunks`. With
    `digests` off, the section leaves out the members' content digests
    (`volkeep-entries-2`)."""

    def __init__(
        self,
        spool_dir: Path | None = None,
        recipients: Sequence[Recipient] = (),
        *,
        digests: bool = True,
    ) -> None:
        # An unnamed temporary file once it spills: a crash leaves nothing behind.
        where = str(spool_dir) if spool_dir else None
        self._spool = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=where)  # noqa: SIM115
        self._stored = _HashingSink(self._spool)
        self._section = SectionWriter(self._stored, recipients)
        self.digests = digests
        self.encoding = DIGESTED if digests else UNDIGESTED
        self._encoder = EntryEncoder(self.encoding)
        self._finished = False
        self.encryption = "age" if recipients else None
        self.count = 0
        self.hardlinks = 0

    def add(self, member: Member) -> None:
        """Add the next member (the TarScanner's `done`)."""
        full = self._encoder.add(member)
        self.count += 1
        if member.type == "hardlink":
            self.hardlinks += 1
        if full:
            self._section.write(self._encoder.block())

    def finish(self) -> None:
        """End the entries section. Raise OSError if the spool cannot take it."""
        self._section.write(self._encoder.block())
        self._section.finish()
        self._finished = True

    def chunks(self, manifest: Manifest) -> Iterator[bytes]:
        """Yield the manifest file: the summary of `manifest` with this section's counts,
        then the section. Each call yields it whole again (one call per storage)."""
        assert self._finished, "finish the entries section first"
        section = {
            "count": self.count,
            "hardlinks": self.hardlinks,
            "encoding": self.encoding,
            "compression": "zstd",
            "encryption": self.encryption,
            "size": self._stored.size,
            "sha256": self._stored.hexdigest(),
        }
        yield json.dumps(manifest.document(section), indent=1).encode() + b"\n"
        self._spool.seek(0)
        while piece := self._spool.read(1 << 20):
            yield piece

    @property
    def spool_bytes(self) -> int:
        """The entries section's size so far (what the spool holds)."""
        return self._stored.size

    def close(self) -> None:
        self._section.close()
        self._spool.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _HashingSink:
    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha256.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        """zstandard's stream writer flushes its sink."""

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


@dataclass
class _Opened:
    """A manifest file read as far as the end of its summary."""

    document: dict[str, Any]
    after: bytes  # what was read past the summary
    whole: list[Any] | None = None  # format 1 not laid out one entry a line: its entries


def _open(source: Readable) -> _Opened:
    head = source.read(READ_SIZE)
    if _FORMAT_2.match(head):
        return _open_summary(source, head)
    return _open_legacy(source, bytearray(head))


def _open_summary(source: Readable, buffer: bytes) -> _Opened:
    """Read a format 2 summary: the JSON document at the start, then one newline."""
    decoder = json.JSONDecoder()
    while True:
        try:
            _, end = decoder.raw_decode(buffer.decode("latin-1"))  # byte offsets kept
            break
        except json.JSONDecodeError:
            more = source.read(READ_SIZE) if len(buffer) <= MAX_SUMMARY else b""
            if not more:
                raise
            buffer += more
    if len(buffer) == end:
        buffer += source.read(READ_SIZE)
    if buffer[end : end + 1] != b"\n":
        raise ManifestError("no entries section after the summary")
    document: dict[str, Any] = json.loads(buffer[:end])
    return _Opened(document, buffer[end + 1 :])


def _open_legacy(source: Readable, buffer: bytearray) -> _Opened:
    """Read a format 1 manifest: up to its entries if they are one a line, else whole."""
    searched = 0
    while (marker := buffer.find(ENTRIES_MARKER, searched)) < 0:
        searched = max(0, len(buffer) - len(ENTRIES_MARKER))
        more = source.read(READ_SIZE)
        if not more:
            document: dict[str, Any] = json.loads(buffer)
            legacy = document.get("format") == LEGACY_FORMAT
            return _Opened(document, b"", whole=document["entries"] if legacy else [])
        buffer += more
    document = json.loads(buffer[:marker] + b', "entries": []}')
    return _Opened(document, bytes(buffer[marker + len(ENTRIES_MARKER) :]))


def _summary(opened: _Opened) -> Manifest:
    document = opened.document
    version = document.get("format")
    if version in (FORMAT_VERSION, DEDUPLICATED_FORMAT):
        entries = document["entries"]
        count, hardlinks = entries["count"], entries["hardlinks"]
    elif version == LEGACY_FORMAT:
        whole = opened.whole
        count = len(whole) if whole is not None else document["entry_count"]
        hardlinks = None
    else:
        raise ManifestError(f"unknown manifest format {version!r}")
    archive = document["archive"]
    volume = document["volume"]
    layout, tar_sha256, counts, files = SINGLE, None, None, None
    content_digests = version == LEGACY_FORMAT or document["entries"]["encoding"] != UNDIGESTED
    if version == DEDUPLICATED_FORMAT:
        if "files" in document:
            files = FileListing.from_json(document["files"])
        layout, tar_sha256 = archive["layout"], document["tar"]["sha256"]
        if layout != DEDUPLICATED:
            raise ManifestError(f"unknown archive layout {layout!r}")
        chunks = document["chunks"]
        counts = ChunkCounts(
            chunks["count"], chunks["new"], chunks["new_packs"], chunks["added_bytes"]
        )
    elif not content_digests:  # only a recipe can stand for the content digests
        raise ManifestError(f"{UNDIGESTED} entries in a manifest of format {version}")
    return Manifest(
        id=document["id"],
        kind=document["kind"],
        policy=document["policy"],
        volume=volume["name"],
        volume_driver=volume["driver"],
        volume_labels=volume["labels"],
        host=document["host"],
        started=datetime.fromisoformat(document["started"]),
        finished=datetime.fromisoformat(document["finished"]),
        archive_file=archive["file"],
        size=archive["size"],
        sha256=archive["sha256"],
        compression=archive["compression"],
        compression_level=archive["compression_level"],
        encryption=archive["encryption"],
        recipients=archive.get("recipients") or [],
        tar_flavour=document["tar"]["flavour"],
        tar_size=document["tar"]["size"],
        exclude=document["exclude"],
        tool_version=document["tool"]["version"],
        entry_count=count,
        hardlinks=hardlinks,
        layout=layout,
        tar_sha256=tar_sha256,
        chunk_counts=counts,
        files=files,
        content_digests=content_digests,
    )


class _Section:
    """The entries section's stored bytes, read up to their recorded size and hashed."""

    def __init__(self, source: Readable, start: bytes, size: int) -> None:
        self._source = source
        self._start = start
        self._left = size
        self._sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        wanted = self._left if size < 0 else min(size, self._left)
        if self._start:
            data, self._start = self._start[:wanted], self._start[wanted:]
        else:
            data = self._source.read(wanted)
        self._sha256.update(data)
        self._left -= len(data)
        if not data:
            raise ManifestError("the entries section is cut short")
        return data

    def check(self, sha256: str) -> None:
        """Read what is left; raise ManifestError unless the bytes are whole and alone."""
        while self.read(READ_SIZE):
            pass
        if self._start or self._source.read(1):
            raise ManifestError("bytes after the entries section")
        if self._sha256.hexdigest() != sha256:
            raise ManifestError("the entries section is damaged (SHA-256 mismatch)")


def _section_entries(
    source: Readable, opened: _Opened, summary: Manifest, decrypt: Decrypt | None
) -> Iterator[Member]:
    info = opened.document["entries"]
    if info["encoding"] not in ENCODINGS or info["compression"] != "zstd":
        raise ManifestError(f"unknown entries encoding {info['encoding']}+{info['compression']}")
    sealed = info["encryption"]
    if sealed not in (None, "age"):
        raise ManifestError(f"unknown entries encryption {sealed!r}")
    if sealed and decrypt is None:
        raise EntriesSealed(summary.recipients)
    stored = _Section(source, opened.after, info["size"])
    count = 0
    with section_reader(stored, decrypt if sealed else None) as plain:
        for member in decode_entries(plain.read, info["encoding"]):
            count += 1
            yield member
    stored.check(info["sha256"])
    if count != info["count"]:
        raise ManifestError(f"{count} entries where the summary counts {info['count']}")


def _json_lines(source: Readable, start: bytes) -> Iterator[Member]:
    """Yield the format 1 entries written one a line (`{...}` or `{...},`) up to `]`."""
    pending = start
    while True:
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            line = line.rstrip(b",")
            if line.startswith(b"{"):
                yield Member.from_json(json.loads(line))
        more = source.read(READ_SIZE)
        if not more:
            if pending.startswith(b"{"):
                yield Member.from_json(json.loads(pending.rstrip(b",")))
            return
        pending += more


def _counted(members: Iterator[Member], count: int) -> Iterator[Member]:
    found = 0
    for member in members:
        found += 1
        yield member
    if found != count:
        raise ManifestError(f"{found} entries where the summary counts {count}")


@contextmanager
def _translated() -> Iterator[None]:
    """Turn what parsing a manifest raises into ManifestError (EntriesSealed and
    NoIdentityMatches pass as they are)."""
    try:
        yield
    except (ManifestError, NoIdentityMatches):
        raise
    except EncryptionError as error:
        raise ManifestError(f"cannot open the sealed entries: {error}") from None
    except (EntryFormatError, zstandard.ZstdError) as error:
        raise ManifestError(f"the entries are damaged: {error}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise ManifestError(f"unreadable manifest: {describe_error(error)}") from None


def describe_error(error: BaseException) -> str:
    """Given why a manifest could not be parsed, return it as a phrase (no Python repr)."""
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})"
    if isinstance(error, KeyError):
        return f"the field {error.args[0]!r} is missing"
    return str(error) or "a field has the wrong type"
