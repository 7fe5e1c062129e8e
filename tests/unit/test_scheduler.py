"""The scheduler's parts without Docker: which jobs a config asks for, when a job runs first
(the missed-run rule), a reload that fails half way, the parallel limit, and the systemd
notify protocol."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from daemon.config import load_config, parse_schedule
from daemon.config.triggers import first_run, next_run
from daemon.events import (
    ContainersStarted,
    ContainersStopped,
    OperationFinished,
    OperationStarted,
)
from daemon.service.jobs import job_specs
from daemon.service.runner import ParallelLimit
from daemon.service.scheduler import Daemon
from daemon.service.status import StatusLine
from daemon.service.systemd import Watchdog, notify, watchdog_interval
from daemon.state.history import History, read_heartbeat

NOW = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
NO_SPLAY = timedelta(0)


def test_a_config_asks_for_one_job_per_backup_schedule_and_per_drill_schedule(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "volkeep.yaml"
    config_file.write_text(
        f"""
version: 1
storage:
  local: {{type: local, path: {tmp_path}}}
policies:
  app:
    volumes: [app_db]
    storage: local
    schedule: "0 3 * * *"
    timezone: Europe/Paris
    drill: {{schedule: "@weekly"}}
  manual:
    volumes: [scratch]
    storage: local
"""
    )
    specs = job_specs(load_config(config_file), NO_SPLAY)
    assert sorted(specs) == ["backup:app", "drill:app"]
    assert specs["backup:app"].schedule.text == "0 3 * * *"
    assert specs["backup:app"].timezone == "Europe/Paris"
    assert specs["drill:app"].schedule.text == "@weekly"


@pytest.mark.parametrize(
    ("schedule", "anchor", "expected"),
    [
        # an interval counts from the last run: due in 2h
        ("@every 6h", NOW - timedelta(hours=4), NOW + timedelta(hours=2)),
        # 5 runs missed while the daemon was down: one run, now
        ("@every 1h", NOW - timedelta(hours=5, minutes=30), NOW),
        # due exactly now
        ("@every 1h", NOW - timedelta(hours=1), NOW),
        # the 03:00 run of today was missed
        ("0 3 * * *", NOW - timedelta(days=1), NOW),
        # today's 03:00 run happened: the next is tomorrow's
        ("0 3 * * *", NOW - timedelta(minutes=59, seconds=55), NOW + timedelta(hours=23)),
        # a week of missed daily runs is still one run
        ("@daily", NOW - timedelta(days=7), NOW),
    ],
)
def test_first_run_catches_up_once_on_missed_runs_and_otherwise_keeps_the_schedule(
    schedule: str, anchor: datetime, expected: datetime
) -> None:
    assert first_run(parse_schedule(schedule), "UTC", anchor, NOW, splay=NO_SPLAY) == expected


def test_cron_runs_in_the_policy_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    anchor = datetime(2026, 11, 28, 3, 0, 5, tzinfo=paris)  # today's 03:00 Paris run
    now = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)  # 04:30 in Paris
    assert first_run(
        parse_schedule("0 3 * * *"), "Europe/Paris", anchor, now, splay=NO_SPLAY
    ) == datetime(2026, 11, 29, 3, 0, tzinfo=paris)


def test_next_run_is_strictly_after_the_given_time() -> None:
    at_three = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    daily, often = parse_schedule("0 3 * * *"), parse_schedule("@every 2s")
    assert next_run(daily, "UTC", at_three, splay=NO_SPLAY) == at_three + timedelta(days=1)
    assert next_run(often, "UTC", at_three, splay=NO_SPLAY) == at_three + timedelta(seconds=2)


def write_policies(path: Path, schedules: dict[str, str]) -> Path:
    """Write a config with one policy per name, backed up on its schedule."""
    lines = [
        "version: 1",
        "storage:",
        f"  local: {{type: local, path: {path.parent}}}",
        "policies:",
    ]
    for name, schedule in schedules.items():
        lines += [f"  {name}:", f"    volumes: [{name}_data]", "    storage: local"]
        lines.append(f'    schedule: "{schedule}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose scheduler runs paused (no job fires), with jobs for policies a and b."""
    config_file = write_policies(tmp_path / "volkeep.yaml", {"a": "@every 1h", "b": "@every 2h"})
    daemon = Daemon(load_config(config_file), config_file, tmp_path / "state")
    daemon.scheduler.start(paused=True)
    daemon.jobs.replace(daemon.config, NO_SPLAY)
    yield daemon
    daemon.scheduler.shutdown(wait=False)


def scheduled(daemon: Daemon) -> dict[str, object]:
    return {job.id: (job.trigger, job.next_run_time) for job in daemon.scheduler.get_jobs()}


