"""Progress lines: bytes, rate, and an ETA while the total (or its estimate) holds."""

from __future__ import annotations

from daemon.terminal.progress import Progress


def test_a_known_total_gives_percent_and_eta() -> None:
    progress = Progress("restoring", total=1_000_000_000, enabled=False)
    progress.advance(250_000_000)
    line = progress.describe(progress.started + 1.0)
    assert line == "250.0 MB of 1.0 GB (25%), 250.0 MB/s, ETA 3s"


def test_past_an_estimate_only_bytes_and_rate_are_shown() -> None:
    progress = Progress("backing up", total=100_000_000, enabled=False)
    progress.advance(150_000_000)
    assert progress.describe(progress.started + 2.0) == "150.0 MB, 75.0 MB/s"


def test_without_a_total_there_is_no_eta() -> None:
    progress = Progress("backing up", enabled=False)
    progress.advance(5_000)
    assert progress.describe(progress.started + 1.0) == "5.0 KB, 5.0 KB/s"
