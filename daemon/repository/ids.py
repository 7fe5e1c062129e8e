"""A new archive's id: the same in every storage it goes to, taken by none of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from daemon.repository.layout import SAFETY_MARK, ArchiveKey
from daemon.repository.store import Repository


def allocate_key(
    repositories: Iterable[Repository], policy: str, volume: str, stamp: str, *, safety: bool
) -> ArchiveKey:
    """Given the repositories a new archive goes to, return a key for it that none of them
    uses yet (the same id in every storage). A storage that cannot be read now is passed
    over: its copy will fail on its own, and its manifest's conditional create would refuse
    a taken id anyway."""
    repositories = list(repositories)
    taken: set[str] = set()
    for repository in repositories:
        with contextlib.suppress(OSError):
            taken |= {key.id for key in repository.files(policy, volume)}
    mark = SAFETY_MARK if safety else ""
    candidate, counter = f"{stamp}{mark}", 1
    while candidate in taken:
        counter += 1
        candidate = f"{stamp}-{counter}{mark}"
    return ArchiveKey(policy, volume, candidate, repositories[0].host if repositories else "")
