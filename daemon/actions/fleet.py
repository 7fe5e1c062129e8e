"""The fleet as a storage records it: `volkeep hosts`, `volkeep fleet status`, and the
hint of a `list` or `restore` that finds nothing for the host it looks at.

Everything here reads only the storages (their listing, the host records, the drill
records), never a host's config or state dir: it works on a new machine, and while the
hosts are down. Overdue is judged against the schedules each host's record publishes
(docs/fleet.md): a backup is overdue once the run its schedule set after the newest
backup (after the host first claimed its name, if it has none) is `grace` past.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from daemon.actions.context import Context
from daemon.config.model import Schedule
from daemon.config.schedule import parse_schedule
from daemon.config.triggers import next_run
from daemon.errors import OperationError, UsageError, VolkeepError
from daemon.repository.hosts import HostRecord, PolicyRecord
from daemon.repository.inventory import BEFORE_HOST_NAMES, Namespace, VolumeFiles, survey
from daemon.repository.inventory import hosts_holding as store_hosts_holding
from daemon.repository.layout import DRILL_SUFFIX, ArchiveKey, newest_backup
from daemon.repository.store import Repository
from daemon.rules.verdict import DrillRecord
from daemon.storage.base import BlobStore

DEFAULT_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class VolumeState:
    """One volume of one host: its newest backup, its newest drill verdict, and whether
    either is overdue against the host's schedules (None: the host publishes none)."""

    policy: str
    volume: str
    newest: ArchiveKey | None
    drill: DrillRecord | None
    backup_due: datetime | None = None  # when a newer backup was due
    drill_due: datetime | None = None
    backup_overdue: bool = False
    drill_overdue: bool = False

    @property
    def drill_failed(self) -> bool:
        return self.drill is not None and not self.drill.passed

    @property
    def healthy(self) -> bool:
        return not (self.backup_overdue or self.drill_overdue or self.drill_failed)

    def to_json(self, now: datetime) -> dict[str, object]:
        newest_time = self.newest.time if self.newest else None
        drill = self.drill
        return {
            "policy": self.policy,
            "volume": self.volume,
            "newest_archive": self.newest.id if self.newest else None,
            "newest_archive_age_seconds": _seconds(now, newest_time),
            "drill": "never" if drill is None else drill.verdict,
            "drill_archive": drill.archive if drill else None,
            "drill_finished": drill.finished.isoformat() if drill else None,
            "drill_age_seconds": _seconds(now, drill.finished if drill else None),
            "drilled_by": drill.host if drill else None,
            "backup_due": self.backup_due.isoformat() if self.backup_due else None,
            "drill_due": self.drill_due.isoformat() if self.drill_due else None,
            "backup_overdue": self.backup_overdue,
            "drill_overdue": self.drill_overdue,
            "drill_failed": self.drill_failed,
        }


@dataclass(frozen=True)
class HostState:
    """One host namespace of one storage ("" for the layout before host names)."""

    storage: str
    host: str
    record: HostRecord | None
    record_problem: str | None
    volumes: list[VolumeState] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(volume.healthy for volume in self.volumes)

    def to_json(self, now: datetime) -> dict[str, object]:
        record = self.record
        return {
            "storage": self.storage,
            "host": self.host,
            "machine": record.machine if record else None,
            "tool_version": record.tool_version if record else None,
            "record_written": record.written.isoformat() if record else None,
            "renamed_to": record.renamed_to if record else None,
            "record_problem": self.record_problem,
            "policies": sorted(
                {volume.policy for volume in self.volumes} | set(record.policies if record else ())
            ),
            "volumes": [volume.to_json(now) for volume in self.volumes],
        }


@dataclass(frozen=True)
class Fleet:
    """Every host of the storages looked at, and the storages that could not be read."""

    hosts: list[HostState]
    unreadable: list[OperationError]

    @property
    def healthy(self) -> bool:
        return not self.unreadable and all(host.healthy for host in self.hosts)

    def to_json(self, now: datetime, grace: timedelta) -> dict[str, object]:
        return {
            "checked": now.isoformat(),
            "grace_seconds": int(grace.total_seconds()),
            "healthy": self.healthy,
            "hosts": [host.to_json(now) for host in self.hosts],
            "unreadable": [str(error) for error in self.unreadable],
        }


def fleet_storages(ctx: Context, storage: str | None) -> list[str]:
    """Return the storages to look at: `storage`, else every storage of the config. Raise
    UsageError if the config defines no such storage."""
    names = sorted(ctx.config.storages)
    if storage is None:
        return names
    if storage not in names:
        raise UsageError(f"unknown storage {storage!r} (known: {', '.join(names) or 'none'})")
    return [storage]


