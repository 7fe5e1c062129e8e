"""`volkeep status` as a terminal shows it: what the table says of a volume's runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from daemon.actions.status import PolicyStatus, Status, VolumeStatus, describe_status
from daemon.rules.verdict import DrillRecord
from daemon.state.history import OperationRecord

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _cells(text: str) -> dict[str, str]:
    """Given a status with one volume, return its row by column heading."""
    header, row = text.splitlines()[-2:]
    starts = [header.index(word) for word in header.split("  ") if word.strip()]
    ends = [*starts[1:], None]
    return {
        header[start:end].strip(): row[start:end].strip()
        for start, end in zip(starts, ends, strict=True)
    }


def test_status_shows_a_failed_drill_run_beside_the_older_passed_verdict() -> None:
    verdict = DrillRecord(
        "app", "app_db", "20260222T043000Z", True, NOW - timedelta(days=7), 3.0, 2.0, 1024
    )
    run = OperationRecord(
        "drill", "app", "app_db", "20260301T043000Z", NOW - timedelta(hours=2),
        NOW - timedelta(hours=2), "failed", None, "drill not run, no verdict: wrong key",
    )  # fmt: skip
    volume = VolumeStatus("app_db", None, {}, verdict, run)
    status = Status(False, None, [PolicyStatus("app", None, None, [volume])], [])

    cells = _cells(describe_status(status, NOW))

    assert cells["DRILL VERDICT"] == "passed 7d ago, restore 2.0s"
    assert cells["LAST DRILL RUN"] == "FAILED 2h ago: drill not run, no verdict: wrong key"
