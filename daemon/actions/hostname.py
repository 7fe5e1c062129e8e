"""A host name's claim in a storage, as the operator changes it (docs/fleet.md):

- `adopt-host`: this machine takes over the name it is configured with (a rebuilt or
  replaced machine, whose machine id changed): the marker names this machine from now on.
- At the daemon's start, the marker is written (or rewritten) with the config's policies
  (`publish_host_records`); each later write checks it first (`Repository.require_own`).
- `rename-host OLD NEW`: the host that claims OLD writes under NEW from now on. NEW is
  claimed for this machine (refused if another machine claims it), then OLD's marker is
  marked renamed: no volkeep writes under OLD again, and its archives stay readable with
  `--host OLD` (list, restore, drill, export). Then set `daemon.host: NEW`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

import structlog

from daemon.actions.context import Context
from daemon.errors import OperationError
from daemon.repository.hosts import (
    SHOWN,
    HostRecord,
    NamespaceClaimed,
    claim_namespace,
    read_record,
    replace_record,
)
from daemon.repository.store import Repository
from daemon.storage.base import BlobStore

log = structlog.get_logger()


@dataclass(frozen=True)
class Claimed:
    """What a change of claim did in one storage: the host name, the machine that claimed
    it before (None: none did), and this machine."""

    storage: str
    host: str
    before: str | None
    after: str

    def describe(self) -> str:
        if self.before == self.after:
            return f"storage {self.storage!r}: host {self.host!r} is this machine's already"
        was = f"machine {self.before[:SHOWN]}…" if self.before else "no machine"
        return (
            f"storage {self.storage!r}: host {self.host!r} was claimed by {was}, now by "
            f"this machine ({self.after[:SHOWN]}…)"
        )


def adopt_host(ctx: Context, storages: list[str]) -> list[Claimed]:
    """Make this machine the one that claims this host's name in each storage, whatever
    machine claimed it. Raise OperationError naming the storage if one cannot be written
    (the storages before it are adopted)."""
    adopted = []
    for name in storages:
        store = ctx.store(name)
        wanted = ctx.host_record(name)
        try:
            existing = _record(store, ctx.host)
            claimed = existing.claimed if existing is not None else wanted.claimed
            replace_record(store, replace(wanted, claimed=claimed))
        except OSError as error:
            raise _failure(store, error, "cannot adopt the host name") from None
        before = existing.machine if existing is not None else None
        adopted.append(Claimed(name, ctx.host, before, wanted.machine))
    return adopted


def rename_host(ctx: Context, storages: list[str], old: str, new: str) -> list[Claimed]:
    """Move this machine's host name OLD to NEW in each storage (see the module's doc);
    return NEW's claims. Raise NamespaceClaimed if another machine claims OLD or NEW in
    one (nothing is changed in that storage), OperationError if a storage fails."""
    renamed = []
    for name in storages:
        store = ctx.store(name)
        wanted = replace(ctx.host_record(name), host=new)
        try:
            existing = _record(store, old)
            if existing is not None and existing.machine != wanted.machine:
                raise NamespaceClaimed(
                    f"storage {name!r} ({store.describe()}): host name {old!r} is claimed by "
                    f"machine {existing.machine[:SHOWN]}…, not this one: only the machine that "
                    "claims a name renames it (`volkeep adopt-host` first, on this machine, "
                    "if it replaces that one)"
                )
            before = _record(store, new)
            claim_namespace(store, wanted)
            retired = HostRecord(
                old,
                wanted.machine,
                wanted.tool_version,
                claimed=existing.claimed if existing is not None else datetime.now(UTC),
                renamed_to=new,
            )
            replace_record(store, retired)
        except OSError as error:
            raise _failure(store, error, "cannot rename the host") from None
        renamed.append(Claimed(name, new, before.machine if before else None, wanted.machine))
    return renamed


def _failure(store: BlobStore, error: OSError, doing: str) -> OperationError:
    return Repository(store, "", own=False).failure(error, doing)


def _record(store: BlobStore, host: str) -> HostRecord | None:
    """Return the host's record, or None if it has none or it cannot be read (the
    operator's command replaces it). Raise OSError."""
    try:
        return read_record(store, host)
    except ValueError:
        return None


def publish_host_records(ctx: Context) -> None:
    """At the daemon's start: claim this host's name in each storage its policies use, with
    the record of its config (`claim_namespace`), so that `fleet status` reads its
    schedules. A storage where another machine claims the name is logged as an error (each
    write there will be refused); one that cannot be reached, as a warning."""
    for name in sorted(
        {name for policy in ctx.config.policies.values() for name in policy.storage_names}
    ):
        repository = Repository(
            ctx.store(name), ctx.host, own=True, marker=partial(ctx.host_record, name)
        )
        try:
            repository.require_own()
        except NamespaceClaimed as refused:
            log.error("host name refused", storage=name, error=refused.message)
        except OSError as error:
            failure = repository.failure(error, "cannot publish the host record")
            log.warning("host record not published", error=failure.message)
