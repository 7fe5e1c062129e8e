"""Which copy: the first of a policy's storages that holds an archive (SPEC promise 14)."""

from __future__ import annotations

from daemon.errors import OperationError
from daemon.repository.layout import ArchiveKey
from daemon.repository.store import Repository


def locate(
    repositories: list[Repository], policy: str, volume: str, archive_id: str | None
) -> tuple[Repository, ArchiveKey]:
    """Given a policy's repositories in its order, a volume and an archive id (None or
    "latest": the newest backup in any of them), return the first repository that holds
    the archive, and its key. A storage that cannot be read is passed over (and named if
    the archive is found nowhere). Raise OperationError if no storage holds it."""
    unreadable: list[OperationError] = []
    found: list[tuple[Repository, ArchiveKey]] = []
    for repository in repositories:
        try:
            found.append((repository, repository.find(policy, volume, archive_id)))
        except OperationError:
            continue
        except OSError as error:
            unreadable.append(repository.failure(error, "cannot list the archives"))
            continue
        if archive_id not in (None, "latest"):
            break
    if not found:
        names = ", ".join(repository.name for repository in repositories)
        where = f"storage {names!r}" if len(repositories) == 1 else f"storages {names}"
        what = "no archive" if archive_id in (None, "latest") else "no such archive"
        reasons = "".join(f"; {error.message}" for error in unreadable)
        raise OperationError(
            f"{what} in {where}{reasons} (see volkeep list)",
            policy=policy,
            volume=volume,
            archive=None if archive_id in (None, "latest") else archive_id,
        )
    # the newest id wins; among equals, the first storage in the policy's order
    newest = max(key for _, key in found)
    return next((repository, key) for repository, key in found if key == newest)
