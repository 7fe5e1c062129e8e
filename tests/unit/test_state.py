"""The state dir: schedule anchors for missed runs, run history queries for status, and the
daemon's pid and heartbeat files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.errors import OperationError
from daemon.state.history import (
    Heartbeat,
    History,
    daemon_pid_file,
    daemon_running,
    read_heartbeat,
    write_heartbeat,
)

MOMENT = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def test_a_new_job_counts_from_its_first_scheduling_until_it_has_run(tmp_path: Path) -> None:
    history = History(tmp_path)
    assert history.schedule_anchors() == {}
    assert history.schedule_anchor("backup:app", MOMENT) == MOMENT
    # a restart later: the job still counts from when it was first scheduled
    assert history.schedule_anchor("backup:app", MOMENT + timedelta(hours=5)) == MOMENT
    history.record_run("backup:app", MOMENT + timedelta(hours=6))
    assert history.schedule_anchor("backup:app", MOMENT + timedelta(hours=7)) == MOMENT + (
        timedelta(hours=6)
    )
    assert History(tmp_path).schedule_anchors() == {"backup:app": MOMENT + timedelta(hours=6)}


def test_recording_a_run_of_a_job_never_scheduled_before_anchors_it(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.record_run("drill:app", MOMENT)
    assert history.schedule_anchor("drill:app", MOMENT + timedelta(days=1)) == MOMENT


def test_last_operations_gives_the_latest_of_a_kind_per_policy_and_volume(
    tmp_path: Path,
) -> None:
    history = History(tmp_path)
    with history.operation("backup", "app", "db") as first:
        first.archive, first.bytes = "20261128T030000Z", 100
    with pytest.raises(OperationError), history.operation("backup", "app", "db"):
        raise OperationError("the helper's tar failed (exit 2)")
    with history.operation("backup", "app", "uploads") as other:
        other.archive = "20261128T030001Z"
    with history.operation("drill", "app", "db"):
        pass

    latest = history.last_operations("backup")
    assert sorted(latest) == [("app", "db"), ("app", "uploads")]
    failed = latest[("app", "db")]
    assert failed.outcome == "failed" and failed.archive is None
    assert failed.error == "the helper's tar failed (exit 2)"
    assert failed.finished is not None and failed.finished >= failed.started
    assert latest[("app", "uploads")].outcome == "ok"
    assert latest[("app", "uploads")].archive == "20261128T030001Z"
    assert list(history.last_operations("drill")) == [("app", "db")]


def test_one_daemon_per_state_dir_and_status_sees_whether_it_runs(tmp_path: Path) -> None:
    assert not daemon_running(tmp_path)
    with daemon_pid_file(tmp_path):
        assert daemon_running(tmp_path)
        assert (tmp_path / "daemon.pid").read_text().strip().isdigit()
        with (
            pytest.raises(OperationError, match=r"another volkeep daemon \(pid \d+\)"),
            daemon_pid_file(tmp_path),
        ):
            pass
    assert not daemon_running(tmp_path)


def test_a_heartbeat_reads_back_and_a_missing_or_torn_one_reads_as_none(tmp_path: Path) -> None:
    assert read_heartbeat(tmp_path) is None
    beat = Heartbeat(
        1234,
        MOMENT,
        MOMENT + timedelta(seconds=10),
        "idle, next: app backup at 2026-11-29 03:00:00 UTC",
        {"backup:app": MOMENT + timedelta(days=1), "drill:app": None},
    )
    write_heartbeat(tmp_path, beat)
    assert read_heartbeat(tmp_path) == beat
    assert sorted(path.name for path in tmp_path.iterdir()) == ["daemon.json"]
    (tmp_path / "daemon.json").write_text('{"pid": 12')
    assert read_heartbeat(tmp_path) is None
