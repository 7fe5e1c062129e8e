"""A drill's sampled check of packs against their names (docs/format-dedup.md, "Reading an
archive back").

A drill reads the packs its archive uses and checks each against its name. The packs no
recent archive uses would only be read by a restore of an older archive, when it is too
late: so each drill of a deduplicated archive also reads a few packs of its chunk
repository, in turn, and checks that the SHA-256 of their stored bytes is their name (no
identity is needed: the name is taken of the bytes as stored). The turn is kept in the
state dir beside the chunk index cache (the name of the last pack checked): the packs are
taken in the order of their names from the one after it, wrapping around, so that every
pack is checked within CYCLE drills, and packs added since join the turn where their names
fall. Losing that file only starts the turn again.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
from bisect import bisect_right
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from daemon.archive.packs import pack_key
from daemon.repository.chunks import ChunkStore
from daemon.storage.base import BlobMissing
from daemon.system.files import publish

CYCLE = 30  # drills within which every pack is checked once
MOST_PACKS = 16  # packs one drill checks at most (8 MiB each): a bound on its reads


@dataclass(frozen=True)
class PackCheck:
    """What a sampled check read: the packs checked and those whose bytes are not their
    name."""

    checked: tuple[str, ...]
    damaged: tuple[str, ...]


def packs_in_turn(names: Collection[str], last: str | None) -> list[str]:
    """Given a chunk repository's pack names and the last one checked (None: none yet),
    return the packs this drill checks: ceil(len / CYCLE) of them, at least 1 and at most
    MOST_PACKS, those after `last` in the order of their names, wrapping around."""
    ordered = sorted(names)
    if not ordered:
        return []
    count = min(max(1, math.ceil(len(ordered) / CYCLE)), MOST_PACKS, len(ordered))
    start = bisect_right(ordered, last) if last is not None else 0
    return [ordered[(start + number) % len(ordered)] for number in range(count)]


def check_packs_in_turn(chunks: ChunkStore, state_dir: Path | None) -> PackCheck:
    """Given a chunk repository and the state dir (None: no turn kept, the first packs
    are checked), check the packs whose turn it is against their names and move the turn
    on. Raise OSError if the storage fails."""
    names = chunks.pack_names()
    turn = chunks.cache_path(state_dir).with_suffix(".checked") if state_dir else None
    last = None
    if turn is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            last = turn.read_text().strip() or None
    checked, damaged = [], []
    for name in packs_in_turn(names, last):
        try:
            stored = chunks.repository.store.get(chunks.directory + pack_key(name))
        except BlobMissing:  # freed by garbage collection since it was listed
            continue
        checked.append(name)
        if hashlib.sha256(stored).hexdigest() != name:
            damaged.append(name)
    if turn is not None and checked:
        _keep_turn(turn, checked[-1])
    return PackCheck(tuple(checked), tuple(damaged))


def _keep_turn(turn: Path, last: str) -> None:
    """Write the name of the last pack checked (a cache: a failure to write is no fault)."""
    with contextlib.suppress(OSError):
        turn.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=turn.parent, delete=False) as temporary:
            temporary.write(last + "\n")
        publish(Path(temporary.name), turn)
