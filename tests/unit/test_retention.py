"""Retention, case by case: the calendar corners and the safety rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.config.model import RetentionRules
from daemon.rules.retention import Candidate, Decision, may_delete, protected_reasons, select
from daemon.rules.shrink import Content, Guard, longest_window

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def archive(when: str, drill_passed: bool = False) -> Candidate:
    """Given an ISO time in UTC ("2024-02-29T03:00"), return an archive created then."""
    created = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return Candidate(created.strftime("%Y%m%dT%H%M%SZ"), created, drill_passed)


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    """Given decisions, return the kept archive ids with their reasons."""
    return {decision.id: decision.reasons for decision in decisions if decision.keep}


def test_keep_daily_reaches_back_past_missed_days() -> None:
    history = [archive(f"2026-01-{day:02d}T03:00") for day in (1, 2, 5, 9, 10)]
    decisions = select(history, RetentionRules(keep_daily=3), "UTC", NOW)
    assert kept(decisions) == {
        "20260110T030000Z": ("daily 1", "newest archive"),
        "20260109T030000Z": ("daily 2",),
        "20260105T030000Z": ("daily 3",),
    }


def test_keep_daily_keeps_the_newest_archive_of_each_day() -> None:
    history = [
        archive("2026-01-01T03:00"),
        archive("2026-01-01T15:00"),
        archive("2026-01-02T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_daily=2), "UTC", NOW)
    assert list(kept(decisions)) == ["20260102T030000Z", "20260101T150000Z"]


def test_decisions_come_newest_first() -> None:
    history = [
        archive("2026-01-01T03:00"),
        archive("2026-01-03T03:00"),
        archive("2026-01-02T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_last=1), "UTC", NOW)
    assert [decision.id for decision in decisions] == [
        "20260103T030000Z",
        "20260102T030000Z",
        "20260101T030000Z",
    ]


def test_iso_week_53_spans_new_year() -> None:
    # 2020-12-31 and 2021-01-01 are both in ISO week 2020-W53.
    history = [
        archive("2020-12-24T03:00"),
        archive("2020-12-31T03:00"),
        archive("2021-01-01T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_weekly=2), "UTC", NOW)
    assert kept(decisions) == {
        "20210101T030000Z": ("weekly 1", "newest archive"),
        "20201224T030000Z": ("weekly 2",),
    }


def test_iso_week_1_can_start_in_december() -> None:
    # 2024-12-29 is in 2024-W52; 2024-12-30 is already 2025-W01.
    history = [
        archive("2024-12-29T03:00"),
        archive("2024-12-30T03:00"),
        archive("2025-01-02T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_weekly=2), "UTC", NOW)
    assert kept(decisions) == {
        "20250102T030000Z": ("weekly 1", "newest archive"),
        "20241229T030000Z": ("weekly 2",),
    }


def test_weekly_and_monthly_count_separately_across_new_year() -> None:
    # 2024-12-30 and 2025-01-02 share ISO week 2025-W01 but not their month.
    history = [
        archive("2024-12-20T03:00"),
        archive("2024-12-30T03:00"),
        archive("2025-01-02T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_weekly=1, keep_monthly=2), "UTC", NOW)
    assert kept(decisions) == {
        "20250102T030000Z": ("weekly 1", "monthly 1", "newest archive"),
        "20241230T030000Z": ("monthly 2",),
    }


def test_hourly_buckets_are_wall_clock_hours_when_clocks_go_back() -> None:
    # Europe/Berlin, 2024-10-27: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    first_0230 = archive("2024-10-27T00:30")  # 02:30 CEST
    second_0230 = archive("2024-10-27T01:30")  # 02:30 CET
    history = [archive("2024-10-26T23:30"), first_0230, second_0230, archive("2024-10-27T02:30")]
    decisions = select(history, RetentionRules(keep_hourly=3), "Europe/Berlin", NOW)
    assert kept(decisions) == {
        "20241027T023000Z": ("hourly 1", "newest archive"),  # 03:30 CET
        second_0230.id: ("hourly 2",),
        "20241026T233000Z": ("hourly 3",),  # 01:30 CEST
    }


def test_month_buckets_follow_the_policy_timezone() -> None:
    # 23:30 UTC on Jan 31 is already February in Berlin.
    history = [
        archive("2024-01-31T22:30"),
        archive("2024-01-31T23:30"),
        archive("2024-02-29T12:00"),
    ]
    rules = RetentionRules(keep_monthly=2)
    assert list(kept(select(history, rules, "Europe/Berlin", NOW))) == [
        "20240229T120000Z",
        "20240131T223000Z",
    ]
    assert list(kept(select(history, rules, "UTC", NOW))) == [
        "20240229T120000Z",
        "20240131T233000Z",
    ]


def test_leap_day_is_a_day_of_its_own() -> None:
    history = [
        archive("2024-02-28T03:00"),
        archive("2024-02-29T03:00"),
        archive("2024-03-01T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_daily=2), "UTC", NOW)
    assert list(kept(decisions)) == ["20240301T030000Z", "20240229T030000Z"]


def test_keep_last_with_exactly_n_archives_keeps_them_all() -> None:
    history = [archive(f"2026-01-0{day}T03:00") for day in (1, 2, 3)]
    decisions = select(history, RetentionRules(keep_last=3), "UTC", NOW)
    assert [decision.reasons[0] for decision in decisions] == ["last 1", "last 2", "last 3"]
    assert all(decision.keep for decision in decisions)


def test_keep_last_deletes_the_archive_beyond_n() -> None:
    history = [archive(f"2026-01-0{day}T03:00") for day in (1, 2, 3, 4)]
    decisions = select(history, RetentionRules(keep_last=3), "UTC", NOW)
    assert decisions[-1] == Decision("20260101T030000Z", keep=False, reasons=())


def test_a_bucket_rule_with_counts_left_also_keeps_the_oldest_archive() -> None:
    history = [
        archive("2026-01-01T03:00"),
        archive("2026-01-01T15:00"),
        archive("2026-01-02T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_daily=7), "UTC", NOW)
    assert kept(decisions) == {
        "20260102T030000Z": ("daily 1", "newest archive"),
        "20260101T150000Z": ("daily 2",),
        "20260101T030000Z": ("oldest daily",),
    }


def test_one_archive_lists_every_reason_to_keep_it() -> None:
    history = [archive("2025-06-01T03:00"), archive("2026-01-01T03:00", drill_passed=True)]
    rules = RetentionRules(
        keep_last=1,
        keep_daily=1,
        keep_weekly=1,
        keep_monthly=1,
        keep_yearly=1,
        keep_within=timedelta(days=10),
    )
    assert kept(select(history, rules, "UTC", NOW)) == {
        "20260101T030000Z": (
            "last 1",
            "daily 1",
            "weekly 1",
            "monthly 1",
            "yearly 1",
            "within 10d",
            "newest archive",
            "newest drill-passed archive",
        )
    }


def test_keep_within_counts_back_from_the_newest_archive_not_from_now() -> None:
    history = [
        archive("2026-01-01T03:00"),
        archive("2026-01-05T03:00"),
        archive("2026-01-10T03:00"),
    ]
    rules = RetentionRules(keep_within=timedelta(days=5))
    decisions = select(history, rules, "UTC", datetime(2027, 1, 1, tzinfo=UTC))
    # Exactly 5 days before the newest is not "within" 5 days, as in restic.
    assert kept(decisions) == {"20260110T030000Z": ("within 5d", "newest archive")}


def test_keep_within_ignores_archives_from_the_future_as_its_anchor() -> None:
    now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    history = [
        archive("2026-01-08T03:00"),
        archive("2026-01-10T03:00"),
        archive("2026-06-01T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_within=timedelta(days=1, hours=12)), "UTC", now)
    assert kept(decisions) == {
        "20260601T030000Z": ("within 1d12h", "in the future"),
        "20260110T030000Z": ("within 1d12h", "newest archive"),
    }


def test_an_archive_from_the_future_is_kept_and_does_not_shadow_the_newest() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    history = [
        archive("2025-12-30T03:00"),
        archive("2025-12-31T03:00"),
        archive("2027-01-01T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_last=1), "UTC", now)
    assert kept(decisions) == {
        "20270101T030000Z": ("last 1", "in the future"),
        "20251231T030000Z": ("newest archive",),
    }


def test_the_newest_drill_passed_archive_survives_every_rule() -> None:
    history = [
        archive("2026-01-01T03:00", drill_passed=True),
        archive("2026-01-02T03:00", drill_passed=True),
        archive("2026-01-03T03:00"),
    ]
    decisions = select(history, RetentionRules(keep_last=1), "UTC", NOW)
    assert kept(decisions) == {
        "20260103T030000Z": ("last 1", "newest archive"),
        "20260102T030000Z": ("newest drill-passed archive",),
    }


def test_rules_that_keep_nothing_still_keep_the_newest_archive() -> None:
    history = [archive("2026-01-01T03:00"), archive("2026-01-02T03:00")]
    decisions = select(history, RetentionRules(keep_last=0), "UTC", NOW)
    assert kept(decisions) == {"20260102T030000Z": ("newest archive",)}


def test_no_rules_keep_everything() -> None:
    history = [archive("2026-01-01T03:00"), archive("2026-01-02T03:00")]
    decisions = select(history, RetentionRules(), "UTC", NOW)
    assert kept(decisions) == {
        "20260102T030000Z": ("no retention rules", "newest archive"),
        "20260101T030000Z": ("no retention rules",),
    }


def test_no_archives_no_decisions() -> None:
    assert select([], RetentionRules(keep_last=1), "UTC", NOW) == []


def test_naive_datetimes_are_refused() -> None:
    history = [Candidate("a", datetime(2026, 1, 1), drill_passed=False)]
    with pytest.raises(ValueError, match="timezone-aware"):
        select(history, RetentionRules(keep_last=1), "UTC", NOW)


def test_protected_reasons_name_each_safety_rule() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    history = [
        archive("2026-01-01T03:00"),
        archive("2026-01-02T03:00", drill_passed=True),
        archive("2026-01-03T03:00", drill_passed=True),
        archive("2026-02-01T03:00", drill_passed=True),
    ]
    assert protected_reasons(history, now) == {
        "20260201T030000Z": ("in the future",),
        "20260103T030000Z": ("newest archive", "newest drill-passed archive"),
    }


def test_may_delete_refuses_protected_and_unknown_archives() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    history = [
        archive("2026-01-01T03:00"),
        archive("2026-01-02T03:00", drill_passed=True),
        archive("2026-01-03T03:00"),
        archive("2026-02-01T03:00"),
    ]
    assert may_delete("20260101T030000Z", history, now)
    assert not may_delete("20260102T030000Z", history, now)  # newest drill-passed
    assert not may_delete("20260103T030000Z", history, now)  # newest
    assert not may_delete("20260201T030000Z", history, now)  # in the future
    assert not may_delete("19990101T000000Z", history, now)  # not a committed archive


def sized(when: str, objects: int, drill_passed: bool = False) -> Candidate:
    """Given an ISO time in UTC and how many objects it held (a 10 kB tar per object),
    return an archive created then."""
    created = datetime.fromisoformat(when).replace(tzinfo=UTC)
    content = Content(objects, objects * 10_000)
    return Candidate(created.strftime("%Y%m%dT%H%M%SZ"), created, drill_passed, content)


def test_keep_last_never_rotates_away_the_archive_before_an_emptied_volume() -> None:
    # docker compose down -v; up: every backup after is of an empty volume
    history = [sized(f"2026-01-01T03:0{minute}", 1200) for minute in range(3)]
    history += [sized(f"2026-01-01T03:{minute}", 1) for minute in range(10, 17)]
    now = datetime(2026, 1, 1, 4, tzinfo=UTC)
    decisions = select(history, RetentionRules(keep_last=5), "UTC", now, shrink=Guard())
    assert kept(decisions)["20260101T030200Z"] == (
        "newest before a shrink on 2026-01-01 03:10 UTC, 20260101T031000Z: objects 1200 -> 1, "
        "tar bytes 12000000 -> 10000",
    )
    assert "20260101T031000Z" in kept(decisions)
    assert not may_delete("20260101T030200Z", history, now, shrink=Guard())
    assert may_delete("20260101T030100Z", history, now, shrink=Guard())


def test_a_drill_of_the_empty_archive_does_not_free_the_archive_before_it() -> None:
    history = [
        sized("2026-01-01T03:00", 1200, drill_passed=True),
        sized("2026-01-02T03:00", 1200, drill_passed=True),
        sized("2026-01-03T03:00", 1),
        sized("2026-01-04T03:00", 1, drill_passed=True),
        sized("2026-01-05T03:00", 1),
    ]
    decisions = select(history, RetentionRules(keep_last=2), "UTC", NOW, shrink=Guard())
    assert sorted(kept(decisions)) == [
        "20260102T030000Z",  # newest before the shrink
        "20260103T030000Z",  # first after it
        "20260104T030000Z",
        "20260105T030000Z",
    ]


def test_an_accepted_shrink_lets_retention_delete_the_archive_before_it() -> None:
    history = [sized("2026-01-01T03:00", 1200)]
    history += [sized(f"2026-01-0{day}T03:00", 1) for day in (2, 3, 4)]
    accepted = Guard(accepted_before=history[1].created)
    decisions = select(history, RetentionRules(keep_last=2), "UTC", NOW, shrink=accepted)
    assert sorted(kept(decisions)) == ["20260103T030000Z", "20260104T030000Z"]
    assert may_delete("20260101T030000Z", history, NOW, shrink=accepted)


def test_the_guard_ends_with_the_longest_keep_window() -> None:
    history = [sized("2026-01-01T03:00", 1200)]
    history += [sized(f"2026-01-0{day}T03:00", 1) for day in (2, 3, 4)]
    rules = RetentionRules(keep_last=2, keep_daily=2)
    window = Guard(window=longest_window(rules))
    within = datetime(2026, 1, 3, 3, tzinfo=UTC)
    assert "20260101T030000Z" in kept(select(history, rules, "UTC", within, shrink=window))
    after = datetime(2026, 1, 3, 3, 1, tzinfo=UTC)
    assert "20260101T030000Z" not in kept(select(history, rules, "UTC", after, shrink=window))
