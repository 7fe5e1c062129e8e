"""The turn of a drill's sampled check of packs (daemon.repository.packcheck)."""

from __future__ import annotations

from daemon.repository.packcheck import CYCLE, MOST_PACKS, packs_in_turn


def test_every_pack_is_checked_within_a_cycle_of_drills_whatever_the_count() -> None:
    for count in (1, 2, 29, 31, 95, 2_000):
        names = {f"{number:064x}" for number in range(count)}
        checked: set[str] = set()
        last = None
        for _ in range(CYCLE):
            turn = packs_in_turn(names, last)
            assert 1 <= len(turn) <= MOST_PACKS
            checked.update(turn)
            last = turn[-1]
        assert checked == names or len(names) > CYCLE * MOST_PACKS


def test_the_turn_goes_on_after_the_last_pack_checked_even_if_it_was_freed() -> None:
    names = ["a" * 64, "c" * 64, "e" * 64]
    assert packs_in_turn(names, None) == ["a" * 64]
    assert packs_in_turn(names, "c" * 64) == ["e" * 64]
    assert packs_in_turn(names, "d" * 64) == ["e" * 64]  # "d…" was freed since
    assert packs_in_turn(names, "e" * 64) == ["a" * 64]  # wraps around
    assert packs_in_turn([], None) == []
