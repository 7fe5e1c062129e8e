"""The splay (`daemon.splay`): each host runs its cron schedules at a fixed offset within the
window, chosen by its name, so that a fleet with the same schedule does not reach the storage
in the same second; validate, status and the daemon's job table all show and use that time."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.actions.context import Context
from daemon.actions.status import collect_status
from daemon.config import load_config, parse_schedule
from daemon.config.triggers import first_run, next_run, splay_offset
from daemon.service.scheduler import Daemon

WINDOW = timedelta(minutes=30)
NOW = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)


def test_a_host_has_the_same_offset_at_every_start_in_whole_seconds_within_the_window() -> None:
    offset = splay_offset("web-1", WINDOW)
    assert offset == splay_offset("web-1", WINDOW)
    # derived from the name, not Python's per-process hash(): the same in another process
    other_process = subprocess.run(
        [sys.executable, "-c",
         "from datetime import timedelta; from daemon.config.triggers import splay_offset; "
         "print(splay_offset('web-1', timedelta(minutes=30)).total_seconds())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert float(other_process.stdout) == offset.total_seconds()
    assert timedelta(0) <= offset < WINDOW
    assert offset.microseconds == 0


def test_a_hundred_hosts_spread_over_the_window() -> None:
    offsets = [splay_offset(f"web-{number}", WINDOW).total_seconds() for number in range(100)]
    assert len(set(offsets)) >= 95  # hardly two hosts in the same second
    sixths = Counter(int(offset // (WINDOW.total_seconds() / 6)) for offset in offsets)
    assert sorted(sixths) == [0, 1, 2, 3, 4, 5]
    assert all(10 <= count <= 25 for count in sixths.values()), sixths


def test_no_window_is_no_offset() -> None:
    assert splay_offset("web-1", timedelta(0)) == timedelta(0)


def test_a_cron_run_is_the_cron_time_plus_the_offset() -> None:
    offset = splay_offset("web-1", WINDOW)
    daily = parse_schedule("0 3 * * *")
    at_three = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert next_run(daily, "UTC", NOW, splay=offset) == at_three + offset
    # just before today's shifted run (03:00 + offset), it is still today's
    today = datetime(2026, 11, 28, 3, 0, tzinfo=UTC) + offset
    assert next_run(daily, "UTC", today - timedelta(seconds=1), splay=offset) == today
    # the run after the shifted one is tomorrow's, not a second one today
    assert next_run(daily, "UTC", today, splay=offset) == today + timedelta(days=1)


def test_a_missed_shifted_run_is_caught_up_and_a_run_at_the_shifted_time_is_not_missed() -> None:
    offset = timedelta(minutes=20)
    daily = parse_schedule("0 3 * * *")
    last_run = datetime(2026, 11, 28, 3, 20, tzinfo=UTC)  # today's shifted run
    assert first_run(daily, "UTC", last_run, NOW, splay=offset) == last_run + timedelta(days=1)
    yesterday = last_run - timedelta(days=1)
    assert first_run(daily, "UTC", yesterday, NOW, splay=offset) == NOW
    # at 03:10 today's shifted run has not fallen due yet
    early = datetime(2026, 11, 28, 3, 10, tzinfo=UTC)
    assert first_run(daily, "UTC", yesterday, early, splay=offset) == last_run


def test_the_offset_is_real_time_across_a_daylight_saving_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Paris; 01:45 + 30 min is 03:15
    at_quarter_to_two = parse_schedule("45 1 * * *")
    after = datetime(2026, 3, 29, 0, 0, tzinfo=paris)
    run = next_run(at_quarter_to_two, "Europe/Paris", after, splay=timedelta(minutes=30))
    assert run == datetime(2026, 3, 29, 3, 15, tzinfo=paris)
    assert run is not None and run.utcoffset() == timedelta(hours=2)


def test_an_interval_is_not_shifted() -> None:
    every = parse_schedule("@every 6h")
    assert next_run(every, "UTC", NOW, splay=timedelta(minutes=17)) == NOW + timedelta(hours=6)


def write_config(path: Path, splay: str) -> Path:
    path.write_text(
        f"""
