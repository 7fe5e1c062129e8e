"""Garbage: what this host keeps of a volume that no committed manifest references and no
living process writes (SPEC promise 15). The rules, in this one place (docs/repository.md):

- Where: this host's namespace, and the layout before host names exactly in
  `<policy>/<volume>/`, never a directory below it (another host's, whose name is a
  policy's).
- What: uploads never completed (partial files, multipart uploads); the files of an id
  without a manifest (archive file, drill record); claims no longer needed.
- Which: only the abandoned (`abandoned`). The owner of an upload is its writer if the
  store records it, else the process that claims its id; of a file, its id's claimant.
- Last: an archive file is deleted only if its manifest does not exist, asked of the store
  right before (a listing may lag behind writes); a claim goes last.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from daemon.repository.layout import (
    CLAIM_SUFFIX,
    MANIFEST_SUFFIX,
    ArchiveKey,
    split_name,
    volume_directory,
)
from daemon.repository.store import Repository
from daemon.storage.base import Incomplete
from daemon.system.owner import owner_is_alive, owner_is_gone, this_process

# What no owner can be told of (an older volkeep's leftover, another machine's) is left
# alone this long after its last write: a day outlasts any backup's upload.
MARGIN = timedelta(hours=24)


def abandoned(owner: str | None, touched: datetime | Callable[[], datetime], now: datetime) -> bool:
    """Given the process that owns something (None: unknown), when it was last written to
    (or how to ask, if the owner does not settle it), and now, say whether it is abandoned:
    its owner is this process (which holds the volume's lock, so writes none of it now) or
    has ended; or no owner can be told of and it is older than MARGIN. A living owner's is
    never abandoned."""
    if owner is not None:
        if owner == this_process() or owner_is_gone(owner):
            return True
        if owner_is_alive(owner):
            return False
    return now - (touched() if callable(touched) else touched) > MARGIN


def remove_garbage(
    repository: Repository, policy: str, volume: str, *, now: datetime | None = None
) -> list[str]:
    """Remove this host's abandoned garbage of the volume; return the keys removed. Hold
    the volume's lock. Raise OperationError if the repository is another host's, OSError
    if the storage fails."""
    repository.require_own()
    now = now or datetime.now(UTC)
    removed: list[str] = []
    for namespace in repository.namespaces():
        removed += _remove_in(repository, namespace, policy, volume, now)
    return sorted(removed)


def _remove_in(
    repository: Repository, namespace: str, policy: str, volume: str, now: datetime
) -> list[str]:
    """Remove the volume's abandoned garbage in one namespace; return the keys removed."""
    store = repository.store
    directory = volume_directory(namespace, policy, volume)
    files = {key.id: (key, suffixes) for key, suffixes in
             repository.files_in(namespace, policy, volume).items()}  # fmt: skip
    uploads: dict[str, list[Incomplete]] = {}
    for upload in store.incomplete(directory):
        split = split_name(upload.key[len(directory) :], volume)
        if split is not None:
            uploads.setdefault(split[0], []).append(upload)
    removed: list[str] = []
    for archive_id in files.keys() | uploads.keys():
        unlisted = ArchiveKey(policy, volume, archive_id, namespace)
        key, suffixes = files.get(archive_id, (unlisted, set()))
        claimant = repository.claim_owner(key) if CLAIM_SUFFIX in suffixes else None
        kept = False
        for upload in uploads.get(archive_id, []):
            if abandoned(upload.owner or claimant, upload.touched, now):
                store.remove_incomplete(upload)
                removed.append(upload.key)
            else:
                kept = True
        if MANIFEST_SUFFIX not in suffixes:
            for suffix in sorted(suffixes - {CLAIM_SUFFIX}):
                blob = key.blob(suffix)
                if not abandoned(claimant, partial(store.modified, blob), now):
                    kept = True
                elif not store.exists(key.blob(MANIFEST_SUFFIX)):
                    store.delete(blob)
                    removed.append(blob)
        claim = key.blob(CLAIM_SUFFIX)
        if (
            CLAIM_SUFFIX in suffixes
            and not kept
            and abandoned(claimant, partial(store.modified, claim), now)
        ):
            repository.release(key)
            removed.append(claim)
    return removed
