"""Shrink acceptances in a storage: an operator's word that a volume's shrink is meant.

One record per acceptance, in the volume's directory of this host's namespace:
`<host>/<policy>/<volume>/<volume>.shrink-accepted.<id>.json`, `<id>` being the shrinking
backup's archive id (format: docs/retention.md). The name starts with `<volume>.`, never
`<volume>-` as archive files do: listings, retention and garbage collection pass it over,
so it outlives the archives it names. It must: the shrinking archive is rotated away long
before older archives are, and an acceptance that went with it would let the guard catch
the same loss again, between an older archive and a newer empty one.
"""

from __future__ import annotations

import structlog

from daemon.repository.layout import ArchiveKey, volume_directory
from daemon.repository.store import Repository
from daemon.rules.shrink import Acceptance

log = structlog.get_logger()

MARK = ".shrink-accepted."
SUFFIX = ".json"


def acceptance_blob(key: ArchiveKey) -> str:
    """Given the shrinking backup's key, return where its acceptance is recorded."""
    return f"{key.directory}{key.volume}{MARK}{key.id}{SUFFIX}"


def read_acceptances(repository: Repository, policy: str, volume: str) -> list[Acceptance]:
    """Given a volume, return the shrink acceptances recorded in the repository for it.

    A record that cannot be read is logged and passed over: the guard then holds, the
    safe side. Raise OSError if the storage cannot be listed or read.
    """
    found = []
    for namespace in repository.namespaces():
        directory = volume_directory(namespace, policy, volume)
        for blob in repository.store.list(directory):
            name = blob[len(directory) :]
            if not (name.startswith(volume + MARK) and name.endswith(SUFFIX)) or "/" in name:
                continue
            try:
                found.append(Acceptance.from_bytes(repository.store.get(blob)))
            except ValueError as error:
                log.warning(
                    "passed over an unreadable shrink acceptance", file=blob, error=str(error)
                )
    return found


def write_acceptance(repository: Repository, key: ArchiveKey, acceptance: Acceptance) -> None:
    """Record the acceptance of the shrink to the backup `key` in this host's namespace.
    Raise OperationError naming the storage if it cannot be written."""
    repository.require_own()
    try:
        repository.store.put(acceptance_blob(key), acceptance.to_bytes())
    except OSError as error:
        raise repository.failure(error, "cannot record the shrink acceptance", key) from None
