"""The stop journal: what it lists, what survives a new backup of the volume, and who starts
again the containers it lists."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import docker
import pytest
from structlog.testing import capture_logs

from daemon.engine import journal
from daemon.engine.containers import ContainerInfo
from daemon.engine.journal import (
    Journal,
    StoppedContainer,
    UnreadableJournal,
    containers_stopped,
    journal_path,
    journals,
    read_journal,
    restart_pending,
    write_journal,
)
from daemon.errors import OperationError
from daemon.state.history import History
from daemon.state.locks import LOCK_DIRECTORY, volume_lock
from daemon.system.owner import this_process

MOMENT = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def stopped(name: str) -> StoppedContainer:
    return StoppedContainer(f"id-{name}", name, MOMENT)


def test_a_written_journal_reads_back_whole(tmp_path: Path) -> None:
    journal = Journal("app", "app_db", "host:1:2", (stopped("db"), stopped("web")))
    assert write_journal(tmp_path, journal) == journal
    assert read_journal(journal_path(tmp_path, "app_db")) == journal
    assert journals(tmp_path) == [tmp_path / "stopped" / "app_db.json"]
    assert list((tmp_path / "stopped").iterdir()) == journals(tmp_path)  # no temporary left


def test_containers_a_dead_volkeep_could_not_start_stay_listed(tmp_path: Path) -> None:
    write_journal(tmp_path, Journal("app", "app_db", "host:1:2", (stopped("db"), stopped("old"))))
    newer = write_journal(tmp_path, Journal("app", "app_db", "host:3:4", (stopped("db"),)))
    assert [c.name for c in newer.containers] == ["db", "old"]
    assert read_journal(journal_path(tmp_path, "app_db")) == newer


def test_an_unreadable_journal_is_an_error_and_a_missing_one_is_none(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "app_db")
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(UnreadableJournal):
        read_journal(path)
    assert read_journal(journal_path(tmp_path, "absent")) is None


class FakeEngine:
    """Containers by id, running or not; a container refuses as many starts as `refusals`
    says (the engine answers 500, as when its network is not back yet)."""

    def __init__(self, running: dict[str, bool], refusals: dict[str, int] | None = None) -> None:
        self.running = dict(running)
        self.refusals = dict(refusals or {})
        self.start_attempts: list[str] = []
        self.stopped: list[str] = []

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if container_id not in self.running:
            raise docker.errors.NotFound(f"no such container: {container_id}")
        return {"State": {"Running": self.running[container_id]}}

    def start(self, container_id: str) -> None:
        self.start_attempts.append(container_id)
        if self.refusals.get(container_id, 0) > 0:
            self.refusals[container_id] -= 1
            raise docker.errors.APIError("500 Server Error", explanation="network not found")
        self.running[container_id] = True

    def stop(self, container_id: str, timeout: int) -> None:
        self.stopped.append(container_id)
        self.running[container_id] = False


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "START_RETRY_DELAYS", (0.01, 0.01, 0.01))


def info(name: str) -> ContainerInfo:
    return ContainerInfo(f"id-{name}", name, running=True)


def test_a_container_that_refuses_its_first_start_runs_again_when_the_backup_ends(
    tmp_path: Path, quick_retries: None
) -> None:
    engine = FakeEngine({"id-db": True}, refusals={"id-db": 2})
    with containers_stopped(cast(Any, engine), tmp_path, "app", "app_db", [info("db")], 10):
        assert engine.running == {"id-db": False}
    assert engine.running == {"id-db": True}
    assert engine.start_attempts == ["id-db"] * 3
    assert journals(tmp_path) == []


def test_a_container_that_never_starts_stays_alone_in_the_journal(
    tmp_path: Path, quick_retries: None
) -> None:
    engine = FakeEngine({"id-db": True, "id-web": True}, refusals={"id-web": 99})
    containers = [info("web"), info("db")]
    with (
        pytest.raises(OperationError, match="could not start again: web"),
        containers_stopped(cast(Any, engine), tmp_path, "app", "app_db", containers, 10),
    ):
        pass
    assert engine.running == {"id-db": True, "id-web": False}
    assert engine.start_attempts.count("id-web") == len(journal.START_RETRY_DELAYS) + 1
    left = read_journal(journal_path(tmp_path, "app_db"))
    assert left is not None and [c.name for c in left.containers] == ["web"]


def test_a_journal_a_live_volkeep_left_is_retried_once_its_volume_lock_is_free(
    tmp_path: Path,
) -> None:
    # this very process stopped db and could not start it: the owner lives, the lock is free
    write_journal(tmp_path, Journal("app", "app_db", this_process(), (stopped("db"),)))
    engine = FakeEngine({"id-db": False})
    restart_pending(cast(Any, engine), tmp_path)
    assert engine.running == {"id-db": True}
    assert journals(tmp_path) == []
    (downtime,) = History(tmp_path).downtimes("app", "app_db")
    assert downtime.container == "db" and downtime.stopped == MOMENT


def test_a_journal_whose_volume_lock_is_held_is_left_to_its_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCK_DIRECTORY, str(tmp_path / "locks"))
    write_journal(tmp_path, Journal("app", "app_db", "host:1:2", (stopped("db"),)))
    engine = FakeEngine({"id-db": False})
    with volume_lock("app_db", "backup of app"):
        restart_pending(cast(Any, engine), tmp_path)
    assert engine.start_attempts == []
    assert journals(tmp_path) == [journal_path(tmp_path, "app_db")]


def unreadable_journal(state_dir: Path, volume: str) -> bytes:
    path = journal_path(state_dir, volume)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b'{"version": 1, "policy": "app", "volume": "app_db", "containers": [{"id"')
    return path.read_bytes()


def test_an_unreadable_journal_is_kept_aside_and_no_container_is_stopped_until_it_is_removed(
    tmp_path: Path,
) -> None:
    damaged = unreadable_journal(tmp_path, "app_db")
    engine = FakeEngine({"id-db": True})

    def backup() -> None:
        with containers_stopped(cast(Any, engine), tmp_path, "app", "app_db", [info("db")], 10):
            pass

    with capture_logs() as logged, pytest.raises(OperationError) as refused:
        backup()
    (kept,) = (tmp_path / "stopped").glob("app_db.json.unreadable-*")
    assert kept.read_bytes() == damaged
    assert journals(tmp_path) == []
    assert str(kept) in refused.value.message and "nothing was stopped" in refused.value.message
    (error,) = [e for e in logged if e["log_level"] == "error"]
    assert error["journal"] == str(kept)
    assert engine.stopped == []

    with pytest.raises(OperationError, match="stops no container for this volume"):
        backup()  # the next backup too, until an operator looks
    assert engine.stopped == []

    kept.unlink()
    backup()
    assert engine.stopped == ["id-db"] and engine.running == {"id-db": True}


def test_restarting_abandoned_journals_keeps_an_unreadable_one_aside(tmp_path: Path) -> None:
    damaged = unreadable_journal(tmp_path, "app_db")
    with capture_logs() as logged:
        restart_pending(cast(Any, FakeEngine({})), tmp_path)
    (kept,) = (tmp_path / "stopped").glob("app_db.json.unreadable-*")
    assert kept.read_bytes() == damaged
    assert [e["journal"] for e in logged if e["log_level"] == "error"] == [str(kept)]
