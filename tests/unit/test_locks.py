"""Volume locks: one holder at a time, and no lock file left behind for every name tried."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from daemon.errors import OperationError
from daemon.state.locks import is_locked, volume_lock


def test_a_released_lock_leaves_no_file(tmp_path: Path) -> None:
    for name in ("a_target", "another_target"):
        with volume_lock(tmp_path, name, "restore"):
            assert is_locked(tmp_path, name)
    assert list((tmp_path / "locks").iterdir()) == []


def test_a_waiter_gets_the_lock_after_its_file_was_removed_and_holds_it_alone(
    tmp_path: Path,
) -> None:
    inside: list[str] = []
    overlap = threading.Event()

    def hold(who: str) -> None:
        with volume_lock(tmp_path, "db", who, wait=10):
            if inside:
                overlap.set()
            inside.append(who)
            time.sleep(0.3)
            inside.remove(who)

    threads = [threading.Thread(target=hold, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not overlap.is_set()
    assert not is_locked(tmp_path, "db")


def test_a_busy_volume_names_its_holder(tmp_path: Path) -> None:
    with (
        volume_lock(tmp_path, "db", "backup of app"),
        pytest.raises(OperationError, match="backup of app"),
        volume_lock(tmp_path, "db", "prune"),
    ):
        pass
