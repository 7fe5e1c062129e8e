"""Many small reads at once (`read_each`): in order, at once, errors at their turn."""

from __future__ import annotations

import contextvars
import threading

import pytest

from daemon.repository.reads import READERS, read_each

WHERE = contextvars.ContextVar("where", default="unset")


def test_the_reads_are_made_at_once_and_yielded_in_order() -> None:
    # every read waits for READERS of them to have begun: one at a time would never pass
    together = threading.Barrier(READERS, timeout=10)

    def read(item: int) -> int:
        together.wait()
        return item * 10

    assert list(read_each(read, range(READERS))) == [item * 10 for item in range(READERS)]


def test_what_a_read_raises_is_raised_at_its_turn() -> None:
    def read(item: int) -> int:
        if item == 2:
            raise ValueError("the second is damaged")
        return item

    reads = read_each(read, [1, 2, 3])
    assert next(reads) == 1
    with pytest.raises(ValueError, match="the second is damaged"):
        next(reads)


def test_each_read_runs_in_the_callers_context() -> None:
    WHERE.set("the caller's")
    assert list(read_each(lambda item: (item, WHERE.get()), [1, 2])) == [
        (1, "the caller's"),
        (2, "the caller's"),
    ]


def test_one_read_or_none_needs_no_thread() -> None:
    assert list(read_each(lambda item: threading.current_thread().name, ["a"])) == ["MainThread"]
    assert list(read_each(lambda item: item, [])) == []
