"""Policy schedules as APScheduler triggers, and the next run time they give."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import cron_trigger
from daemon.config.model import Schedule


def trigger_for(schedule: Schedule, timezone: str, start: datetime | None = None) -> BaseTrigger:
    """Given a validated schedule and an IANA time zone, return its trigger.

    Intervals count from `start` (default: now).
    """
    zone = ZoneInfo(timezone)
    if schedule.cron is not None:
        trigger: BaseTrigger = cron_trigger(schedule.cron, zone)
        return trigger
    assert schedule.interval is not None
    return IntervalTrigger(
        seconds=schedule.interval.total_seconds(), start_date=start, timezone=zone
    )


def next_run(schedule: Schedule, timezone: str, now: datetime) -> datetime | None:
    """Given a schedule, return the first run time after `now`."""
    fire_time: datetime | None = trigger_for(schedule, timezone, start=now).get_next_fire_time(
        None, now
    )
    return fire_time
