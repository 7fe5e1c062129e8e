"""Policy schedules as APScheduler triggers, the next run time they give, the catch-up
rule for runs missed while the daemon was down, and the splay: this host's offset on every
cron schedule (`daemon.splay`), so that hosts with the same schedule do not all reach the
storage in the same second."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import cron_trigger
from daemon.config.model import Schedule

GAP_RUNS = 64  # the runs of a cron schedule `longest_gap` looks at


def splay_offset(host: str, window: timedelta) -> timedelta:
    """Given a host name and the splay window, return the host's offset: whole seconds in
    [0, window), the same for the same name on every machine and at every start (a SHA-256
    of the name, not Python's per-process hash)."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(host.encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % seconds)


def _shifted(moment: datetime, offset: timedelta) -> datetime:
    """Return `moment` moved by `offset` of real time (across a daylight saving change too),
    in its own time zone."""
    return (moment.astimezone(UTC) + offset).astimezone(moment.tzinfo)


class ShiftedTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 has no types
    """Fires `offset` after each time `trigger` would."""

    __slots__ = ("offset", "trigger")

    def __init__(self, trigger: BaseTrigger, offset: timedelta) -> None:
        self.trigger = trigger
        self.offset = offset

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        previous = (
            None if previous_fire_time is None else _shifted(previous_fire_time, -self.offset)
        )
        fire_time: datetime | None = self.trigger.get_next_fire_time(
            previous, _shifted(now, -self.offset)
        )
        return None if fire_time is None else _shifted(fire_time, self.offset)

    def __str__(self) -> str:
        return f"{self.trigger} + {self.offset}"


def trigger_for(
    schedule: Schedule, timezone: str, *, splay: timedelta, start: datetime | None = None
) -> BaseTrigger:
    """Given a validated schedule, an IANA time zone and this host's splay offset, return
    its trigger. A cron schedule fires `splay` after each of its times; an interval is not
    moved (it counts from when this host first scheduled it, which differs from host to
    host already).

    Intervals count from `start` (default: now): their first run is one interval later.
    """
    zone = ZoneInfo(timezone)
    if schedule.cron is not None:
        trigger: BaseTrigger = cron_trigger(schedule.cron, zone)
        return ShiftedTrigger(trigger, splay) if splay else trigger
    assert schedule.interval is not None
    return IntervalTrigger(
        seconds=schedule.interval.total_seconds(),
        start_date=(start or datetime.now(zone)) + schedule.interval,
        timezone=zone,
    )


def next_run(
    schedule: Schedule, timezone: str, after: datetime, *, splay: timedelta
) -> datetime | None:
    """Given a schedule and this host's splay offset, return its first run time strictly
    after `after` (intervals count from `after`), or None if it never runs again."""
    trigger = trigger_for(schedule, timezone, splay=splay, start=after)
    # a cron trigger may return the very time it is given; one microsecond later it may not
    fire_time: datetime | None = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    return fire_time


def longest_gap(schedule: Schedule, timezone: str, after: datetime) -> timedelta | None:
    """Given a schedule, return the longest time between two of its consecutive runs: an
    interval's length; for a cron schedule, the longest gap among its next `GAP_RUNS` runs
    after `after` (3 days for `0 3 * * 1-5`: Friday to Monday). Return None if it runs fewer
    than twice more. A splay moves every run alike: the gaps are the same with or without."""
    if schedule.interval is not None:
        return schedule.interval
    trigger = trigger_for(schedule, timezone, splay=timedelta(0))
    runs: list[datetime] = []
    moment = after
    while len(runs) < GAP_RUNS:
        fire_time: datetime | None = trigger.get_next_fire_time(None, moment)
        if fire_time is None:
            break
        runs.append(fire_time)
        moment = fire_time + timedelta(microseconds=1)
    gaps = [later - earlier for earlier, later in pairwise(runs)]
    return max(gaps, default=None)


def first_run(
    schedule: Schedule, timezone: str, anchor: datetime, now: datetime, *, splay: timedelta
) -> datetime | None:
    """Given a job's schedule, the time it counts from (its last run, else when it was first
    scheduled), now and this host's splay offset, return the job's first run: `now` if a
    run fell due since the anchor (however many did: missed runs are coalesced into one),
    else its next run."""
    due = next_run(schedule, timezone, anchor, splay=splay)
    return now if due is not None and due <= now else due
