"""Retention's promises, checked over random archive histories, rule sets and timezones."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from daemon.config.model import RetentionRules
from daemon.rules.retention import Candidate, Decision, may_delete, select
from daemon.rules.shrink import Content, Guard, longest_window

TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]
START = datetime(2020, 1, 1, tzinfo=UTC)
FULL, HALF, EMPTY = Content(1200, 50 << 20), Content(700, 30 << 20), Content(1, 1536)
CONTENTS = st.none() | st.sampled_from([FULL, HALF, EMPTY])


@dataclass(frozen=True)
class Case:
    history: list[Candidate]
    rules: RetentionRules
    timezone: str
    now: datetime


@st.composite
def histories(draw: st.DrawFn) -> list[Candidate]:
    """Archives spread over hours, days, months or years, so that buckets both collide and not."""
    span = draw(st.sampled_from([6 * 3600, 3 * 86400, 90 * 86400, 5 * 365 * 86400]))
    offsets = draw(st.lists(st.integers(0, span), max_size=40))
    return [
        Candidate(
            f"archive-{index:02d}",
            START + timedelta(seconds=offset),
            draw(st.booleans()),
            draw(CONTENTS),
        )
        for index, offset in enumerate(offsets)
    ]


counts = st.none() | st.integers(0, 6)
rule_sets = st.builds(
    RetentionRules,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.none() | st.timedeltas(timedelta(0), timedelta(days=400)),
) | st.just(RetentionRules())


@st.composite
def cases(draw: st.DrawFn) -> Case:
    history = draw(histories())
    latest = max((candidate.created for candidate in history), default=START)
    # `now` is sometimes before the newest archives, so some lie in the future.
    now = latest + timedelta(seconds=draw(st.integers(-2 * 86400, 30 * 86400)))
    return Case(history, draw(rule_sets), draw(st.sampled_from(TIMEZONES)), now)


def decide(case: Case, history: list[Candidate] | None = None) -> list[Decision]:
    return select(case.history if history is None else history, case.rules, case.timezone, case.now)


def deleted_ids(decisions: list[Decision]) -> set[str]:
    return {decision.id for decision in decisions if not decision.keep}


def newest(history: list[Candidate]) -> Candidate:
    return max(history, key=lambda candidate: (candidate.created, candidate.id))


@given(cases())
def test_the_newest_archive_is_always_kept(case: Case) -> None:
    if case.history:
        assert newest(case.history).id not in deleted_ids(decide(case))


@given(cases())
def test_the_newest_drill_passed_archive_is_always_kept(case: Case) -> None:
    passed = [candidate for candidate in case.history if candidate.drill_passed]
    if passed:
        assert newest(passed).id not in deleted_ids(decide(case))


@given(cases())
def test_archives_from_the_future_are_always_kept(case: Case) -> None:
    future = {candidate.id for candidate in case.history if candidate.created > case.now}
    assert not future & deleted_ids(decide(case))


@given(cases())
def test_no_rule_set_deletes_every_archive(case: Case) -> None:
    decisions = decide(case)
    assert len(deleted_ids(decisions)) < len(case.history) or not case.history


@given(cases())
def test_kept_archives_have_reasons_and_deleted_ones_none(case: Case) -> None:
    for decision in decide(case):
        assert decision.keep == bool(decision.reasons)


@given(cases())
def test_one_decision_per_archive_newest_first(case: Case) -> None:
    by_age = sorted(case.history, key=lambda c: (c.created, c.id), reverse=True)
    assert [decision.id for decision in decide(case)] == [candidate.id for candidate in by_age]


@given(cases())
def test_no_rules_keep_everything(case: Case) -> None:
    decisions = select(case.history, RetentionRules(), case.timezone, case.now)
    assert not deleted_ids(decisions)


@given(cases())
def test_pruning_twice_deletes_nothing_more(case: Case) -> None:
    deleted = deleted_ids(decide(case))
    survivors = [candidate for candidate in case.history if candidate.id not in deleted]
    assert not deleted_ids(decide(case, survivors))


@given(cases(), st.integers(1, 400 * 86400), st.booleans())
def test_a_newer_archive_never_brings_back_a_deleted_one(
    case: Case, seconds_later: int, drill_passed: bool
) -> None:
    latest = max((candidate.created for candidate in case.history), default=START)
    newer = Candidate("archive-new", latest + timedelta(seconds=seconds_later), drill_passed)
    before = deleted_ids(decide(case))
    assert before <= deleted_ids(decide(case, [*case.history, newer]))


@given(cases())
def test_may_delete_agrees_with_every_deletion(case: Case) -> None:
    for decision in decide(case):
        if not decision.keep:
            assert may_delete(decision.id, case.history, case.now)


BUCKET_KEYS: dict[str, Callable[[datetime], Hashable]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: t.strftime("%G-W%V"),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@given(cases(), st.sampled_from(sorted(BUCKET_KEYS)), st.integers(1, 6))
def test_a_bucket_rule_keeps_the_newest_archive_of_each_of_its_n_newest_buckets(
    case: Case, kind: str, count: int
) -> None:
    # The same rule, stated the other way round: group into buckets, then take the newest.
    zone = ZoneInfo(case.timezone)
    newest_in_bucket: dict[Hashable, Candidate] = {}
    for candidate in case.history:
        key = BUCKET_KEYS[kind](candidate.created.astimezone(zone))
        if key not in newest_in_bucket or newest([newest_in_bucket[key], candidate]) is candidate:
            newest_in_bucket[key] = candidate
    chosen = sorted(newest_in_bucket.values(), key=lambda c: (c.created, c.id), reverse=True)
    expected = {candidate.id: f"{kind} {rank}" for rank, candidate in enumerate(chosen[:count], 1)}
    if case.history and len(chosen) < count:
        oldest = min(case.history, key=lambda c: (c.created, c.id))
        expected.setdefault(oldest.id, f"oldest {kind}")

    only_this_rule: dict[str, Any] = {f"keep_{kind}": count}
    rules = RetentionRules(**only_this_rule)
    decisions = select(case.history, rules, case.timezone, case.now)
    found = {d.id: reason for d in decisions for reason in d.reasons if kind in reason}
    assert found == expected


@given(
    rule_sets,
    st.sampled_from(TIMEZONES),
    st.integers(1, 5),
    st.lists(st.tuples(st.integers(60, 40 * 86400), st.sampled_from([FULL, HALF, EMPTY]),
                       st.booleans()), max_size=30),
    st.none() | st.integers(0, 30),
)  # fmt: skip
def test_no_prunes_delete_the_archive_before_a_shrink_until_accepted_or_past_the_window(
    rules: RetentionRules,
    timezone: str,
    full_backups: int,
    later_backups: list[tuple[int, Content, bool]],
    accepted_at: int | None,
) -> None:
    # full backups an hour apart, then the volume is emptied: backups of it, drills that
    # pass (of the empty archives too), refills, a prune after each backup
    history = [
        Candidate(f"full-{index}", START + timedelta(hours=index), False, FULL)
        for index in range(full_backups)
    ]
    before_the_loss = history[-1]
    shrinking = Candidate("emptied", before_the_loss.created + timedelta(hours=1), True, EMPTY)
    history.append(shrinking)
    window = longest_window(rules)
    accepted_before = None
    for step, (seconds, content, drill_passed) in enumerate(later_backups):
        latest = history[-1].created
        history.append(
            Candidate(
                f"later-{step:02d}", latest + timedelta(seconds=seconds), drill_passed, content
            )
        )
        now = history[-1].created
        if step == accepted_at:
            # by the shrinking backup's time: earlier prunes may have shortened the history
            accepted_before = shrinking.created
        guard = Guard(accepted_before, window)
        decisions = select(history, rules, timezone, now, shrink=guard)
        doomed = {decision.id for decision in decisions if not decision.keep}
        assert all(may_delete(archive, history, now, shrink=guard) for archive in doomed)
        history = [candidate for candidate in history if candidate.id not in doomed]
        guarded = accepted_before is None and (
            window is None or now <= before_the_loss.created + window
        )
        if guarded:
            assert before_the_loss in history
