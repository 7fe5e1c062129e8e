"""Apply a policy's retention to the archives of its volumes.

For each volume, under its lock:

1. Remove the volume's garbage: partial files of crashed backups, and archive files whose
   manifest is gone (a prune that died between deleting the manifest and the archive).
   A dry run removes nothing and does not report garbage.
2. Read every committed archive's manifest and drill record, and the volume's shrink
   acceptances. The backups (not safety archives) are the candidates of `retention.select`,
   under the volume's shrink guard (`daemon.rules.shrink`).
3. Delete, oldest first, each backup the selection lets go: ask `retention.may_delete`
   right before `Repository.delete`, which removes the manifest (the commit marker) first,
   then the archive file and its records.

Each storage of the policy is pruned on its own, by its own keep rules
(`Policy.retention_for`), and only in this host's namespace (promise 10).

Safety archives (the content a forced restore replaced) have a retention of their own:
they hold the only copy of data no schedule backed up, so each is kept for the policy's
`keep_safety_archives` (30 days by default) after it was taken, then deleted
(`retention.safety_decision`, asked again right before each deletion). They do not count
for the keep rules, nor as the newest archive. An archive whose manifest cannot be read
is kept and reported: retention never deletes what it cannot read.

Retention runs only after a successful backup of the volume (`prune_after_backup`, the
last step of a backup) or on an explicit `volkeep prune`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from daemon.actions.context import Context
from daemon.actions.failures import volume_failure
from daemon.archive.manifest import Manifest
from daemon.config.model import Policy
from daemon.errors import OperationError, UsageError, combined_failure
from daemon.repository.acceptances import read_acceptances
from daemon.repository.garbage import remove_garbage
from daemon.repository.layout import DRILL_SUFFIX, ArchiveKey, id_order
from daemon.repository.reads import read_each, read_summaries
from daemon.repository.store import Repository, committed
from daemon.rules import shrink
from daemon.rules.retention import Candidate, Decision, may_delete, safety_decision, select
from daemon.rules.verdict import DrillRecord, archive_verdict

log = structlog.get_logger()


@dataclass(frozen=True)
class _StoredBackup:
    key: ArchiveKey
    manifest: Manifest
    candidate: Candidate


def run_prune(
    ctx: Context,
    policy_name: str,
    volumes: list[str],
    dry_run: bool,
    storage: str | None = None,
    report: Callable[[Repository, str, list[Decision]], None] | None = None,
) -> dict[tuple[str, str], list[Decision]]:
    """Given a policy and the volumes asked for (none: every volume the policy has archives
    of in the storage), prune them in each of the policy's storages (or only `storage`),
    one after another; return the decisions by (storage, volume), also given to `report`
    as each volume is done. A real prune is recorded in the run history; a dry run changes
    nothing.

    Raise UsageError for a requested volume without archives in any of those storages,
    before any work; raise OperationError at the end if any volume failed (every volume of
    every storage is attempted).
    """
    policy = ctx.policy(policy_name)
    repositories = ctx.repositories(policy, storage=storage)
    stored: dict[str, list[str]] = {}
    failures: list[OperationError] = []
    for repository in repositories:
        try:
            stored[repository.name] = repository.volumes(policy.name)
        except OSError as error:
            failures.append(repository.failure(error, "cannot list the archives"))
            stored[repository.name] = []
    for name in volumes:
        if not any(name in found for found in stored.values()):
            where = ", ".join(f"storage {r.name!r} ({r.describe()})" for r in repositories)
            raise UsageError(
                f"policy {policy.name!r} has no archives of volume {name!r} in {where}"
            )
    # every storage's verdicts count; opened once, so that one found unavailable is not
    # asked again for each volume
    every = repositories if storage is None else ctx.repositories(policy)
    pruned: dict[tuple[str, str], list[Decision]] = {}
    for repository in repositories:
        for name in volumes or stored[repository.name]:
            if name not in stored[repository.name]:
                continue
            with (
                structlog.contextvars.bound_contextvars(
                    policy=policy.name, volume=name, storage=repository.name
                ),
                volume_failure(failures, "prune", policy.name, name),
                ctx.volume_lock(name, f"prune of {policy.name}"),
            ):
                if dry_run:
                    decisions = prune_volume(policy, repository, name, dry_run=True, storages=every)
                else:
                    decisions = _recorded_prune(ctx, policy, repository, name, every)
                pruned[repository.name, name] = decisions
                if report is not None:
                    report(repository, name, decisions)
    if failures:
        raise combined_failure(failures, "prune", policy.name)
    return pruned


def prune_after_backup(
    ctx: Context,
    policy: Policy,
    repository: Repository,
    volume: str,
    storages: Sequence[Repository],
) -> None:
    """Given a volume whose new backup was just published (the caller holds its lock),
    and the policy's repositories the backup used (`storages`: a storage found unavailable
    is not asked again), apply the policy's retention and record it in the run history. A
    failed prune is logged and recorded as failed; it does not undo the backup's success.
    """
    try:
        _recorded_prune(ctx, policy, repository, volume, storages)
    except OperationError as error:
        log.error("prune after backup failed", error=error.message)


def prune_volume(
    policy: Policy,
    repository: Repository,
    volume: str,
    *,
    dry_run: bool,
    now: datetime | None = None,
    storages: Sequence[Repository] = (),
) -> list[Decision]:
    """Given a policy, one of its repositories and one volume whose lock the caller holds,
    apply the storage's retention to the volume's archives there and return one decision
    per committed archive, newest first. With `dry_run`, change nothing. The drill
    verdicts held in `storages` (the policy's others) count here too.

    Raise OperationError, naming the archive if there is one, if the storage fails, or if
    the selection chose an archive that a safety rule protects (that one is kept).
    """
    now = now or datetime.now(UTC)
    with structlog.contextvars.bound_contextvars(
        policy=policy.name, volume=volume, storage=repository.name
    ):
        try:
            if not dry_run:
                for blob in remove_garbage(repository, policy.name, volume):
                    log.warning("removed an incomplete archive file", file=blob)
            backups, safety, kept_aside = _read_archives(repository, policy.name, volume, storages)
            guard = _shrink_guard(policy, repository, volume)
        except OSError as error:
            raise _prune_error(repository, policy.name, volume, None, error) from None
        candidates = [backup.candidate for backup in backups.values()]
        rules = policy.retention_for(repository.name)
        decisions = select(candidates, rules, policy.timezone, now, shrink=guard) + kept_aside
        decisions += [_safety_decision(policy, archive, now) for archive in safety.values()]
        decisions.sort(key=lambda decision: id_order(decision.id), reverse=True)
        stored = {**backups, **safety}
        doomed = [stored[decision.id] for decision in reversed(decisions) if not decision.keep]
        kept = len(decisions) - len(doomed)
        if dry_run:
            log.info("prune planned, nothing deleted (dry run)", kept=kept, to_delete=len(doomed))
            return decisions
        for archive in doomed:
            if archive.key.is_safety:
                refused = _safety_decision(policy, archive, now).keep
                why = "the safety archive is within keep_safety_archives"
            else:
                refused = not may_delete(archive.key.id, candidates, now, shrink=guard)
                why = "a safety rule protects this archive"
            _delete(repository, archive, refused=why if refused else None)
        freed = sum(backup.manifest.size for backup in doomed)
        log.info("prune finished", kept=kept, deleted=len(doomed), freed=freed)
        return decisions


def pending_shrinks(
    policy: Policy, repository: Repository, volume: str, now: datetime
) -> list[shrink.Shrink]:
    """Given a volume, return the shrinks for which retention keeps archives in the
    repository at `now` (none accepted yet, within the longest keep window), oldest first.

    Raise OSError if the storage cannot be read.
    """
    present = []
    for key in repository.backups(policy.name, volume):
        try:
            manifest = repository.read_manifest(key, entries=False)
        except OperationError:
            continue  # retention does not count it either
        if manifest.started <= now:
            present.append(Candidate(key.id, manifest.started, False, manifest.content))
    return shrink.pending(present, _shrink_guard(policy, repository, volume), now)


def _shrink_guard(policy: Policy, repository: Repository, volume: str) -> shrink.Guard:
    """Given a volume, return its shrink guard in the repository: the storage's keep
    rules and the acceptances recorded there. Raise OSError."""
    rules = policy.retention_for(repository.name)
    return shrink.guard(rules, read_acceptances(repository, policy.name, volume))


def _recorded_prune(
    ctx: Context,
    policy: Policy,
    repository: Repository,
    volume: str,
    storages: Sequence[Repository],
) -> list[Decision]:
    """Given a volume whose lock the caller holds, prune it (the verdicts of `storages`
    counting) and record that in the history."""
    with ctx.history.operation("prune", policy.name, volume):
        return prune_volume(policy, repository, volume, dry_run=False, storages=storages)


def _read_archives(
    repository: Repository, policy: str, volume: str, storages: Sequence[Repository]
) -> tuple[dict[str, _StoredBackup], dict[str, _StoredBackup], list[Decision]]:
    """Given a volume, return its committed backups by id, each drill-passed if the verdict
    that counts for it in any of `storages` (and this one) passed; its safety archives by
    id; and a keep decision for each archive whose manifest cannot be read, with why. Each
    storage is listed once.

    Raise OSError if the storage cannot be read, StorageFailure if it or one of `storages`
    cannot be listed.
    """
    files = _listed(repository, policy, volume, "cannot list the archives")
    verdicts = _verdicts(
        [(repository, files)]
        + [(storage, _listed(storage, policy, volume, "cannot read the drill verdicts"))
           for storage in storages if storage.name != repository.name]
    )  # fmt: skip
    backups = {}
    safety = {}
    kept_aside = []
    keys = committed(files)
    for key, manifest in zip(keys, read_summaries(repository, keys), strict=True):
        if isinstance(manifest, OperationError):
            log.warning(
                "kept an archive with an unreadable manifest",
                archive=key.id,
                error=manifest.message,
            )
            kept_aside.append(
                Decision(key.id, True, ("unreadable manifest, kept until removed by hand",))
            )
            continue
        if key.is_safety:
            candidate = Candidate(key.id, manifest.started, False, manifest.content)
            safety[key.id] = _StoredBackup(key, manifest, candidate)
            continue
        verdict = archive_verdict(verdicts.get(key.id, ()), manifest.sha256)
        passed = verdict is not None and verdict.passed
        candidate = Candidate(key.id, manifest.started, passed, manifest.content)
        backups[key.id] = _StoredBackup(key, manifest, candidate)
    return backups, safety, kept_aside


def _safety_decision(policy: Policy, archive: _StoredBackup, now: datetime) -> Decision:
    return safety_decision(
        archive.key.id, archive.manifest.started, policy.keep_safety_archives, now
    )


def _listed(
    storage: Repository, policy: str, volume: str, what_fails: str
) -> dict[ArchiveKey, set[str]]:
    """Given a storage whose verdicts count, return the volume's archive files there.

    Raise StorageFailure, naming the storage and `what_fails` without the listing, if it
    cannot be listed: a verdict it holds may protect an archive, so nothing is pruned
    without it.
    """
    try:
        return storage.files(policy, volume)
    except OSError as error:
        raise storage.failure(error, what_fails) from None


def _verdicts(
    listed: Sequence[tuple[Repository, dict[ArchiveKey, set[str]]]],
) -> dict[str, list[DrillRecord]]:
    """Given the storages whose verdicts count, each with the volume's archive files there,
    return the drill records they hold of the volume's archives, by archive id: a verdict
    belongs to the archive, whichever copy was drilled (SPEC promise 12). An unreadable
    record is none (no proof)."""
    found: dict[str, list[DrillRecord]] = {}
    for storage, files in listed:
        drilled = [key for key, suffixes in files.items() if DRILL_SUFFIX in suffixes]
        for key, record in zip(drilled, read_each(storage.read_drill, drilled), strict=True):
            if record is not None:
                found.setdefault(key.id, []).append(record)
    return found


def _delete(repository: Repository, archive: _StoredBackup, *, refused: str | None) -> None:
    """Given an archive retention let go and, if the one safety predicate of its kind
    (`may_delete` for backups, `safety_decision` for safety archives) asked again right
    before the deletion refuses it, why: delete it, manifest first.

    Raise OperationError naming the archive if it is refused or the storage fails.
    """
    key = archive.key
    with structlog.contextvars.bound_contextvars(archive=key.id):
        if refused is not None:
            raise OperationError(
                f"refused to delete: {refused}",
                policy=key.policy,
                volume=key.volume,
                archive=key.id,
            )
        try:
            repository.delete(key, archive.manifest)
        except OSError as error:
            raise _prune_error(repository, key.policy, key.volume, key.id, error) from None
        kind = "safety archive" if key.is_safety else "archive"
        log.info(f"{kind} deleted by retention", size=archive.manifest.size)


def _prune_error(
    repository: Repository, policy: str, volume: str, archive: str | None, error: OSError
) -> OperationError:
    failure = repository.failure(error, "cannot prune")
    failure.policy, failure.volume, failure.archive = policy, volume, archive
    return failure
