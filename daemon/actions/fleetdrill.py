"""Scheduled drills, of this host's archives or, with `drill.hosts`, of other hosts' (a
drill host that proves, continuously, that the fleet's backups restore on a second
machine, with no drill load on the hosts that wrote them: docs/fleet.md).

A run of a policy's scheduled drill works on targets: each volume this host has backups of
in the drilled storage; or, with `drill.hosts`, one `host/volume` of those hosts: the one
whose newest backup was drilled least recently (never drilled first; ties by name), so that
the runs go round the hosts and volumes, and a new backup is drilled soon after it
appears. The verdict is written beside the archive, in its owner's namespace, where the
owner's `list` and `status`, and `fleet status`, read it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from daemon.actions.context import Context
from daemon.actions.drill import drillable_volumes, drilled_repository, run_drill
from daemon.config.model import Policy
from daemon.errors import OperationError
from daemon.repository.inventory import BEFORE_HOST_NAMES, survey
from daemon.repository.layout import DRILL_SUFFIX, newest_backup
from daemon.repository.store import Repository
from daemon.rules.verdict import DrillRecord

EVERY_HOST = "*"
NEVER = datetime.min.replace(tzinfo=UTC)


def scheduled_targets(ctx: Context, policy: Policy) -> list[str]:
    """Given a policy, return what its scheduled drill works on now (see the module's doc):
    volume names, or one `host/volume`. Raise OperationError if there is nothing to drill,
    StorageFailure if the storage cannot be listed."""
    repository = drilled_repository(ctx, policy)
    hosts = policy.drill.hosts if policy.drill else ()
    if not hosts:
        return drillable_volumes(repository, policy.name)
    return [next_target(repository, policy.name, hosts)]


def run_scheduled_drill(
    ctx: Context,
    policy: str,
    target: str,
    report: Callable[[DrillRecord], None] | None = None,
) -> None:
    """Drill one target that `scheduled_targets` returned, giving each verdict to `report`.
    Raise OperationError if the drill failed or could not run."""
    host, _, volume = target.rpartition("/")
    run_drill(ctx, policy, [volume], None, host=host or None, report=report)


def next_target(repository: Repository, policy: str, hosts: tuple[str, ...]) -> str:
    """Given the drilled storage, a policy and the hosts its drills cover (EVERY_HOST: all
    of them), return the `host/volume` to drill next: the one whose newest backup was
    drilled least recently. Raise OperationError if none of them has a backup, StorageFailure
    if the storage cannot be read."""
    store = repository.store
    candidates: list[tuple[datetime, str, str]] = []
    try:
        for namespace in survey(store, records=False).values():
            if namespace.host == BEFORE_HOST_NAMES:
                continue
            if EVERY_HOST not in hosts and namespace.host not in hosts:
                continue
            for (named_policy, volume), files in namespace.volumes.items():
                newest = newest_backup(files.committed())
                if named_policy != policy or newest is None:
                    continue
                drilled = NEVER
                if DRILL_SUFFIX in files.files[newest]:
                    drilled = _finished(store.get(newest.blob(DRILL_SUFFIX)))
                candidates.append((drilled, namespace.host, volume))
    except OSError as error:
        raise repository.failure(error, "cannot list the archives") from None
    if not candidates:
        raise OperationError(
            f"nothing to drill: storage {repository.name!r} ({repository.describe()}) holds no "
            f"backup of this policy by {', '.join(hosts)} (drill.hosts)",
            policy=policy,
        )
    _, host, volume = min(candidates)
    return f"{host}/{volume}"


def _finished(raw: bytes) -> datetime:
    """When a drill record says its drill finished; an unreadable one counts as never."""
    try:
        return DrillRecord.from_bytes(raw).finished
    except ValueError:
        return NEVER
