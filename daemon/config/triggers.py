"""Policy schedules as APScheduler triggers, the next run time they give, and the catch-up
rule for runs missed while the daemon was down."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import cron_trigger
from daemon.config.model import Schedule


def trigger_for(schedule: Schedule, timezone: str, start: datetime | None = None) -> BaseTrigger:
    """Given a validated schedule and an IANA time zone, return its trigger.

    Intervals count from `start` (default: now): their first run is one interval later.
    """
    zone = ZoneInfo(timezone)
    if schedule.cron is not None:
        trigger: BaseTrigger = cron_trigger(schedule.cron, zone)
        return trigger
    assert schedule.interval is not None
    return IntervalTrigger(
        seconds=schedule.interval.total_seconds(),
        start_date=(start or datetime.now(zone)) + schedule.interval,
        timezone=zone,
    )


def next_run(schedule: Schedule, timezone: str, after: datetime) -> datetime | None:
    """Given a schedule, return its first run time strictly after `after` (intervals count
    from `after`), or None if it never runs again."""
    # a cron trigger may return the very time it is given; one microsecond later it may not
    fire_time: datetime | None = trigger_for(schedule, timezone, start=after).get_next_fire_time(
        None, after + timedelta(microseconds=1)
    )
    return fire_time


def first_run(
    schedule: Schedule, timezone: str, anchor: datetime, now: datetime
) -> datetime | None:
    """Given a job's schedule, the time it counts from (its last run, else when it was first
    scheduled) and now, return the job's first run: `now` if a run fell due since the
    anchor (however many did: missed runs are coalesced into one), else its next run."""
    due = next_run(schedule, timezone, anchor)
    return now if due is not None and due <= now else due
