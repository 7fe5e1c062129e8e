"""`volkeep status`: per policy and volume, the last backup, the last drill and the next runs,
and whether the daemon runs.

It reads the state dir (run history, schedule anchors, the daemon's pid and heartbeat
files) and the storages (newest archive, drill verdicts, which every host sees), and lists
the engine's volumes only to find those a `match` selects: it works whether or not the
daemon runs, and without the engine. It changes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import docker
import requests

from daemon.actions.context import Context
from daemon.actions.listing import age, drill_summary
from daemon.actions.prune import pending_shrinks
from daemon.archive.manifest import Manifest
from daemon.config.model import Policy, Schedule
from daemon.config.triggers import first_run, next_run
from daemon.engine.client import connect, engine_failure
from daemon.engine.volumes import select_volumes
from daemon.errors import DockerUnavailable, OperationError
from daemon.repository.layout import ArchiveKey
from daemon.repository.locate import newest_readable_backup
from daemon.repository.reads import read_summaries
from daemon.repository.store import Repository
from daemon.rules.shrink import Shrink
from daemon.rules.verdict import DrillRecord
from daemon.state.history import Heartbeat, History, OperationRecord, daemon_running, read_heartbeat
from daemon.state.locks import is_locked
from daemon.terminal.progress import human_bytes
from daemon.terminal.render import fit

REASON_WIDTH = 70
STALE_HEARTBEAT_SECONDS = 60  # the daemon rewrites it at least every 10 s
ENGINE_TIMEOUT_SECONDS = 10  # status must answer even when the engine hangs
# SIZE: the newest archive's tar (what a restore writes); ADDED: what it stored
STATUS_COLUMNS = (
    "VOLUME", "LAST BACKUP", "NEWEST ARCHIVE", "SIZE", "ADDED", "DRILL VERDICT", "LAST DRILL RUN"
)  # fmt: skip


@dataclass(frozen=True)
class Upcoming:
    """A scheduled job's next run. `overdue`: the daemon is not running and a run is due,
    so it will run as soon as the daemon starts."""

    schedule: str
    next_run: datetime | None
    overdue: bool = False

    def describe(self) -> str:
        """The next run as the status table and page show it."""
        if self.next_run is None:
            return "never"
        if self.overdue:
            return f"overdue since {_when(self.next_run)}: runs when the daemon starts"
        return _when(self.next_run)

    def to_json(self) -> dict[str, object]:
        return {
            "schedule": self.schedule,
            "next_run": self.next_run.isoformat() if self.next_run else None,
            "overdue": self.overdue,
        }


@dataclass(frozen=True)
class Usage:
    """What a volume's backups in one storage hold and cost: how many there are, their
    tar bytes (what they restore to), and the stored bytes each added when it was written
    (`Manifest.added_bytes`), summed."""

    backups: int = 0
    tar_bytes: int = 0
    added_bytes: int = 0

    @property
    def ratio(self) -> float | None:
        """The tar bytes over the bytes added (compression and deduplication together), or
        None if nothing was added."""
        return self.tar_bytes / self.added_bytes if self.added_bytes else None

    def to_json(self) -> dict[str, object]:
        ratio = self.ratio
        return {
            "backups": self.backups,
            "tar_bytes": self.tar_bytes,
            "added_bytes": self.added_bytes,
            "ratio": round(ratio, 2) if ratio is not None else None,
        }


def backups_usage(manifests: Iterable[Manifest]) -> Usage:
    """Given the manifests of a volume's backups in one storage, return their usage."""
    usage = Usage()
    for manifest in manifests:
        usage = Usage(
            usage.backups + 1,
            usage.tar_bytes + manifest.tar_size,
            usage.added_bytes + manifest.added_bytes,
        )
    return usage


