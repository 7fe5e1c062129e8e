"""The event stream: an operation announced once, heard by every subscriber, recorded in the
run history; a failing subscriber never fails the operation, a failing recorder does."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import events
from daemon.errors import OperationError
from daemon.events import (
    ContainersStarted,
    ContainersStopped,
    Event,
    OperationFailed,
    OperationFinished,
    OperationStarted,
)
from daemon.state.history import History


@pytest.fixture
def heard() -> Iterator[list[Event]]:
    found: list[Event] = []
    unsubscribe = events.subscribe(found.append)
    yield found
    unsubscribe()


def test_an_operation_is_announced_started_then_finished_and_recorded(
    tmp_path: Path, heard: list[Event]
) -> None:
    history = History(tmp_path)
    with history.operation("backup", "app", "db") as operation:
        operation.archive, operation.bytes = "20261128T030000Z", 1234
    started, finished = heard
    assert isinstance(started, OperationStarted) and started.kind == "backup"
    assert isinstance(finished, OperationFinished) and finished.id == started.id
    assert (finished.archive, finished.bytes) == ("20261128T030000Z", 1234)
    record = history.last_operations("backup")["app", "db"]
    assert (record.outcome, record.archive, record.bytes) == ("ok", "20261128T030000Z", 1234)


def test_a_failure_is_announced_with_its_line_and_goes_on(
    tmp_path: Path, heard: list[Event]
) -> None:
    history = History(tmp_path)
    with pytest.raises(OperationError), history.operation("drill", "app", "db"):
        raise OperationError("3 objects differ", policy="app", volume="db")
    with pytest.raises(KeyboardInterrupt), history.operation("drill", "app", "db"):
        raise KeyboardInterrupt
    failed, interrupted = (event for event in heard if isinstance(event, OperationFailed))
    assert failed.error == "app/db: 3 objects differ"
    assert interrupted.error == "interrupted: Ctrl-C (SIGINT)"
    assert history.last_operations("drill")["app", "db"].outcome == "failed"
    assert history.outcomes()["drill", "app", "db"].failing


def test_a_failing_subscriber_is_logged_and_the_others_still_hear(
    tmp_path: Path, heard: list[Event]
) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = events.subscribe(broken)
    try:
        with History(tmp_path).operation("backup", "app", "db"):
            pass
    finally:
        unsubscribe()
    assert [type(event) for event in heard] == [OperationStarted, OperationFinished]


def test_a_history_that_cannot_record_the_start_keeps_the_operation_from_running(
    tmp_path: Path, heard: list[Event]
) -> None:
    (tmp_path / "history.sqlite").write_bytes(b"not a database" * 100)
    ran = False
    with pytest.raises(sqlite3.DatabaseError), History(tmp_path).operation("backup", "app", "db"):
        ran = True
    assert not ran and heard == []


def test_containers_are_announced_only_when_some_were_stopped(heard: list[Event]) -> None:
    events.containers_stopped("app", "db", [])
    events.containers_stopped("app", "db", ["web"])
    events.containers_started("app", "db", ["web"])
    stopped, started = heard
    assert isinstance(stopped, ContainersStopped) and stopped.containers == ("web",)
    assert isinstance(started, ContainersStarted) and started.containers == ("web",)
