"""Manifest files as a test (or an operator with stock tools) reads and edits them: a JSON
summary, a newline, then the entries section (zstd, then age if the archive is encrypted)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.archive.manifest import Manifest, read_entries
from daemon.archive.tarstream import Member


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Given a manifest file's bytes, return its summary and its entries section."""
    document, end = json.JSONDecoder().raw_decode(raw.decode("latin-1"))
    assert raw[end : end + 1] == b"\n", "a newline follows the summary"
    return document, raw[end + 1 :]


def summary(path: Path) -> dict[str, Any]:
    return split(path.read_bytes())[0]


def section(path: Path) -> bytes:
    return split(path.read_bytes())[1]


def entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a manifest in clear, as `list --files --json` shows them."""
    return [member.to_json() for member in read_entries(io.BytesIO(path.read_bytes()))]


def rewrite_summary(path: Path, document: dict[str, Any]) -> None:
    """Replace the summary, keeping the entries section as it is."""
    path.write_bytes(json.dumps(document).encode() + b"\n" + section(path))


def rewrite_entries(
    path: Path, edit: Callable[[Member], Member], *, digests: bool | None = None
) -> None:
    """Rewrite a clear manifest with `edit` applied to each entry, the summary otherwise
    as it was; `digests` True writes the entries as `volkeep-entries-1` (with content
    digests), False as `volkeep-entries-2` (None: as they were)."""
    manifest = Manifest.from_json(path.read_bytes())
    if digests is not None:
        manifest.content_digests = digests
    manifest.entries = [edit(member) for member in read_entries(io.BytesIO(path.read_bytes()))]
    path.write_bytes(manifest.to_json())