@dataclass(frozen=True)
class VolumeStatus:
    name: str
    last_backup: OperationRecord | None  # from this host's run history
    newest: dict[str, Manifest | None]  # by storage, in the policy's order: its newest backup
    last_drill: DrillRecord | None  # from the storages: the most recent verdict
    # from this host's run history: the last drill run, which outlives its archive's record
    last_drill_run: OperationRecord | None = None
    # by storage: the shrinks for which retention keeps archives until they are accepted
    shrinks: dict[str, list[Shrink]] = field(default_factory=dict)
    in_config: bool = True  # False: the policy no longer covers it; its archives remain
    # by storage, in the policy's order: its backups' usage (none: it could not be read)
    usage: dict[str, Usage] = field(default_factory=dict)

    @property
    def newest_archive(self) -> Manifest | None:
        """The newest backup in any of the storages."""
        found = [manifest for manifest in self.newest.values() if manifest is not None]
        return max(found, key=lambda manifest: manifest.started, default=None)

    def to_json(self) -> dict[str, object]:
        backup = self.last_backup
        archive = self.newest_archive
        drill = self.last_drill
        return {
            "name": self.name,
            "in_config": self.in_config,
            "last_backup": None
            if backup is None
            else {
                "started": backup.started.isoformat(),
                "finished": backup.finished.isoformat() if backup.finished else None,
                "outcome": backup.outcome,
                "archive": backup.archive,
                "bytes": backup.bytes,
                "error": backup.error,
            },
            "newest_archive": _archive_json(archive),
            "storages": {name: _archive_json(manifest) for name, manifest in self.newest.items()},
            "usage": {name: usage.to_json() for name, usage in self.usage.items()},
            "last_drill": None
            if drill is None
            else {
                "archive": drill.archive,
                "verdict": drill.verdict,
                "finished": drill.finished.isoformat(),
                "restore_seconds": drill.restore_seconds,
                "reason": drill.reason,
            },
            "last_drill_run": None
            if self.last_drill_run is None
            else {
                "archive": self.last_drill_run.archive,
                "outcome": self.last_drill_run.outcome,
                "started": self.last_drill_run.started.isoformat(),
                "error": self.last_drill_run.error,
            },
            "shrinks_pending": [
                {
                    "storage": storage,
                    "before": found.before,
                    "after": found.after,
                    "shrank": found.after_created.isoformat(),
                    "objects": [found.before_content.objects, found.after_content.objects],
                    "tar_bytes": [found.before_content.tar_bytes, found.after_content.tar_bytes],
                }
                for storage, pending in self.shrinks.items()
                for found in pending
            ],
        }


def _archive_json(manifest: Manifest | None) -> dict[str, object] | None:
    if manifest is None:
        return None
    return {
        "id": manifest.id,
        "created": manifest.started.isoformat(),
        "size": manifest.size,
        "tar_size": manifest.tar_size,
        "added_bytes": manifest.added_bytes,
    }


@dataclass(frozen=True)
class PolicyStatus:
    name: str
    backup: Upcoming | None  # None: not scheduled
    drill: Upcoming | None
    volumes: list[VolumeStatus]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "backup": self.backup.to_json() if self.backup else None,
            "drill": self.drill.to_json() if self.drill else None,
            "volumes": [volume.to_json() for volume in self.volumes],
        }


@dataclass(frozen=True)
class Status:
    running: bool
    heartbeat: Heartbeat | None  # the last one the daemon wrote, even if it is gone
    policies: list[PolicyStatus]
    notes: list[str]  # what could not be looked at, and why

    def to_json(self) -> dict[str, object]:
        beat = self.heartbeat
        return {
            "daemon": {
                "running": self.running,
                "pid": beat.pid if beat else None,
                "started": beat.started.isoformat() if beat else None,
                "heartbeat": beat.beat.isoformat() if beat else None,
                "activity": beat.activity if beat and self.running else None,
            },
            "policies": [policy.to_json() for policy in self.policies],
            "notes": self.notes,
        }


