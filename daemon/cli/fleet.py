"""How `volkeep hosts` and `volkeep fleet status` print the fleet a storage records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from daemon.actions.fleet import Fleet, HostState, VolumeState
from daemon.actions.listing import age, drill_summary
from daemon.terminal.render import paint, plural

BEFORE_HOST_NAMES_LABEL = "(before host names)"


def host_label(host: HostState) -> str:
    """Given a host namespace, return its name as printed, with what its record says of
    it: renamed, no marker, an unreadable marker."""
    name = host.host or BEFORE_HOST_NAMES_LABEL
    if host.record_problem is not None:
        return f"{name} (unreadable marker)"
    if host.record is None:
        return name if not host.host else f"{name} (no marker)"
    if host.record.renamed_to is not None:
        return f"{name} (renamed {host.record.renamed_to})"
    return name


def describe_hosts(fleet: Fleet, now: datetime) -> str:
    """Return the table of `volkeep hosts`: per host, its policies, its volumes, its newest
    archive and its newest drill verdict."""
    header = ("STORAGE", "HOST", "POLICIES", "VOLUMES", "NEWEST ARCHIVE", "NEWEST DRILL")
    rows = []
    for host in fleet.hosts:
        newest = max(
            (volume.newest for volume in host.volumes if volume.newest is not None),
            key=lambda key: key.order,
            default=None,
        )
        drills = [volume.drill for volume in host.volumes if volume.drill is not None]
        drill = max(drills, key=lambda record: record.finished, default=None)
        policies = sorted({volume.policy for volume in host.volumes})
        rows.append(
            (
                host.storage,
                host_label(host),
                ", ".join(policies) or "-",
                str(len(host.volumes)),
                _archive(newest.id if newest else None, newest.time if newest else None, now),
                drill_summary(drill, now),
            )
        )
    return _table(header, rows) if rows else "no host in the storage"


def describe_fleet(fleet: Fleet, now: datetime) -> str:
    """Return the table of `volkeep fleet status`: per host and volume, the newest archive
    and drill with their ages, and what is overdue or failed."""
    header = ("STORAGE", "HOST", "POLICY/VOLUME", "NEWEST ARCHIVE", "NEWEST DRILL", "STATE")
    rows = [
        (
            host.storage,
            host_label(host),
            f"{volume.policy}/{volume.volume}",
            _archive(volume.newest.id if volume.newest else None, _time(volume), now),
            drill_summary(volume.drill, now),
            _state(volume),
        )
        for host in fleet.hosts
        for volume in host.volumes
    ]
    lines = [_table(header, rows)] if rows else ["no host in the storage"]
    problems = sum(not volume.healthy for host in fleet.hosts for volume in host.volumes)
    hosts = len({(host.storage, host.host) for host in fleet.hosts})
    summary = f"{plural(hosts, 'host')}, {plural(len(rows), 'volume')}"
    lines.append(f"{summary}: {paint(plural(problems, 'problem')) if problems else 'all well'}")
    return "\n".join(lines)


def _state(volume: VolumeState) -> str:
    flags = []
    if volume.backup_overdue and volume.backup_due is not None:
        flags.append(f"BACKUP OVERDUE (due {volume.backup_due:%Y-%m-%d %H:%M %Z})")
    if volume.drill_overdue and volume.drill_due is not None:
        flags.append(f"DRILL OVERDUE (due {volume.drill_due:%Y-%m-%d %H:%M %Z})")
    if volume.drill_failed:
        flags.append("DRILL FAILED")
    return paint(", ".join(flags)) if flags else "ok"


def _time(volume: VolumeState) -> datetime | None:
    return volume.newest.time if volume.newest else None


def _archive(archive_id: str | None, moment: datetime | None, now: datetime) -> str:
    if archive_id is None:
        return "none"
    return f"{archive_id} ({age(now - moment)} ago)" if moment else archive_id


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )
