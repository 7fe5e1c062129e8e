"""The manifest: the commit marker of an archive and its complete description (SPEC §4)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon import __version__
from daemon.archive.encryption import EncryptionError, NoIdentityMatches
from daemon.archive.tarstream import Member

FORMAT_VERSION = 1
ENTRIES_MARKER = b',\n "entries": ['  # the entries come last, after the summary


class ManifestError(ValueError):
    """A manifest that cannot be read or lacks a required field."""


class EntriesSealed(ManifestError):
    """The entries are encrypted and no identity was given to open them."""

    def __init__(self, recipients: list[str]) -> None:
        self.recipients = recipients
        super().__init__(f"the archive is encrypted to {', '.join(recipients) or 'age recipients'}")


Unseal = Callable[[bytes], bytes]


@dataclass
class Manifest:
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
    entries: list[Member] = field(default_factory=list)
    # The entries of an encrypted archive hold every path: they are stored sealed (zstd,
    # then age to the same recipients), never in clear; the summary stays readable.
    sealed_entries: bytes | None = None

    def to_json(self) -> bytes:
        return b"".join(self.json_chunks())

    def json_chunks(self) -> Iterator[bytes]:
        """Yield the manifest's JSON piece by piece: the summary first, then one entry per
        line, so that writing the manifest of a million files needs no million dicts and
        readers that need only the summary can stop before the entries."""
        document = {
            "format": FORMAT_VERSION,
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
            "entry_count": len(self.entries),
        }
        if self.sealed_entries is not None:
            document["sealed_entries"] = base64.b64encode(self.sealed_entries).decode()
            yield json.dumps(document, indent=1)[:-2].encode() + ENTRIES_MARKER + b"]\n}\n"
            return
        yield json.dumps(document, indent=1)[:-2].encode() + ENTRIES_MARKER
        separator = b"\n"
        for entry in self.entries:
            yield separator + json.dumps(entry.to_json()).encode()
            separator = b",\n"
        yield b"\n ]\n}\n"

    def entry_lines(self) -> bytes:
        """The entries as JSON lines: what `sealed_entries` holds once sealed."""
        return b"".join(json.dumps(entry.to_json()).encode() + b"\n" for entry in self.entries)

    @classmethod
    def from_json(
        cls, raw: bytes, *, entries: bool = True, unseal: Unseal | None = None
    ) -> Manifest:
        """Given the bytes of a manifest file, return the Manifest; raise ManifestError.

        With `entries=False` the entries are not read (listing needs only the summary).
        Entries written one per line (as `json_chunks` does) are parsed one at a time, so
        that reading a manifest never holds a dict per file. Sealed entries (an encrypted
        archive's) are opened with `unseal`; raise EntriesSealed without it.
        """
        try:
            marker = raw.find(ENTRIES_MARKER)
            if marker >= 0:
                document: dict[str, Any] = json.loads(raw[:marker] + b', "entries": []}')
                sealed = document.get("sealed_entries")
                if sealed is not None and entries:
                    if unseal is None:
                        raise EntriesSealed(document["archive"].get("recipients") or [])
                    lines = unseal(base64.b64decode(sealed))
                    members = _entry_lines(b"\n" + lines, 0)
                else:
                    members = _entry_lines(raw, marker + len(ENTRIES_MARKER)) if entries else []
            if marker < 0 or (entries and len(members) != document.get("entry_count")):
                document = json.loads(raw)  # not written by json_chunks: read it whole
                members = [Member.from_json(entry) for entry in document["entries"]]
            if document.get("format") != FORMAT_VERSION:
                raise ManifestError(f"unknown manifest format {document.get('format')!r}")
            archive = document["archive"]
            volume = document["volume"]
            return cls(
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
                entries=members if entries else [],
            )
        except ManifestError:
            raise
        except NoIdentityMatches:
            raise
        except EncryptionError as error:
            raise ManifestError(f"cannot open the sealed entries: {error}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ManifestError(f"unreadable manifest: {describe_error(error)}") from None


def describe_error(error: Exception) -> str:
    """Given why a manifest could not be parsed, return it as a phrase (no Python repr)."""
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})"
    if isinstance(error, KeyError):
        return f"the field {error.args[0]!r} is missing"
    return str(error) or "a field has the wrong type"


def _entry_lines(raw: bytes, start: int) -> list[Member]:
    """Given a manifest and where its entries start, parse the entries line by line."""
    members = []
    position = start
    while (end := raw.find(b"\n", position + 1)) >= 0:
        line = raw[position + 1 : end].rstrip(b",")
        position = end
        if line.startswith(b"{"):
            members.append(Member.from_json(json.loads(line)))
    return members
