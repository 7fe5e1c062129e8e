"""Volume locks: one holder at a time on the whole host, and no lock file left behind for
every name tried."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from daemon.errors import OperationError
from daemon.state.locks import LOCK_DIRECTORY, is_locked, volume_lock


@pytest.fixture(autouse=True)
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host-wide lock directory, moved for the test (other tests of this host use
    volumes of the same names)."""
    monkeypatch.setenv(LOCK_DIRECTORY, str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_a_released_lock_leaves_no_file(locks: Path) -> None:
    for name in ("a_target", "another_target"):
        with volume_lock(name, "restore"):
            assert is_locked(name)
    assert list(locks.iterdir()) == []
    assert locks.stat().st_mode & 0o777 == 0o700


def test_a_waiter_gets_the_lock_after_its_file_was_removed_and_holds_it_alone() -> None:
    inside: list[str] = []
    overlap = threading.Event()

    def hold(who: str) -> None:
        with volume_lock("db", who, wait=10):
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
    assert not is_locked("db")


def test_a_busy_volume_names_its_holder() -> None:
    with (
        volume_lock("db", "backup of app"),
        pytest.raises(OperationError, match=f"backup of app by volkeep pid {os.getpid()}"),
        volume_lock("db", "prune"),
    ):
        pass


def test_a_lock_directory_others_may_write_to_is_refused(locks: Path) -> None:
    locks.mkdir(mode=0o777)
    locks.chmod(0o777)

    with (
        pytest.raises(OperationError, match=f"lock directory {locks} is not volkeep's"),
        volume_lock("db", "backup of app"),
    ):
        pass