def survey_fleet(
    ctx: Context, storages: list[str], now: datetime, grace: timedelta = DEFAULT_GRACE
) -> Fleet:
    """Given storages of the config, return every host each holds, per volume its newest
    backup, its newest drill verdict and what is overdue at `now`, `grace` allowed. A
    storage that cannot be listed is in `unreadable`, and hides none of the others."""
    hosts: list[HostState] = []
    unreadable: list[OperationError] = []
    for name in storages:
        store = ctx.store(name)
        try:
            namespaces = survey(store)
            hosts += [
                _host_state(store, namespace, now, grace) for namespace in namespaces.values()
            ]
        except OSError as error:
            failure = Repository(store, ctx.host, own=False).failure(error, "cannot list")
            unreadable.append(failure)
    return Fleet(hosts, unreadable)


def _host_state(
    store: BlobStore, namespace: Namespace, now: datetime, grace: timedelta
) -> HostState:
    record = namespace.record
    policies = record.policies if record is not None and record.renamed_to is None else {}
    named = {(policy, volume) for policy, entry in policies.items() for volume in entry.volumes}
    volumes = []
    for policy, volume in sorted(named | set(namespace.volumes)):
        files = namespace.volumes.get((policy, volume), VolumeFiles())
        state = VolumeState(
            policy, volume, newest_backup(files.committed()), _newest_drill(store, files)
        )
        if policy in policies and record is not None:
            state = _judged(state, policies[policy], record.claimed, now, grace)
        volumes.append(state)
    return HostState(store.name, namespace.host, record, namespace.record_problem, volumes)


def _newest_drill(store: BlobStore, files: VolumeFiles) -> DrillRecord | None:
    """Return the newest drill verdict among the volume's archives (an unreadable record
    is no verdict). Raise OSError if the store fails."""
    records = []
    for key in files.drilled():
        try:
            records.append(DrillRecord.from_bytes(store.get(key.blob(DRILL_SUFFIX))))
        except (ValueError, FileNotFoundError):
            continue
    return max(records, key=lambda record: record.finished, default=None)


def _judged(
    state: VolumeState, policy: PolicyRecord, claimed: datetime, now: datetime, grace: timedelta
) -> VolumeState:
    """Given a volume's state and its policy as the host's record publishes it, return it
    with its backup and drill judged against the policy's schedules."""
    last_backup = state.newest.time if state.newest else None
    backup_due = _due(policy.schedule, policy.timezone, last_backup or claimed)
    drill_due = None
    if state.newest is not None:  # nothing to drill before a backup
        last_drill = state.drill.finished if state.drill else last_backup
        drill_due = _due(policy.drill_schedule, policy.timezone, last_drill or claimed)
    return VolumeState(
        state.policy,
        state.volume,
        state.newest,
        state.drill,
        backup_due=backup_due,
        drill_due=drill_due,
        backup_overdue=_overdue(backup_due, now, grace),
        drill_overdue=_overdue(drill_due, now, grace),
    )


def _due(schedule_text: str | None, timezone: str, after: datetime) -> datetime | None:
    """Return the schedule's first run after `after`: when the next backup (or drill) was
    due; None if there is no schedule, or it cannot be read (a later version's form)."""
    if schedule_text is None:
        return None
    try:
        schedule: Schedule = parse_schedule(schedule_text)
        return next_run(schedule, timezone, after, splay=timedelta(0))
    except (ValueError, KeyError):
        return None


def _overdue(due: datetime | None, now: datetime, grace: timedelta) -> bool:
    return due is not None and now > due + grace


def hosts_holding(ctx: Context, storages: list[str], policy: str, volume: str | None) -> list[str]:
    """Return the hosts that hold a committed archive of the policy (of the volume, if
    given) in any of the storages, by name; a storage that cannot be listed adds none."""
    found: set[str] = set()
    for name in storages:
        try:
            found.update(store_hosts_holding(ctx.store(name), policy, volume))
        except OSError:
            continue
    return sorted(found)


def elsewhere(ctx: Context, policy: str, volume: str | None, host: str | None) -> str | None:
    """Given what a `list` or `restore` of `host` (None: this host) looked for and did not
    find, return the hint that names the hosts holding archives of it, or None if none
    does."""
    looked_at = host or ctx.host
    settings = ctx.config.policies.get(policy)
    storages = list(settings.storage_names) if settings else sorted(ctx.config.storages)
    others = [
        name or "(before host names)"
        for name in hosts_holding(ctx, storages, policy, volume)
        if name != looked_at and not (name == BEFORE_HOST_NAMES and looked_at == ctx.host)
    ]
    if not others:
        return None
    what = f"{policy}/{volume}" if volume else policy
    return (
        f"host {looked_at!r} has no archive of {what}; hosts that do: {', '.join(others)} "
        "(give --host NAME)"
    )


def with_hint(error: VolkeepError, hint: str) -> VolkeepError:
    """Given an error and a hint, return the same kind of error whose one line ends with
    the hint."""
    if isinstance(error, OperationError):
        hinted = OperationError(
            f"{error.message}; {hint}",
            policy=error.policy,
            volume=error.volume,
            archive=error.archive,
        )
        hinted.exit_code = error.exit_code
        return hinted
    return type(error)(f"{error}; {hint}")


def _seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else int((now - then).total_seconds())
