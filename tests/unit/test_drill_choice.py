"""Which archives a drill picks: latest, random, oldest-unverified, at most max_per_run."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from daemon.actions.drill import pick_archives
from daemon.repository.layout import ArchiveKey

NEWEST_FIRST = [ArchiveKey("app", "db", f"2026110{day}T030000Z") for day in (5, 4, 3, 2, 1)]
MONDAY = datetime(2026, 11, 9, tzinfo=UTC)


def ids(keys: list[ArchiveKey]) -> list[str]:
    return [key.id[:8] for key in keys]


def test_latest_takes_the_newest() -> None:
    assert ids(pick_archives(NEWEST_FIRST, "latest", 1, {})) == ["20261105"]
    assert ids(pick_archives(NEWEST_FIRST, "latest", 2, {})) == ["20261105", "20261104"]


def test_random_takes_distinct_archives_from_all_of_them() -> None:
    chance = random.Random(5)
    seen = set()
    for _ in range(50):
        picked = pick_archives(NEWEST_FIRST, "random", 2, {}, chance)
        assert len(set(picked)) == 2
        seen.update(picked)
    assert seen == set(NEWEST_FIRST)
    assert sorted(pick_archives(NEWEST_FIRST, "random", 9, {}, chance)) == sorted(NEWEST_FIRST)


def test_oldest_unverified_takes_the_never_drilled_oldest_first() -> None:
    drilled = {NEWEST_FIRST[4]: MONDAY, NEWEST_FIRST[2]: MONDAY}

    assert ids(pick_archives(NEWEST_FIRST, "oldest-unverified", 2, drilled)) == [
        "20261102",
        "20261104",
    ]


def test_oldest_unverified_then_redrills_the_least_recently_drilled() -> None:
    drilled = {key: MONDAY - timedelta(days=index) for index, key in enumerate(NEWEST_FIRST)}
    drilled[NEWEST_FIRST[0]] = MONDAY - timedelta(days=30)  # failed long ago: its turn comes too

    assert ids(pick_archives(NEWEST_FIRST, "oldest-unverified", 3, drilled)) == [
        "20261105",
        "20261101",
        "20261102",
    ]


def test_no_archive_picks_nothing() -> None:
    for choice in ("latest", "random", "oldest-unverified"):
        assert pick_archives([], choice, 1, {}) == []  # type: ignore[arg-type]