def collect_status(ctx: Context, now: datetime) -> Status:
    """Given the config and the state dir, return the status at `now`."""
    config, state_dir = ctx.config, ctx.state_dir
    notes: list[str] = []
    heartbeat = read_heartbeat(state_dir)
    try:
        running = daemon_running(state_dir)
        history = History(state_dir)
        backups = {
            key: _interrupted(record) for key, record in history.last_operations("backup").items()
        }
        drills = history.last_operations("drill")
        anchors = history.schedule_anchors()
    except (OSError, sqlite3.Error) as error:  # a user who may not read root's state dir
        reason = f"{error.filename}: {error.strerror}" if isinstance(error, OSError) else error
        notes.append(
            f"the state dir {state_dir} cannot be read ({reason}): this host's run history "
            "and whether the daemon runs are not shown; run as root, or give --state-dir"
        )
        running, backups, drills, anchors = False, {}, {}, {}
    planned = heartbeat.next_runs if running and heartbeat is not None else None
    selected: dict[str, list[str]] = {}
    try:
        api = connect(timeout=ENGINE_TIMEOUT_SECONDS)
        for policy in config.policies.values():
            selected[policy.name] = [volume.name for volume in select_volumes(api, policy.selector)]
    except DockerUnavailable as error:
        notes.append(f"volumes selected by a match are not shown: {error}")
    except (docker.errors.DockerException, requests.RequestException) as error:
        notes.append(f"volumes selected by a match are not shown: {engine_failure(error)}")
    policies = []
    for policy in config.policies.values():
        repositories = []
        stored: set[str] = set()
        for repository in ctx.repositories(policy):
            try:
                stored.update(repository.volumes(policy.name))
                repositories.append(repository)
            except OSError as error:
                notes.append(str(repository.failure(error, "cannot list the archives")))
        covered = _covered(policy, selected.get(policy.name))
        # a volume the config no longer covers shows while the storages hold archives of
        # it, marked so; by its run history alone (a FAILED forever) not at all
        recorded = {volume for owner, volume in backups if owner == policy.name}
        names = sorted({*stored, *(recorded if covered is None else covered)})
        volumes = [
            VolumeStatus(
                name,
                backups.get((policy.name, name)),
                {r.name: _newest_backup(r, policy.name, name) for r in repositories},
                _last_drill(repositories, policy.name, name),
                drills.get((policy.name, name)),
                _pending_shrinks(policy, repositories, name, now),
                in_config=covered is None or name in covered,
                usage=_usage(repositories, policy.name, name),
            )
            for name in names
        ]
        drill_schedule = policy.drill.schedule if policy.drill else None
        timing = (policy, planned, anchors, now, ctx.splay)  # what both next runs depend on
        policies.append(
            PolicyStatus(
                policy.name,
                _upcoming(f"backup:{policy.name}", policy.schedule, *timing),
                _upcoming(f"drill:{policy.name}", drill_schedule, *timing),
                volumes,
            )
        )
    return Status(running, heartbeat, policies, notes)


def _upcoming(
    job: str,
    schedule: Schedule | None,
    policy: Policy,
    planned: dict[str, datetime | None] | None,
    anchors: dict[str, datetime],
    now: datetime,
    splay: timedelta,
) -> Upcoming | None:
    """Given a job's schedule (None: not scheduled), return its next run: as the running
    daemon planned it (`planned`), or as the daemon's next start would plan it (with this
    host's `splay` offset)."""
    if schedule is None:
        return None
    if planned is not None and job in planned:
        return Upcoming(schedule.text, planned[job])
    anchor = anchors.get(job)
    if anchor is None:
        return Upcoming(schedule.text, next_run(schedule, policy.timezone, now, splay=splay))
    first = first_run(schedule, policy.timezone, anchor, now, splay=splay)
    if first == now:
        due = next_run(schedule, policy.timezone, anchor, splay=splay)
        return Upcoming(schedule.text, due, overdue=True)
    return Upcoming(schedule.text, first)


def _covered(policy: Policy, matched: list[str] | None) -> set[str] | None:
    """Given a policy and the volumes its match selects now (None: the engine was not
    asked), return the volumes it covers, or None if that cannot be known."""
    selector = policy.selector
    if matched is None and (selector.label_key is not None or selector.name_glob is not None):
        return None
    return {*selector.names, *(matched or [])}


def _interrupted(record: OperationRecord) -> OperationRecord:
    """Given a recorded operation, return it with outcome "interrupted" if it is recorded as
    running but nothing holds its volume's lock any more (its process died)."""
    if record.outcome == "running" and not is_locked(record.volume):
        return replace(record, outcome="interrupted")
    return record


def _newest_backup(repository: Repository, policy: str, volume: str) -> Manifest | None:
    """Return the manifest of the volume's newest readable backup in the repository (not a
    safety archive), or None."""
    found = newest_readable_backup([repository], policy, volume)
    return found.manifest if found is not None else None


def _usage(repositories: list[Repository], policy: str, volume: str) -> dict[str, Usage]:
    """Return, by repository, the usage of the volume's backups there (one that cannot be
    listed is left out: `collect_status` notes why; an unreadable manifest counts for
    nothing, as `list` shows)."""
    found = {}
    for repository in repositories:
        try:
            keys = repository.backups(policy, volume)
        except OSError:
            continue
        found[repository.name] = backups_usage(_readable_manifests(repository, keys))
    return found


