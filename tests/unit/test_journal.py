"""The stop journal on disk: what it lists, and what survives a new backup of the volume."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from daemon.journal import (
    Journal,
    StoppedContainer,
    journal_path,
    journals,
    read_journal,
    write_journal,
)

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


def test_an_unreadable_journal_is_reported_as_none(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "app_db")
    path.parent.mkdir()
    path.write_text("{not json")
    assert read_journal(path) is None
    assert read_journal(journal_path(tmp_path, "absent")) is None
