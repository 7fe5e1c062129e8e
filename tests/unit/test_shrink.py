"""The shrink guard's rule: what a shrink is, which archives it keeps, and what lifts it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.config.model import RetentionRules
from daemon.rules.retention import Candidate
from daemon.rules.shrink import (
    MIN_OBJECTS,
    MIN_TAR_BYTES,
    Acceptance,
    Content,
    Guard,
    guard,
    longest_window,
    pending,
    protected_reasons,
    shrank,
    shrinks,
)

FULL = Content(objects=1200, tar_bytes=50 << 20)
EMPTY = Content(objects=1, tar_bytes=1536)  # what a re-created volume backs up as
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def backup(hour: int, content: Content | None) -> Candidate:
    created = DAY + timedelta(hours=hour)
    return Candidate(created.strftime("%Y%m%dT%H%M%SZ"), created, False, content)


def test_an_emptied_volume_shrank() -> None:
    assert shrank(FULL, EMPTY)


def test_losing_half_the_objects_or_half_the_bytes_is_a_shrink() -> None:
    assert shrank(Content(100, 10 << 20), Content(49, 10 << 20))
    assert shrank(Content(100, 10 << 20), Content(100, (5 << 20) - 1))


def test_keeping_half_of_both_is_no_shrink() -> None:
    assert not shrank(Content(100, 10 << 20), Content(50, 5 << 20))
    assert not shrank(EMPTY, FULL)


def test_tiny_volumes_do_not_trip_the_guard() -> None:
    few_small_files = Content(MIN_OBJECTS - 1, MIN_TAR_BYTES - 1)
    assert not shrank(few_small_files, EMPTY)
    assert shrank(Content(MIN_OBJECTS, 0), EMPTY)
    assert shrank(Content(2, MIN_TAR_BYTES), EMPTY)


def test_shrinks_pairs_consecutive_backups_in_time_order() -> None:
    history = [backup(3, EMPTY), backup(0, FULL), backup(2, EMPTY), backup(1, FULL)]
    [found] = shrinks(history)
    assert (found.before, found.after) == (history[3].id, history[2].id)
    assert (found.before_content, found.after_content) == (FULL, EMPTY)


def test_backups_of_unknown_content_take_no_part() -> None:
    assert shrinks([backup(0, FULL), backup(1, None), backup(2, FULL)]) == []
    assert len(shrinks([backup(0, FULL), backup(1, None), backup(2, EMPTY)])) == 1


def test_the_guard_keeps_the_archive_before_and_the_one_after_the_shrink() -> None:
    history = [backup(0, FULL), backup(1, FULL), backup(2, EMPTY), backup(3, EMPTY)]
    protected = protected_reasons(history, Guard(), DAY + timedelta(days=400))
    assert sorted(protected) == [history[1].id, history[2].id]
    assert protected[history[1].id] == (
        "newest before a shrink on 2026-03-01 02:00 UTC, 20260301T020000Z: objects 1200 -> 1, "
        "tar bytes 52428800 -> 1536",
    )
    assert protected[history[2].id] == (
        "first after a shrink (kept with 20260301T010000Z until it goes)",
    )


def test_an_acceptance_frees_every_shrink_before_it_and_none_after() -> None:
    history = [backup(0, FULL), backup(1, EMPTY), backup(2, FULL), backup(3, EMPTY)]
    now = DAY + timedelta(days=1)
    accepted_first = Guard(accepted_before=history[1].created)
    assert [found.before for found in pending(history, accepted_first, now)] == [history[2].id]
    accepted_second = Guard(accepted_before=history[3].created)
    assert pending(history, accepted_second, now) == []


def test_the_guard_lasts_the_longest_keep_window_from_the_archive_before() -> None:
    history = [backup(0, FULL), backup(1, EMPTY)]
    seven_days = Guard(window=timedelta(days=7))
    assert pending(history, seven_days, history[0].created + timedelta(days=7))
    assert not pending(history, seven_days, history[0].created + timedelta(days=7, seconds=1))
    assert pending(history, Guard(window=None), history[0].created + timedelta(days=3650))


@pytest.mark.parametrize(
    ("rules", "window"),
    [
        (RetentionRules(keep_last=5), None),
        (RetentionRules(), None),
        (RetentionRules(keep_hourly=36), timedelta(hours=36)),
        (RetentionRules(keep_daily=7, keep_weekly=4), timedelta(weeks=4)),
        (RetentionRules(keep_monthly=6, keep_within=timedelta(days=10)), timedelta(days=186)),
        (RetentionRules(keep_yearly=2, keep_last=3), timedelta(days=732)),
        (RetentionRules(keep_within=timedelta(days=400), keep_daily=7), timedelta(days=400)),
    ],
)
def test_the_longest_keep_window(rules: RetentionRules, window: timedelta | None) -> None:
    assert longest_window(rules) == window


def test_an_acceptance_record_reads_back_as_written() -> None:
    [found] = shrinks([backup(0, FULL), backup(1, EMPTY)])
    record = Acceptance("app", "app_db", found, DAY + timedelta(days=2), "web1", "0.9")
    assert Acceptance.from_bytes(record.to_bytes()) == record


def test_an_acceptance_of_a_later_format_or_damaged_is_refused() -> None:
    [found] = shrinks([backup(0, FULL), backup(1, EMPTY)])
    raw = Acceptance("app", "app_db", found, DAY, "web1").to_bytes()
    with pytest.raises(ValueError, match="unknown acceptance format 2"):
        Acceptance.from_bytes(raw.replace(b'"format": 1', b'"format": 2'))
    with pytest.raises(ValueError):
        Acceptance.from_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="timezone"):
        Acceptance.from_bytes(raw.replace(b"+00:00", b""))


def test_the_newest_acceptance_sets_the_guard() -> None:
    history = [backup(0, FULL), backup(1, EMPTY), backup(2, FULL), backup(3, EMPTY)]
    first, second = shrinks(history)
    accepted = [Acceptance("app", "v", second, DAY), Acceptance("app", "v", first, DAY)]
    assert guard(RetentionRules(keep_daily=7), accepted) == Guard(
        accepted_before=history[3].created, window=timedelta(days=7)
    )
    assert guard(RetentionRules(keep_last=2), []) == Guard(None, None)
