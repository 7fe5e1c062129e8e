"""Schedules and durations as operators write them, and the triggers the scheduler gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from daemon.config import cron_trigger, parse_duration, parse_schedule
from daemon.config.model import Schedule

THURSDAY = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 5m ", timedelta(minutes=5)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration_reads_units_and_combinations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5x", "m", "-5m", "1.5h", "30m1h", "1h 30m", "5mm"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_duration_refuses_a_duration_too_long_for_a_timedelta() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999999d")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0 3 * * *", Schedule("0 3 * * *", cron="0 3 * * *")),
        ("  0   3 * * 1-5 ", Schedule("  0   3 * * 1-5 ", cron="0 3 * * 1-5")),
        ("@every 6h", Schedule("@every 6h", interval=timedelta(hours=6))),
        ("@every 1h30m", Schedule("@every 1h30m", interval=timedelta(minutes=90))),
        ("@every 5s", Schedule("@every 5s", interval=timedelta(seconds=5))),
        ("@hourly", Schedule("@hourly", cron="0 * * * *")),
        ("@daily", Schedule("@daily", cron="0 0 * * *")),
        ("@midnight", Schedule("@midnight", cron="0 0 * * *")),
        ("@weekly", Schedule("@weekly", cron="0 0 * * 0")),
        ("@monthly", Schedule("@monthly", cron="0 0 1 * *")),
        ("@yearly", Schedule("@yearly", cron="0 0 1 1 *")),
        ("@annually", Schedule("@annually", cron="0 0 1 1 *")),
    ],
)
def test_parse_schedule_reads_cron_intervals_and_macros(text: str, expected: Schedule) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty schedule"),
        ("61 * * * *", "invalid cron expression"),
        ("0 3 * *", "expected 5 fields"),
        ("0 3 * * * *", "expected 5 fields"),
        ("*/0 * * * *", "invalid cron expression"),
        ("0 0 * * 8", "invalid day of week"),
        ("0 0 * * sat-mon", "invalid day of week range"),
        ("0 0 31 2 *", "never fires"),
        ("@every", "takes one duration"),
        ("@every 0s", "longer than 0"),
        ("@every 6x", "invalid duration"),
        ("@daly", "did you mean '@daily'?"),
        ("@daily 3", "unknown schedule"),
    ],
)
def test_parse_schedule_refuses_bad_schedules_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def fire_days(cron: str, count: int = 4) -> list[str]:
    """Given a cron expression, return the weekday and day of its next runs from THURSDAY."""
    trigger = cron_trigger(cron, UTC)
    fires: list[str] = []
    previous, now = None, THURSDAY
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, now)
        fires.append(previous.strftime("%a %d"))
        now = previous + timedelta(seconds=1)
    return fires


def test_cron_trigger_counts_weekdays_from_sunday_as_cron_does() -> None:
    assert fire_days("0 0 * * 0") == ["Sun 04", "Sun 11", "Sun 18", "Sun 25"]
    assert fire_days("0 0 * * 7") == ["Sun 04", "Sun 11", "Sun 18", "Sun 25"]
    assert fire_days("0 0 * * 1-5") == ["Thu 01", "Fri 02", "Mon 05", "Tue 06"]
    assert fire_days("0 0 * * */2") == ["Thu 01", "Sat 03", "Sun 04", "Tue 06"]
    assert fire_days("0 0 * * mon,wed") == ["Mon 05", "Wed 07", "Mon 12", "Wed 14"]


def test_cron_trigger_runs_when_either_restricted_day_matches_as_cron_does() -> None:
    # the 1st of the month, and every Monday
    assert fire_days("0 0 1 * 1") == ["Thu 01", "Mon 05", "Mon 12", "Mon 19"]


def test_cron_trigger_follows_the_time_zone() -> None:
    trigger = cron_trigger("0 3 * * *", ZoneInfo("Europe/Paris"))
    first = trigger.get_next_fire_time(None, THURSDAY)
    assert first.astimezone(UTC) == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
