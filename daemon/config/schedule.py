"""Schedules and durations as operators write them, parsed into plain values.

Pure functions shared by the config loader, which validates with them, and the
scheduler, which builds its triggers with `cron_trigger`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from daemon.config.model import Schedule
from daemon.config.suggest import did_you_mean

DURATION = re.compile(
    r"(?:(?P<days>[0-9]+)d)?(?:(?P<hours>[0-9]+)h)?(?:(?P<minutes>[0-9]+)m)?(?:(?P<seconds>[0-9]+)s)?"
)

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# Cron numbers weekdays from Sunday = 0 (7 is Sunday too); APScheduler 3 counts from
# Monday = 0, so weekdays are handed to it by name.
CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
WEEKDAY_ITEM = re.compile(
    r"(?:(?P<all>\*)|(?P<first>[0-9a-z]+)(?:-(?P<last>[0-9a-z]+))?)(?:/(?P<step>[0-9]+))?",
    re.IGNORECASE,
)


def parse_duration(text: str) -> timedelta:
    """Given "30s", "10m", "2h", "1d" or a combination like "1h30m", return the timedelta.

    Raise ValueError if `text` is not such a duration.
    """
    match = DURATION.fullmatch(text.strip())
    if match is None or not any(match.groupdict().values()):
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit (s, m, h, d), "
            "like '30s', '10m' or '1h30m'"
        )
    amounts = {unit: int(amount) for unit, amount in match.groupdict().items() if amount}
    try:
        return timedelta(**amounts)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def parse_schedule(text: str) -> Schedule:
    """Given a cron expression, "@every <duration>" or a macro like "@daily", return its Schedule.

    Raise ValueError if `text` is none of these, names an interval that is not > 0, or a
    cron expression that never fires (like February 31st).
    """
    words = text.split()
    if not words:
        raise ValueError("empty schedule: expected a cron expression, '@every 6h' or '@daily'")
    if words[0] == "@every":
        if len(words) != 2:
            raise ValueError("'@every' takes one duration, like '@every 6h' or '@every 1h30m'")
        interval = parse_duration(words[1])
        if interval <= timedelta(0):
            raise ValueError(f"schedule {text!r} needs an interval longer than 0")
        return Schedule(text, interval=interval)
    if words[0].startswith("@"):
        if len(words) != 1 or words[0] not in CRON_MACROS:
            known = ", ".join(["@every", *CRON_MACROS])
            hint = did_you_mean(words[0], ["@every", *CRON_MACROS])
            raise ValueError(f"unknown schedule {text!r}{hint}; known: {known}")
        return Schedule(text, cron=CRON_MACROS[words[0]])
    cron = " ".join(words)
    if cron_trigger(cron, UTC).get_next_fire_time(None, EPOCH) is None:
        raise ValueError(f"cron expression {cron!r} never fires")
    return Schedule(text, cron=cron)


def cron_trigger(cron: str, zone: tzinfo) -> Any:
    """Given a standard 5-field cron expression and a time zone, return the APScheduler trigger.

    The trigger fires exactly when cron would: weekdays count from Sunday = 0, and when both
    the day of month and the day of week are restricted, either one matching is enough.
    Raise ValueError if `cron` is not a valid expression.
    """
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron expression {cron!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    common = {"minute": minute, "hour": hour, "month": month, "timezone": zone}
    try:
        day_of_week = apscheduler_weekdays(weekday)
        if day.startswith("*") or weekday.startswith("*"):
            return CronTrigger(day=day, day_of_week=day_of_week, **common)
        return OrTrigger(
            [CronTrigger(day=day, **common), CronTrigger(day_of_week=day_of_week, **common)]
        )
    except ValueError as error:
        raise ValueError(f"invalid cron expression {cron!r}: {error}") from None


def apscheduler_weekdays(field: str) -> str:
    """Given a cron day-of-week field ("1-5", "0,6", "*/2", "mon-fri"), return it by day name.

    Raise ValueError if `field` is not a valid day-of-week field.
    """
    if field == "*":
        return "*"
    days = set().union(*(weekday_numbers(item) for item in field.split(",")))
    return ",".join(CRON_WEEKDAYS[day] for day in sorted(days))


def weekday_numbers(item: str) -> set[int]:
    """Given one item of a cron day-of-week list ("5", "1-5", "*/2", "sun"), return its days, 0-6.

    Raise ValueError if `item` is not a valid item.
    """
    match = WEEKDAY_ITEM.fullmatch(item)
    if match is None:
        raise ValueError(f"invalid day of week {item!r}")
    if match["all"]:
        first, last = 0, 6
    else:
        first = weekday_number(match["first"])
        last = weekday_number(match["last"]) if match["last"] else first
    step = int(match["step"] or 1)
    if last < first or step < 1 or (match["step"] and match["first"] and not match["last"]):
        raise ValueError(f"invalid day of week range {item!r}")
    return {day % 7 for day in range(first, last + 1, step)}


def weekday_number(word: str) -> int:
    """Given a cron weekday ("0" to "7", or "sun" to "sat"), return its number, Sunday = 0.

    Raise ValueError if `word` names no weekday.
    """
    if word.lower() in CRON_WEEKDAYS:
        return CRON_WEEKDAYS.index(word.lower())
    if word.isdigit() and len(word) <= 2 and int(word) <= 7:
        return int(word)
    raise ValueError(f"invalid day of week {word!r}: use 0-7 (0 and 7 are Sunday) or sun-sat")
