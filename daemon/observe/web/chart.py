"""A volume's last archives as a small inline SVG: bars for the archive sizes, dots for the
restore times their drills measured (red: a failed drill). Each mark has a title, which a
browser shows on hover."""

from __future__ import annotations

from html import escape

from daemon.observe.overview import ArchivePoint
from daemon.terminal.progress import human_bytes

WIDTH, HEIGHT = 300, 80
PLOT_TOP, PLOT_BOTTOM = 14, 70


def archive_chart(points: tuple[ArchivePoint, ...]) -> str:
    """Given archives, oldest first, return the SVG element ("" for none)."""
    if not points:
        return ""
    largest = max(point.size for point in points) or 1
    restores = [p.drill.restore_seconds for p in points if p.drill and p.drill.restore_seconds]
    slowest = max(restores, default=0.0) or 1.0
    slot = WIDTH / len(points)
    span = PLOT_BOTTOM - PLOT_TOP
    marks = []
    for index, point in enumerate(points):
        x = index * slot
        height = max(1.0, span * point.size / largest)
        marks.append(
            f'<rect class="size" x="{x + slot * 0.15:.1f}" y="{PLOT_BOTTOM - height:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{height:.1f}" fill="#9bb7d4">'
            f"<title>{escape(point.id)}: {human_bytes(point.size)}</title></rect>"
        )
        drill = point.drill
        if drill is None:
            continue
        y = PLOT_BOTTOM - span * drill.restore_seconds / slowest
        colour = "#2a7d2a" if drill.passed else "#c0392b"
        what = f"restore {drill.restore_seconds:.1f} s" if drill.passed else "drill failed"
        marks.append(
            f'<circle class="restore {drill.verdict}" cx="{x + slot / 2:.1f}" cy="{y:.1f}" '
            f'r="3.5" fill="{colour}"><title>{escape(point.id)}: {what}</title></circle>'
        )
    scales = f"size, up to {human_bytes(largest)}"
    if restores:
        scales += f"; restore time, up to {slowest:.1f} s"
    legend = f'<text x="0" y="10" font-size="10" fill="#555">{scales}</text>'
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="archive size and restore time of the last {len(points)} archives">'
        f"{legend}{''.join(marks)}</svg>"
    )
