"""The status page: per policy and volume, the last backup, the newest archive in each
storage, the drill verdict and its age, the measured restore time (the RTO), and a chart of
the last archives. Rendered from the overview, as `volkeep status` renders its text."""

from __future__ import annotations

import os
from datetime import datetime
from html import escape

from daemon.actions.listing import age
from daemon.actions.status import PolicyStatus, Usage
from daemon.observe.overview import Overview, VolumeOverview
from daemon.observe.web.chart import archive_chart
from daemon.terminal.progress import human_bytes
from daemon.terminal.render import plural

REFRESH_SECONDS = 60
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.8em; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
.ok, .passed { color: #2a7d2a; } .failed, .interrupted { color: #c0392b; font-weight: bold; }
.running { color: #8a6d00; } .muted { color: #777; } .note { color: #8a6d00; }
"""


def render_page(overview: Overview | None, now: datetime, host: str, activity: str) -> str:
    """Given the latest overview (None: not read yet) and what the daemon does now, return
    the page's HTML."""
    title = f"volkeep on {escape(host)}"
    head = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>"
    )
    doing = f'<p class="daemon">daemon: pid {os.getpid()}, {escape(activity)}.'
    if overview is None:
        return f"{head}{doing} Reading the storages and the history&hellip;</p></body></html>"
    parts = [head, f"{doing} Storages and history read {age(now - overview.taken)} ago.</p>"]
    parts += [f'<p class="note">note: {escape(note)}</p>' for note in overview.status.notes]
    for policy in overview.status.policies:
        volumes = [volume for volume in overview.volumes if volume.policy == policy.name]
        parts.append(_policy(policy, volumes, now))
    parts.append("</body></html>")
    return "".join(parts)


def _policy(policy: PolicyStatus, volumes: list[VolumeOverview], now: datetime) -> str:
    runs = [
        f"{kind} {escape(upcoming.schedule)}, next {upcoming.describe()}"
        for kind, upcoming in (("backup", policy.backup), ("drill", policy.drill))
        if upcoming is not None
    ]
    rows = "".join(_volume_row(volume, now) for volume in volumes)
    return (
        f'<section class="policy" data-policy="{escape(policy.name)}">'
        f"<h2>policy {escape(policy.name)}</h2>"
        f"<p>{'; '.join(runs) or 'not scheduled'}</p>"
        "<table><tr><th>volume</th><th>last backup</th><th>newest archive</th>"
        "<th>last drill</th><th>restore time (RTO)</th><th>last archives</th></tr>"
        f"{rows}</table></section>"
    )


def _archive_count(count: int | None) -> str:
    """Given how many archives a storage holds (None: not known), return it in words."""
    return "? archives" if count is None else plural(count, "archive")


def _usage(usage: Usage | None) -> str:
    """Given the usage of a volume's backups in a storage (None: not known), return what
    follows their count: their tar bytes, the bytes they added, and the ratio."""
    if usage is None or usage.ratio is None:
        return ""
    return (
        f" {human_bytes(usage.tar_bytes)} of tar, {human_bytes(usage.added_bytes)} added "
        f'(<span class="ratio">{usage.ratio:.1f}x</span>)'
    )


def _volume_row(volume: VolumeOverview, now: datetime) -> str:
    status = volume.status
    backup = status.last_backup
    if backup is None:
        last = '<td class="backup muted">never (on this host)</td>'
    else:
        error = f": {escape(backup.error)}" if backup.error else ""
        last = (
            f'<td class="backup {escape(backup.outcome)}">{escape(backup.outcome)} '
            f"{age(now - backup.started)} ago{error}</td>"
        )
    newest = "<br>".join(
        f"{escape(storage)}: "
        + (
            f"{escape(manifest.id)} ({human_bytes(manifest.tar_size)}, added "
            f"{human_bytes(manifest.added_bytes)}, {age(now - manifest.started)} ago)"
            if manifest
            else '<span class="muted">none</span>'
        )
        + f' <span class="muted">[{_archive_count(volume.archives.get(storage))}]'
        + f"{_usage(status.usage.get(storage))}</span>"
        for storage, manifest in status.newest.items()
    )
    drill = status.last_drill
    if drill is None:
        verdict = '<td class="drill muted" data-verdict="never">never</td>'
        restore = '<td class="rto muted">-</td>'
    else:
        reason = f": {escape(drill.reason)}" if drill.reason else ""
        verdict = (
            f'<td class="drill {drill.verdict}" data-verdict="{drill.verdict}">{drill.verdict} '
            f"{age(now - drill.finished)} ago, archive {escape(drill.archive)}{reason}</td>"
        )
        restore = (
            f'<td class="rto" data-seconds="{drill.restore_seconds:.3f}">'
            f"{drill.restore_seconds:.1f} s</td>"
            if drill.passed
            else '<td class="rto muted">-</td>'
        )
    return (
        f'<tr data-volume="{escape(volume.name)}"><td>{escape(volume.name)}</td>{last}'
        f"<td>{newest}</td>{verdict}{restore}<td>{archive_chart(volume.points)}</td></tr>"
    )
