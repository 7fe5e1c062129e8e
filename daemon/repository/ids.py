"""A new archive's id: the same in every storage it goes to, taken by none of them, and
claimed for this process before a byte is written (docs/repository.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import structlog

from daemon.repository.layout import SAFETY_MARK, ArchiveKey
from daemon.repository.store import Repository, committed_backups

log = structlog.get_logger()


def allocate_key(
    repositories: Iterable[Repository], policy: str, volume: str, stamp: str, *, safety: bool
) -> ArchiveKey:
    """Given the repositories a new archive goes to, return a key for it that none of them
    uses yet (the same id in every storage), claimed for this process in each.

    The listings name the ids taken; the claims, conditional creates, settle what they
    cannot see (an archive being written elsewhere, a listing that lags behind): an id that
    another process claims in any storage is given up for the next. A storage that cannot
    be read or written now is passed over: its copy will try the claim again when it
    begins, and fail on its own. The backups a listing shows dated after the new id are
    warned about (`_warn_of_the_future`).
    """
    repositories = list(repositories)
    listed: dict[str, dict[ArchiveKey, set[str]]] = {}
    for repository in repositories:
        with contextlib.suppress(OSError):
            listed[repository.name] = repository.files(policy, volume)
    taken = {key.id for files in listed.values() for key in files}
    mark = SAFETY_MARK if safety else ""
    namespace = repositories[0].host if repositories else ""
    counter = 1
    while True:
        candidate = f"{stamp}{mark}" if counter == 1 else f"{stamp}-{counter}{mark}"
        key = ArchiveKey(policy, volume, candidate, namespace)
        if candidate not in taken and _claim_everywhere(repositories, key):
            _warn_of_the_future(listed, key)
            return key
        counter += 1


def _warn_of_the_future(listed: dict[str, dict[ArchiveKey, set[str]]], key: ArchiveKey) -> None:
    """Given each storage's listing of the volume's archive files, warn about its backups
    dated after the new archive `key`: a clock went back, or the host that wrote them had
    one ahead. They take keep_last places until then."""
    for storage, files in listed.items():
        later = [other.id for other in committed_backups(files) if other > key]
        if later:
            log.warning(
                "archives dated after the new one: is a clock wrong?",
                storage=storage,
                archives=later,
            )


def _claim_everywhere(repositories: list[Repository], key: ArchiveKey) -> bool:
    """Claim the key in every repository that answers; return False (releasing the claims
    made) if another process claims it in one of them."""
    claimed: list[Repository] = []
    for repository in repositories:
        try:
            if not repository.claim(key):
                break
        except OSError:
            continue
        claimed.append(repository)
    else:
        return True
    for repository in claimed:
        with contextlib.suppress(OSError):  # left behind: garbage once this process is gone
            repository.release(key)
    return False
