"""Which archives of one volume to keep: restic's `forget` rules plus volkeep's safety rules.

A pure function over plain data. The caller lists only committed archives (those with
a manifest, SPEC §4) as candidates, one volume at a time, and prunes only after a newer
backup has succeeded (SPEC §5.2). Deleting is the caller's job too; every path that
deletes an archive asks `may_delete` first.

The rules, applied to every archive and OR'ed, as restic applies them:

- Archives are ordered newest first.
- `keep_last N` keeps the N newest archives.
- `keep_hourly/daily/weekly/monthly/yearly N` keeps the newest archive of each of the N
  newest buckets that hold an archive (so missed days do not use up `keep_daily`). Buckets
  are wall-clock periods in the policy's timezone: hour, day, ISO year and week, month,
  year. Each kind counts on its own. Two archives at 02:30 on the night the clocks go
  back share one hourly bucket. If a kind still has counts left after the oldest
  archive, the oldest archive is kept as well ("oldest daily"), as restic does, to
  stretch the history kept.
- `keep_within D` keeps the archives created less than D before the newest archive
  that is not in the future. Like restic, it measures from the newest archive, not from
  `now`: a volume whose backups stopped keeps its last D of history instead of losing it
  as time passes. Skipping archives in the future keeps one clock-skewed archive from
  sliding the window past the real ones.
- With no rule at all, every archive is kept. A count of 0 keeps nothing by its rule;
  negative counts and durations are the config loader's to reject.

The safety rules (`protected_reasons`) override all of that.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.config.model import RetentionRules
from daemon.rules import shrink as shrink_guard


@dataclass(frozen=True)
class Candidate:
    """One committed archive of a volume."""

    id: str  # the archive id, e.g. "20261128T030000Z"
    created: datetime  # timezone-aware
    drill_passed: bool  # its latest drill record passed
    content: shrink_guard.Content | None = None  # what it held; None: unknown (no shrink guard)


@dataclass(frozen=True)
class Decision:
    """Whether to keep one archive, and every reason for keeping it (none if it goes)."""

    id: str
    keep: bool
    reasons: tuple[str, ...]


def select(
    candidates: Sequence[Candidate],
    rules: RetentionRules,
    timezone: str,
    now: datetime,
    *,
    shrink: shrink_guard.Guard = shrink_guard.UNTIL_ACCEPTED,
) -> list[Decision]:
    """Given the committed archives of one volume, a policy's retention rules and timezone,
    the current time and the volume's shrink guard, return one decision per archive,
    newest first.

    Raise ValueError if `now` or a creation time is not timezone-aware.
    """
    if now.tzinfo is None or any(candidate.created.tzinfo is None for candidate in candidates):
        raise ValueError("retention needs timezone-aware datetimes")
    ordered = _newest_first(candidates)
    zone = ZoneInfo(timezone)
    local = [candidate.created.astimezone(zone) for candidate in ordered]
    counted_rules: tuple[tuple[str, int | None, Sequence[Hashable]], ...] = (
        ("last", rules.keep_last, range(len(ordered))),
        ("hourly", rules.keep_hourly, [(t.year, t.month, t.day, t.hour) for t in local]),
        ("daily", rules.keep_daily, [(t.year, t.month, t.day) for t in local]),
        ("weekly", rules.keep_weekly, [t.isocalendar()[:2] for t in local]),
        ("monthly", rules.keep_monthly, [(t.year, t.month) for t in local]),
        ("yearly", rules.keep_yearly, [t.year for t in local]),
    )
    reasons_per_rule = [
        _bucket_reasons(kind, count, keys)
        for kind, count, keys in counted_rules
        if count is not None
    ]
    if rules.keep_within is not None:
        reasons_per_rule.append(_within_reasons(rules.keep_within, ordered, now))
    if rules.is_empty():
        reasons_per_rule.append(["no retention rules"] * len(ordered))
    protected = protected_reasons(ordered, now, shrink=shrink)

    decisions = []
    for index, candidate in enumerate(ordered):
        kept_by_rules = (per_rule[index] for per_rule in reasons_per_rule)
        reasons = (*filter(None, kept_by_rules), *protected.get(candidate.id, ()))
        decisions.append(Decision(candidate.id, bool(reasons), reasons))
    assert not decisions or decisions[0].keep, "retention must never delete every archive"
    return decisions


def protected_reasons(
    candidates: Sequence[Candidate],
    now: datetime,
    *,
    shrink: shrink_guard.Guard = shrink_guard.UNTIL_ACCEPTED,
) -> dict[str, tuple[str, ...]]:
    """Given the committed archives of one volume, the current time and the volume's
    shrink guard (the default holds until accepted), return the ids of the archives that
    nothing may delete, each with why (SPEC §5.2, §5.13):

    - the newest archive not in the future ("newest archive");
    - the newest archive not in the future whose drill passed ("newest drill-passed archive");
    - every archive created after `now` ("in the future"); with the first rule, this also
      protects the newest archive of all, so no rule set can delete every archive;
    - while a shrink of the volume is pending, the newest archive before it and the first
      after it (`daemon.rules.shrink`), even once a later archive passed a drill.
    """
    protected: dict[str, tuple[str, ...]] = {}
    present = []
    for candidate in _newest_first(candidates):
        if candidate.created > now:
            protected[candidate.id] = ("in the future",)
        else:
            present.append(candidate)
    if present:
        protected[present[0].id] = ("newest archive",)
    drill_passed = next((candidate for candidate in present if candidate.drill_passed), None)
    if drill_passed is not None:
        protected[drill_passed.id] = (
            *protected.get(drill_passed.id, ()),
            "newest drill-passed archive",
        )
    for archive, reasons in shrink_guard.protected_reasons(present, shrink, now).items():
        protected[archive] = (*protected.get(archive, ()), *reasons)
    return protected


def may_delete(
    archive_id: str,
    candidates: Sequence[Candidate],
    now: datetime,
    *,
    shrink: shrink_guard.Guard = shrink_guard.UNTIL_ACCEPTED,
) -> bool:
    """Given an archive id, the committed archives of its volume, the current time and the
    volume's shrink guard, return whether the archive may be deleted: it is one of the
    candidates and no safety rule protects it. Every deletion path asks this, whatever
    decided the deletion.
    """
    known = any(candidate.id == archive_id for candidate in candidates)
    return known and archive_id not in protected_reasons(candidates, now, shrink=shrink)


def safety_decision(
    archive_id: str, created: datetime, keep_for: timedelta, now: datetime
) -> Decision:
    """Given a safety archive (the content a forced restore replaced), when it was taken,
    how long the policy keeps safety archives and the current time, return whether to keep
    it: for `keep_for` after it was taken, measured from `now` (no later backup replaces
    it), then it goes. Safety archives are no candidates of `select` and never count for
    the keep rules; every path that deletes one asks this first."""
    if created + keep_for > now:
        until = (created + keep_for).strftime("%Y-%m-%d %H:%M UTC")
        return Decision(archive_id, True, (f"safety archive, kept until {until}",))
    return Decision(archive_id, False, ())


def _newest_first(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Given archives, return them newest first (ties broken by id, for a stable answer)."""
    return sorted(candidates, key=lambda candidate: (candidate.created, candidate.id), reverse=True)


def _bucket_reasons(kind: str, count: int, keys: Sequence[Hashable]) -> list[str | None]:
    """Given a counted rule (e.g. "daily" and 7) and each archive's bucket key, newest
    first, return per archive the reason the rule keeps it for ("daily 3"), or None.
    """
    reasons: list[str | None] = [None] * len(keys)
    seen: set[Hashable] = set()
    for index, key in enumerate(keys):
        if len(seen) == count:
            return reasons
        if key not in seen:
            seen.add(key)
            reasons[index] = f"{kind} {len(seen)}"
    if reasons:
        reasons[-1] = reasons[-1] or f"oldest {kind}"
    return reasons


def _within_reasons(
    within: timedelta, ordered: Sequence[Candidate], now: datetime
) -> list[str | None]:
    """Given `keep_within`, archives newest first and the current time, return per archive
    the reason the rule keeps it for ("within 10d"), or None.
    """
    latest = max((c.created for c in ordered if c.created <= now), default=now)
    reason = f"within {format_duration(within)}"
    return [reason if candidate.created > latest - within else None for candidate in ordered]


def format_duration(duration: timedelta) -> str:
    """Given a duration, return it as an operator writes it: "10d", "1d12h", "90m" as "1h30m"."""
    seconds = int(duration.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"
