"""Garbage collection of a policy's chunk repositories, one per storage: after `volkeep
prune` (which shows it with --dry-run) and after the daemon's scheduled backup runs, at
most every quarter of the margin (`collection_due`) (docs/format-dedup.md, "Garbage
collection"; the rules: `daemon.repository.chunkgarbage`).

It takes the policy's collection lock, host-wide, and never waits for it: a collection
that finds it held is skipped (the other one does the work). It takes no volume lock:
backups, restores and prunes run beside it, and no backup ever waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from daemon.actions.context import Context
from daemon.archive.chunkconfig import CONFIG_KEY
from daemon.errors import OperationError, combined_failure
from daemon.repository.chunkgarbage import Collection, collect, collection_due
from daemon.repository.chunks import ChunkStore
from daemon.repository.store import Repository
from daemon.state.history import History
from daemon.state.locks import collection_lock

log = structlog.get_logger()


def run_collect(
    ctx: Context,
    policy_name: str,
    dry_run: bool,
    storage: str | None = None,
    report: Callable[[Repository, Collection], None] | None = None,
) -> dict[str, Collection]:
    """Given a policy, collect the garbage of its chunk repository in each of its storages
    that has one (only `storage` if given); with `dry_run`, change nothing. Return what was
    done by storage, also given to `report` as each storage is done; nothing if another
    process collects the policy now.

    Raise OperationError at the end if a storage failed (every storage is attempted)."""
    policy = ctx.policy(policy_name)
    repositories = ctx.repositories(policy, storage=storage)
    done: dict[str, Collection] = {}
    failures: list[OperationError] = []
    with collection_lock(ctx.host, policy.name) as held:
        if not held:
            log.info("garbage collection skipped: another process collects this policy now")
            return done
        recipients = ctx.recipients(policy)
        identities = ctx.identities(policy)
        for repository in repositories:
            chunks = ChunkStore(repository, policy.name)
            with structlog.contextvars.bound_contextvars(
                policy=policy.name, storage=repository.name
            ):
                try:
                    if not repository.store.exists(chunks.directory + CONFIG_KEY):
                        continue  # no deduplicated archive was ever written there
                    result = collect(
                        chunks, identities, recipients, dry_run=dry_run, spool_dir=ctx.state_dir
                    )
                except OperationError as error:
                    failures.append(error)
                    continue
                except OSError as error:
                    failures.append(repository.failure(error, "cannot collect garbage"))
                    continue
                if not dry_run:
                    log.info(
                        "garbage collected",
                        freed_packs=result.freed_packs,
                        freed=result.freed_bytes,
                        condemned=result.condemned,
                        repacked=result.repacked,
                        moved=result.moved_bytes,
                        revived=result.revived,
                    )
                done[repository.name] = result
                if report is not None:
                    report(repository, result)
    if failures:
        raise combined_failure(failures, "garbage collection", policy.name)
    return done


def collect_after_backups(ctx: Context, policy_name: str) -> None:
    """After a scheduled backup run of the policy: collect its garbage if it is due
    (`collection_due`, from the last collection this host finished after a run). A
    failure is logged and tried again after the next run; it does not change the run's
    outcome."""
    history = History(ctx.state_dir)
    job = f"collect:{policy_name}"
    started = datetime.now(UTC)
    if not collection_due(history.schedule_anchors().get(job), started):
        log.info("garbage collection not due yet", policy=policy_name)
        return
    try:
        if run_collect(ctx, policy_name, dry_run=False):
            history.record_run(job, started)
    except OperationError as error:
        log.error("garbage collection failed", policy=policy_name, error=error.message)