def _readable_manifests(repository: Repository, keys: Iterable[ArchiveKey]) -> Iterator[Manifest]:
    """Yield the summaries of the archives' manifests that can be read."""
    for manifest in read_summaries(repository, keys):
        if isinstance(manifest, Manifest):
            yield manifest


def _last_drill(repositories: list[Repository], policy: str, volume: str) -> DrillRecord | None:
    """Return the most recent drill verdict of any of the volume's archives, or None."""
    records = [
        repository.read_drill(key)
        for repository in repositories
        for key in repository.archives(policy, volume)
    ]
    return max(
        (record for record in records if record is not None),
        key=lambda record: record.finished,
        default=None,
    )


def describe_status(status: Status, now: datetime) -> str:
    """Return the status as a terminal shows it: the daemon, then a table per policy."""
    beat = status.heartbeat
    if status.running and beat is not None:
        lines = [f"daemon: running, pid {beat.pid}, since {_when(beat.started)}: {beat.activity}"]
        if (now - beat.beat).total_seconds() > STALE_HEARTBEAT_SECONDS:
            lines.append(f"  warning: no heartbeat for {age(now - beat.beat)}: is it stuck?")
    elif status.running:
        lines = ["daemon: running (starting)"]
    elif beat is not None:
        lines = [f"daemon: not running (last seen {age(now - beat.beat)} ago, pid {beat.pid})"]
    else:
        lines = ["daemon: not running"]
    lines += [f"note: {note}" for note in status.notes]
    for policy in status.policies:
        runs = [
            f"{kind} {upcoming.schedule!r}, next {upcoming.describe()}"
            for kind, upcoming in (("backup", policy.backup), ("drill", policy.drill))
            if upcoming is not None
        ]
        lines += ["", f"policy {policy.name}: {'; '.join(runs) or 'not scheduled'}"]
        table = [STATUS_COLUMNS, *(_volume_row(volume, now) for volume in policy.volumes)]
        widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
        for row in table:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            lines.append("  " + "  ".join(cells).rstrip())
        for volume in policy.volumes:
            for storage, pending in volume.shrinks.items():
                lines += [
                    f"  shrink pending: {volume.name} in {storage} {found.describe()}; "
                    f"{found.before} is kept until `volkeep accept-shrink {policy.name} "
                    f"--volume {volume.name}`"
                    for found in pending
                ]
    return "\n".join(lines)


def _pending_shrinks(
    policy: Policy, repositories: list[Repository], volume: str, now: datetime
) -> dict[str, list[Shrink]]:
    """Return, by storage, the volume's shrinks that retention keeps archives for (a
    storage that cannot be read shows none: its failure is the list's and the prune's)."""
    found = {}
    for repository in repositories:
        try:
            pending = pending_shrinks(policy, repository, volume, now)
        except (OSError, OperationError):
            continue
        if pending:
            found[repository.name] = pending
    return found


def _volume_row(volume: VolumeStatus, now: datetime) -> tuple[str, ...]:
    archive = volume.newest_archive
    if len(volume.newest) > 1:
        newest = ", ".join(
            f"{name}: {manifest.id if manifest else '-'}"
            for name, manifest in volume.newest.items()
        )
    else:
        newest = archive.id if archive else "-"
    verdict = drill_summary(volume.last_drill, now)
    if volume.last_drill is not None and volume.last_drill.restore_seconds:
        verdict += f", restore {volume.last_drill.restore_seconds:.1f}s"
    return (
        volume.name,
        _last_run(volume.last_backup, now) if volume.in_config else "removed from the config",
        newest,
        human_bytes(archive.tar_size) if archive else "-",
        human_bytes(archive.added_bytes) if archive else "-",
        verdict,
        _last_run(volume.last_drill_run, now),
    )


def _last_run(run: OperationRecord | None, now: datetime) -> str:
    """Given a volume's last backup or drill run on this host, return it as the table shows
    it. The last drill run stands beside the verdict: a run that could not reach one (a
    wrong key, the engine down) leaves the last verdict standing, and must show."""
    if run is None:
        return "never (on this host)"
    if run.outcome == "failed":
        # a long reason is cut to fit the table (status --json has it whole)
        return fit(f"FAILED {age(now - run.started)} ago: {run.error}", REASON_WIDTH)
    return f"{run.outcome} {age(now - run.started)} ago"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")
