"""What the storages and the run history say about every volume, read at once: what the
metrics and the status page show.

It is `volkeep status` (`collect_status`: the last backup, the newest archive in each
storage, the last drill verdict) plus what a chart and a gauge need besides: how many
archives each storage holds, when each kind of operation (backup, drill, prune) last
succeeded and failed, the size and measured restore time of the last archives, and how
long each scheduled job may go between two runs. Read from the storage, which
every host sees, and the history, it is right from the daemon's start, not only after its
next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from daemon.actions.context import Context
from daemon.actions.status import Status, VolumeStatus, collect_status
from daemon.config.triggers import longest_gap
from daemon.errors import OperationError
from daemon.repository.store import Repository
from daemon.rules.verdict import DrillRecord
from daemon.state.history import History, Outcomes

CHART_ARCHIVES = 20  # the archives a chart shows, newest last


@dataclass(frozen=True)
class ArchivePoint:
    """One archive as a chart shows it: its size, and its drill (None: never drilled)."""

    id: str
    started: datetime
    size: int
    drill: DrillRecord | None = None


@dataclass(frozen=True)
class VolumeOverview:
    policy: str
    status: VolumeStatus
    archives: dict[str, int]  # by storage, in the policy's order: how many backups it holds
    outcomes: dict[str, Outcomes]  # by kind (backup, drill, prune)
    points: tuple[ArchivePoint, ...] = ()  # the last archives of the first storage, oldest first

    @property
    def name(self) -> str:
        return self.status.name


@dataclass(frozen=True)
class Overview:
    taken: datetime
    status: Status
    volumes: list[VolumeOverview] = field(default_factory=list)
    # by (kind, policy) of each scheduled job: the longest time between two of its runs
    intervals: dict[tuple[str, str], timedelta] = field(default_factory=dict)


def take_overview(ctx: Context, now: datetime) -> Overview:
    """Given the config and the state dir, return the overview at `now`. Raise OSError if
    a storage fails while `collect_status` reads it, sqlite3.Error if the history does."""
    status = collect_status(ctx, now)
    history = History(ctx.state_dir).outcomes()
    volumes = []
    for policy_status in status.policies:
        policy = ctx.policy(policy_status.name)
        repositories = ctx.repositories(policy)
        for volume in policy_status.volumes:
            points = _points(repositories[0], policy.name, volume.name)
            archives = _counts(repositories, policy.name, volume.name)
            outcomes = {
                "backup": _backup_outcomes(
                    history.get(("backup", policy.name, volume.name)), volume
                ),
                "drill": _drill_outcomes(
                    history.get(("drill", policy.name, volume.name)), volume, points
                ),
                "prune": history.get(("prune", policy.name, volume.name)) or Outcomes(),
            }
            volumes.append(VolumeOverview(policy.name, volume, archives, outcomes, points))
    return Overview(now, status, volumes, _intervals(ctx, now))


def _intervals(ctx: Context, now: datetime) -> dict[tuple[str, str], timedelta]:
    """Return, by (kind, policy) of each scheduled job, the longest time between two of its
    runs from `now` on (`longest_gap`); a schedule that runs fewer than twice more is left
    out."""
    intervals = {}
    for policy in ctx.config.policies.values():
        drill = policy.drill.schedule if policy.drill else None
        for kind, schedule in (("backup", policy.schedule), ("drill", drill)):
            gap = None if schedule is None else longest_gap(schedule, policy.timezone, now)
            if gap is not None:
                intervals[kind, policy.name] = gap
    return intervals


def _counts(repositories: list[Repository], policy: str, volume: str) -> dict[str, int]:
    """Return how many backups of the volume each repository holds; one that cannot be
    listed is left out (`collect_status` notes why)."""
    counts = {}
    for repository in repositories:
        try:
            counts[repository.name] = len(repository.backups(policy, volume))
        except OSError:
            continue
    return counts


def _points(repository: Repository, policy: str, volume: str) -> tuple[ArchivePoint, ...]:
    """Return the volume's last backups in the repository, oldest first (none if it cannot
    be listed)."""
    try:
        keys = repository.backups(policy, volume)[:CHART_ARCHIVES]
    except OSError:
        return ()
    points = []
    for key in keys:
        try:
            manifest = repository.read_manifest(key, entries=False)
        except OperationError:
            continue  # an unreadable manifest is no point on a chart
        points.append(
            ArchivePoint(key.id, manifest.started, manifest.size, repository.read_drill(key))
        )
    return tuple(reversed(points))


def _latest(*moments: datetime | None) -> datetime | None:
    return max((moment for moment in moments if moment is not None), default=None)


def _backup_outcomes(recorded: Outcomes | None, volume: VolumeStatus) -> Outcomes:
    """The history's, and the newest archive's end as a success the history may have lost."""
    recorded = recorded or Outcomes()
    newest = volume.newest_archive
    return Outcomes(
        _latest(recorded.last_success, newest.finished if newest else None),
        recorded.last_failure,
    )


def _drill_outcomes(
    recorded: Outcomes | None, volume: VolumeStatus, points: tuple[ArchivePoint, ...]
) -> Outcomes:
    """The history's, and the verdicts recorded beside the archives (by any host)."""
    recorded = recorded or Outcomes()
    verdicts = [point.drill for point in points if point.drill is not None]
    if volume.last_drill is not None:
        verdicts.append(volume.last_drill)
    return Outcomes(
        _latest(recorded.last_success, *(v.finished for v in verdicts if v.passed)),
        _latest(recorded.last_failure, *(v.finished for v in verdicts if not v.passed)),
    )