def test_a_reload_whose_new_jobs_cannot_be_built_keeps_every_running_job(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, running = scheduled(daemon), daemon.config
    write_policies(daemon.config.files[0], {"a": "@every 3h", "c": "@every 1h"})

    def broken_history(history: History) -> sqlite3.Connection:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(History, "_connect", broken_history)
    with capture_logs() as logs:
        daemon.reload()  # before the fix: raised, with backup:b already removed

    assert scheduled(daemon) == before
    assert sorted(daemon.jobs.specs) == ["backup:a", "backup:b"]
    assert daemon.config is running
    [refused] = [line for line in logs if line["event"].startswith("config reload failed")]
    assert "disk I/O error" in refused["error"]


def test_a_swap_that_fails_half_way_puts_back_the_jobs_it_touched(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = scheduled(daemon)
    write_policies(daemon.config.files[0], {"a": "@every 3h", "c": "@every 1h"})
    add_job = daemon.scheduler.add_job

    def fails_on_c(*args: object, **kwargs: object) -> object:
        if kwargs.get("id") == "backup:c":
            raise RuntimeError("the job store is full")
        return add_job(*args, **kwargs)

    monkeypatch.setattr(daemon.scheduler, "add_job", fails_on_c)
    daemon.reload()
    monkeypatch.undo()

    assert scheduled(daemon) == before
    assert sorted(daemon.jobs.specs) == ["backup:a", "backup:b"]


def test_a_reload_adds_removes_and_reschedules_and_keeps_the_unchanged_next_runs(
    daemon: Daemon,
) -> None:
    [b_next] = [job.next_run_time for job in daemon.scheduler.get_jobs() if job.id == "backup:b"]
    write_policies(daemon.config.files[0], {"a": "@every 3h", "b": "@every 2h", "c": "@every 1h"})
    with capture_logs() as logs:
        daemon.reload()
    [reloaded] = [line for line in logs if line["event"] == "config reloaded"]
    assert (reloaded["added"], reloaded["removed"], reloaded["rescheduled"]) == (
        ["backup:c"],
        [],
        ["backup:a"],
    )
    assert daemon.scheduler.get_job("backup:b").next_run_time == b_next


def test_the_status_line_tells_what_runs_from_the_event_stream(tmp_path: Path) -> None:
    next_runs = {"backup:app": NOW + timedelta(hours=1)}
    line = StatusLine(tmp_path, lambda: next_runs, threading.Event())
    line(OperationStarted(1, "backup", "app", "db", thread=7))
    line(ContainersStopped("app", "db", ("web", "worker")))
    line(OperationStarted(2, "prune", "app", "db", thread=7))  # part of the backup
    line(OperationStarted(3, "drill", "other", "files", thread=8))
    assert line.describe() == "backing up app/db (stopped: web, worker); drilling other/files"
    line(ContainersStarted("app", "db", ("web", "worker")))
    for number, kind, policy, volume in ((2, "prune", "app", "db"), (1, "backup", "app", "db")):
        line(OperationFinished(number, kind, policy, volume, seconds=1.0))
    assert line.describe() == "drilling other/files"
    line(OperationFinished(3, "drill", "other", "files", seconds=1.0))
    assert line.describe() == "idle, next: app backup at 2026-11-28 05:00:00 UTC"
    heartbeat = read_heartbeat(tmp_path)
    assert heartbeat is not None and heartbeat.activity == line.describe()
    assert heartbeat.next_runs == next_runs


def test_parallel_limit_admits_up_to_its_limit_and_the_next_one_waits_for_a_release() -> None:
    limit = ParallelLimit(1)
    stopping = threading.Event()
    assert limit.acquire(stopping)
    admitted = threading.Event()
    waiter = threading.Thread(target=lambda: limit.acquire(stopping) and admitted.set())
    waiter.start()
    assert not admitted.wait(0.5)
    limit.release()
    assert admitted.wait(10)
    waiter.join()


def test_parallel_limit_gives_no_slot_once_stopping_and_a_larger_limit_frees_waiters() -> None:
    limit = ParallelLimit(1)
    stopping = threading.Event()
    assert limit.acquire(stopping)
    refused = []
    waiter = threading.Thread(target=lambda: refused.append(limit.acquire(stopping)))
    waiter.start()
    stopping.set()
    waiter.join(10)
    assert refused == [False]

    stopping.clear()
    admitted = threading.Event()
    waiter = threading.Thread(target=lambda: limit.acquire(stopping) and admitted.set())
    waiter.start()
    limit.resize(2)
    assert admitted.wait(10)
    waiter.join()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """A datagram socket in the abstract namespace, named in NOTIFY_SOCKET as systemd does."""
    name = f"volkeep-unit-{os.getpid()}-{threading.get_ident()}"
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    channel.bind("\0" + name)
    channel.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    return channel


def test_notify_sends_its_lines_in_one_datagram(listener: socket.socket) -> None:
    notify("READY=1", "STATUS=idle, next: app backup at 03:00")
    assert listener.recv(4096) == b"READY=1\nSTATUS=idle, next: app backup at 03:00"


def test_notify_reaches_a_socket_file_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
        channel.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notify("WATCHDOG=1")
        assert channel.recv(4096) == b"WATCHDOG=1"


def test_notify_outside_systemd_does_nothing_and_a_dead_socket_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "@volkeep-nobody-listens")
    notify("READY=1")


def test_the_watchdog_pings_while_the_scheduler_answers_and_stops_when_it_does_not(
    listener: socket.socket,
) -> None:
    alive = threading.Event()
    alive.set()
    watchdog = Watchdog(0.05, alive.is_set)
    watchdog.start()
    assert [listener.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3
    alive.clear()
    listener.settimeout(0.3)
    with pytest.raises(TimeoutError):
        for _ in range(5):  # at most one ping was on its way when the check failed
            listener.recv(64)
    watchdog.stop()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("20000000", None, 10.0),
        ("20000000", "self", 10.0),
        ("20000000", "1", None),  # meant for another process
        (None, None, None),
        ("0", None, None),
    ],
)
def test_the_watchdog_pings_at_half_of_watchdog_usec_when_meant_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert watchdog_interval() == expected
