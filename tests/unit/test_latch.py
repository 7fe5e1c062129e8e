"""A storage found unavailable is asked nothing more in the operation (`LatchedStore`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.repository.latch import LatchedStore
from daemon.storage.base import BlobMissing, StoreUnavailable
from daemon.storage.local import LocalStore


class _Down(LocalStore):
    """A local store whose `get` fails as an unreachable storage does, counting the calls
    that reached it."""

    def __init__(self, root: Path) -> None:
        super().__init__("down", root)
        self.asked = 0

    def get(self, key: str) -> bytes:
        self.asked += 1
        raise StoreUnavailable(f"storage 'down': cannot reach it ({key})")


def test_after_its_first_unavailable_answer_the_storage_is_not_asked_again(tmp_path: Path):
    down = _Down(tmp_path)
    latched = LatchedStore(down)
    with pytest.raises(StoreUnavailable) as first:
        latched.get("a")
    with pytest.raises(StoreUnavailable) as later:
        latched.put("b", b"data")
    with pytest.raises(StoreUnavailable):
        list(latched.list(""))
    assert down.asked == 1
    assert later.value is first.value
    assert not (tmp_path / "b").exists()


def test_a_missing_blob_is_no_outage(tmp_path: Path):
    latched = LatchedStore(LocalStore("local", tmp_path))
    with pytest.raises(BlobMissing):
        latched.get("absent")
    latched.put("present", b"data")
    assert latched.get("present") == b"data"
    assert list(latched.list("")) == ["present"]
