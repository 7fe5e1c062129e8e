"""Garbage at a daemon's start: the partial and uncommitted archive files a crash left in
this host's namespace of every storage (SPEC promise 15)."""

from __future__ import annotations

import structlog

from daemon.actions.context import Context
from daemon.errors import OperationError
from daemon.repository.garbage import remove_garbage
from daemon.state.locks import volume_lock

log = structlog.get_logger()


def remove_incomplete_archives(ctx: Context) -> None:
    """Remove this host's partial and uncommitted archive files of every policy's volumes in
    each of its storages, except those of volumes an operation holds the lock of (it may be
    writing)."""
    for policy in ctx.config.policies.values():
        for repository in ctx.repositories(policy):
            try:
                # a volume whose only files are partial ones is found by its name
                volumes = sorted({*repository.volumes(policy.name), *policy.selector.names})
            except OSError as error:
                log.warning(
                    "cannot look for incomplete archives",
                    error=repository.failure(error, "cannot list the archives").message,
                )
                continue
            for volume in volumes:
                try:
                    with volume_lock(volume, "removal of incomplete archives"):
                        for blob in remove_garbage(repository, policy.name, volume):
                            log.warning(
                                "removed an incomplete archive file",
                                file=blob,
                                storage=repository.name,
                            )
                except OperationError:
                    continue  # an operation of another process holds it
                except OSError as error:
                    failure = repository.failure(error, "cannot remove incomplete archives")
                    log.warning("cannot remove incomplete archives", error=failure.message)
