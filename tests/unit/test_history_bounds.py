"""The run history stays bounded and is read by index: a synthetic history of a hundred
thousand operations in a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.errors import OperationError
from daemon.state import history as state
from daemon.state.history import KEEP_OPERATIONS, History

START = datetime(2026, 1, 1, tzinfo=UTC)
VOLUMES = [f"vol{index}" for index in range(10)]


def fill(history: History, per_volume: int) -> None:
    """Write `per_volume` backups and drills of each volume straight into the table (as
    years of runs, or an older volkeep that never trimmed, would leave it): every 7th
    failed."""
    rows = []
    for index in range(per_volume):
        moment = (START + timedelta(minutes=index)).isoformat()
        for volume in VOLUMES:
            for kind in ("backup", "drill"):
                outcome = "failed" if index % 7 == 3 else "ok"
                rows.append((kind, "app", volume, moment, moment, outcome))
    with closing(history._connect()) as connection, connection:
        connection.executemany(
            "INSERT INTO operations (kind, policy, volume, started, finished, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )


Read = Callable[[History], object]
READS: dict[str, Read] = {
    "outcomes": lambda history: history.outcomes(),
    "last_operations": lambda history: history.last_operations("backup"),
}


def steps(history: History, read: Read) -> int:
    """Given a history and a read of it, return how many thousand SQLite VM instructions
    the read takes."""
    counted = 0

    def count() -> int:
        nonlocal counted
        counted += 1
        return 0

    connect = history._connect

    def counting() -> sqlite3.Connection:
        connection = connect()
        connection.set_progress_handler(count, 1000)
        return connection

    history._connect = counting  # type: ignore[method-assign]
    try:
        read(history)
    finally:
        history._connect = connect  # type: ignore[method-assign]
    return counted


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_what_status_and_metrics_read_costs_the_same_for_a_hundred_or_four_thousand_rows_a_volume(
    tmp_path: Path, read: Read
) -> None:
    small, large = History(tmp_path / "small"), History(tmp_path / "large")
    fill(small, 100)
    fill(large, 4000)  # 80,000 rows
    assert steps(large, read) <= 2 * steps(small, read) + 2


def test_the_reads_give_the_last_success_failure_and_operation_of_each_volume(
    tmp_path: Path,
) -> None:
    history = History(tmp_path)
    fill(history, 5000)
    last = (START + timedelta(minutes=4999)).isoformat()
    last_failure = (START + timedelta(minutes=4994)).isoformat()  # 4994 % 7 == 3
    outcomes = history.outcomes()
    assert len(outcomes) == 2 * len(VOLUMES)
    found = outcomes[("drill", "app", "vol3")]
    assert (found.last_success, found.last_failure) == (
        datetime.fromisoformat(last),
        datetime.fromisoformat(last_failure),
    )
    latest = history.last_operations("backup")
    assert sorted(latest) == [("app", volume) for volume in VOLUMES]
    assert {record.started.isoformat() for record in latest.values()} == {last}


def count_rows(history: History) -> dict[tuple[str, str], int]:
    with closing(history._connect()) as connection:
        rows = connection.execute(
            "SELECT kind, volume, COUNT(*) FROM operations GROUP BY kind, volume"
        ).fetchall()
    return {(kind, volume): count for kind, volume, count in rows}


def test_trimming_keeps_the_newest_operations_and_the_last_success_and_failure(
    tmp_path: Path,
) -> None:
    history = History(tmp_path)
    fill(history, 2000)
    before = history.outcomes()
    history.trim()
    assert set(count_rows(history).values()) == {KEEP_OPERATIONS}  # the last failure is recent
    assert history.outcomes() == before


def test_a_failure_older_than_the_operations_kept_is_still_what_status_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "KEEP_OPERATIONS", 5)
    history = History(tmp_path)
    with pytest.raises(OperationError), history.operation("backup", "app", "db"):
        raise OperationError("disk full")
    for _ in range(12):
        with history.operation("backup", "app", "db"):
            pass
    assert count_rows(history) == {("backup", "db"): 5 + 1}
    outcomes = history.outcomes()[("backup", "app", "db")]
    assert outcomes.last_failure is not None and outcomes.last_success is not None


def test_each_operation_trims_its_volume_as_it_ends(tmp_path: Path) -> None:
    history = History(tmp_path)
    fill(history, 1000)
    with history.operation("backup", "app", "vol0"):
        pass
    counts = count_rows(history)
    assert counts[("backup", "vol0")] <= KEEP_OPERATIONS + 2
    assert counts[("backup", "vol1")] == 1000  # untouched until its own next operation
