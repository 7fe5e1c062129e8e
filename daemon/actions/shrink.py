"""The shrink guard's actions (SPEC promise 13): noticing, as a backup is published, that
the volume lost most of its content; and `volkeep accept-shrink`, the operator's word that
it was meant, recorded in every storage so that every prune there sees it.

The rule itself (what a shrink is, what it keeps, what lifts it) is `daemon.rules.shrink`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from daemon import events
from daemon.actions.context import Context
from daemon.actions.failures import volume_failure
from daemon.actions.prune import pending_shrinks
from daemon.archive.manifest import Manifest
from daemon.errors import OperationError, UsageError, combined_failure
from daemon.repository.acceptances import write_acceptance
from daemon.repository.layout import ArchiveKey
from daemon.rules import shrink
from daemon.rules.retention import Candidate

log = structlog.get_logger()


def notice_shrink(previous: Manifest | None, manifest: Manifest) -> shrink.Shrink | None:
    """Given the volume's newest backup before a new one (None: there was none) and the new
    one, just published, return the shrink between them, warned about and announced; or
    None if the volume did not lose most of its content."""
    if previous is None:
        return None
    found = shrink.between(_candidate(previous), _candidate(manifest))
    if found is None:
        return None
    log.warning(
        "the volume lost most of its content: retention keeps the backup before the loss "
        "until the shrink is accepted (volkeep accept-shrink) or the longest keep window "
        "has passed",
        archive=manifest.id,
        before=previous.id,
        objects_before=previous.entry_count,
        objects_after=manifest.entry_count,
        tar_bytes_before=previous.tar_size,
        tar_bytes_after=manifest.tar_size,
    )
    events.emit(events.VolumeShrank(manifest.policy, manifest.volume, found))
    return found


def _candidate(manifest: Manifest) -> Candidate:
    return Candidate(manifest.id, manifest.started, False, manifest.content)


@dataclass(frozen=True)
class Accepted:
    """What `accept-shrink` did in one storage: the shrink it accepted (and with it every
    earlier one), or None if none was pending there."""

    storage: str
    shrink: shrink.Shrink | None


def run_accept_shrink(
    ctx: Context, policy_name: str, volume: str, storage: str | None = None
) -> list[Accepted]:
    """Given a policy and a volume, record in each of the policy's storages (or only
    `storage`) the acceptance of the volume's newest pending shrink there, which frees the
    archives kept for it and for every earlier shrink; return what was done, by storage.

    Raise UsageError if the volume has no archives in any of those storages, before any
    work; raise OperationError at the end if a storage failed (each one is attempted).
    """
    policy = ctx.policy(policy_name)
    repositories = ctx.repositories(policy, storage=storage)
    failures: list[OperationError] = []
    held = []
    for repository in repositories:
        with volume_failure(failures, "accept-shrink", policy.name, volume):
            if volume in repository.volumes(policy.name):
                held.append(repository)
    if not held and not failures:
        where = ", ".join(f"storage {r.name!r} ({r.describe()})" for r in repositories)
        raise UsageError(f"policy {policy.name!r} has no archives of volume {volume!r} in {where}")
    done = []
    now = datetime.now(UTC)
    for repository in held:
        with (
            structlog.contextvars.bound_contextvars(
                policy=policy.name, volume=volume, storage=repository.name
            ),
            volume_failure(failures, "accept-shrink", policy.name, volume),
        ):
            pending = pending_shrinks(policy, repository, volume, now)
            if not pending:
                done.append(Accepted(repository.name, None))
                continue
            newest = pending[-1]
            key = ArchiveKey(policy.name, volume, newest.after, repository.host)
            write_acceptance(repository, key, shrink.Acceptance(policy.name, volume, newest, now))
            log.info("shrink accepted", archive=newest.after, before=newest.before)
            done.append(Accepted(repository.name, newest))
    if failures:
        raise combined_failure(failures, "accept-shrink", policy.name)
    return done