version: 1
daemon: {{host: web-1, splay: {splay}}}
storage:
  local: {{type: local, path: {path.parent / "repo"}}}
policies:
  app:
    volumes: [app_db]
    storage: local
    schedule: "0 3 * * *"
    drill: {{schedule: "@every 1d"}}
"""
    )
    return path


def test_the_splay_is_read_from_the_daemon_block_and_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "volkeep.yaml", "30m"))
    assert config.daemon.splay == WINDOW
    assert Context(config, tmp_path / "state").splay == splay_offset("web-1", WINDOW)
    (tmp_path / "plain.yaml").write_text(
        f"version: 1\nstorage: {{local: {{type: local, path: {tmp_path}}}}}\n"
        "policies: {app: {volumes: [app_db], storage: local}}\n"
    )
    assert Context(load_config(tmp_path / "plain.yaml"), tmp_path / "state").splay == timedelta(0)


@pytest.mark.parametrize(("value", "says"), [("soon", "invalid duration"), ("-5m", "invalid")])
def test_a_bad_splay_is_refused_naming_the_key(tmp_path: Path, value: str, says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config",
         str(write_config(tmp_path / "volkeep.yaml", value)), "validate"],
        capture_output=True, text=True, env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "daemon.splay" in result.stderr and says in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_shows_the_shifted_next_run(tmp_path: Path) -> None:
    config = write_config(tmp_path / "volkeep.yaml", "30m")
    before = datetime.now(UTC)
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "--state-dir",
         str(tmp_path / "state"), "validate"],
        capture_output=True, text=True, env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    offset = splay_offset("web-1", WINDOW)
    due = next_run(parse_schedule("0 3 * * *"), "UTC", before, splay=offset)
    assert due is not None and due.strftime("%H:%M:%S") == "03:18:43"
    assert f"backup: '0 3 * * *' + splay {offset}, next {due:%Y-%m-%d %H:%M:%S} UTC" in (
        result.stdout
    )
    assert "drill: '@every 1d', next" in result.stdout  # an interval shows no splay


def test_status_shows_the_shifted_next_run_while_the_daemon_is_down(tmp_path: Path) -> None:
    ctx = Context(load_config(write_config(tmp_path / "volkeep.yaml", "30m")), tmp_path / "state")
    [policy] = collect_status(ctx, NOW).policies
    assert policy.backup is not None
    assert policy.backup.next_run == datetime(2026, 11, 29, 3, 0, tzinfo=UTC) + ctx.splay


def test_the_daemon_schedules_cron_jobs_at_the_shifted_time_and_a_reload_moves_them(
    tmp_path: Path,
) -> None:
    config_file = write_config(tmp_path / "volkeep.yaml", "0s")
    daemon = Daemon(load_config(config_file), config_file, tmp_path / "state")
    daemon.scheduler.start(paused=True)
    try:
        daemon.reload()
        on_time = daemon.scheduler.get_job("backup:app").next_run_time
        assert (on_time.hour, on_time.minute, on_time.second) == (3, 0, 0)

        write_config(config_file, "30m")
        before = datetime.now(UTC)
        daemon.reload()
        shifted = daemon.scheduler.get_job("backup:app").next_run_time
        # today's shifted run when the reload comes between 03:00 and it, else tomorrow's
        offset = splay_offset("web-1", WINDOW)
        candidates = (on_time - timedelta(days=1) + offset, on_time + offset)
        assert shifted == min(when for when in candidates if when > before)
        # and every later run keeps the offset
        trigger = daemon.scheduler.get_job("backup:app").trigger
        assert trigger.get_next_fire_time(shifted, shifted) == shifted + timedelta(days=1)
    finally:
        daemon.scheduler.shutdown(wait=False)
