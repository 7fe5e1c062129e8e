"""Extraction in parallel streams without an engine: how members are dealt, when an archive
is split at all, and that uploads fed side by side all stop when one of them, or what feeds
them, fails."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, cast

import docker
import pytest

from daemon.archive.split import (
    SPLIT_BYTES,
    SPLIT_MEMBERS,
    STAY_BYTES,
    StreamSplit,
    extraction_streams,
)
from daemon.archive.tarstream import Member
from daemon.engine.helpers import helper_container
from daemon.engine.parallel import put_archives
from tests.unit.test_helpers import FakeEngine


def member(path: str, kind: str = "file", size: int = 0) -> Member:
    return Member(path, kind, 0o644, 0, 0, size, 0)


def test_files_are_dealt_a_directory_at_a_time_and_the_rest_goes_last() -> None:
    split = StreamSplit(2)
    assert split.route(member("big", size=10 << 20)) == 0
    assert split.route(member("top", size=100)) == 0  # same directory, same stream
    assert split.route(member("a/one", size=100)) == 1  # the stream given the fewest bytes
    assert split.route(member("a/link", "symlink")) == 1
    assert split.route(member("a/b/two", size=100)) == 1
    assert split.route(member("d", "dir")) == split.last == 2
    assert split.route(member("hard", "hardlink")) == 2
    assert split.route(None) == 2  # global headers, the end marker


def test_a_large_directory_is_dealt_to_every_stream_in_turns() -> None:
    split = StreamSplit(2)
    streams = [split.route(member(f"media/{n}", size=STAY_BYTES // 4)) for n in range(40)]
    assert streams[:5] == [0, 0, 0, 0, 1]  # 16 MiB and a member ahead: the next stream
    assert abs(streams.count(0) - streams.count(1)) <= 5  # never more than that apart


def test_a_small_archive_or_a_partial_restore_is_extracted_in_one_stream() -> None:
    assert extraction_streams(2, SPLIT_MEMBERS - 1, SPLIT_BYTES - 1, whole=True) == 1
    assert extraction_streams(2, SPLIT_MEMBERS, 0, whole=True) == 2
    assert extraction_streams(2, 1, SPLIT_BYTES, whole=True) == 2
    assert extraction_streams(2, SPLIT_MEMBERS, SPLIT_BYTES, whole=False) == 1
    assert extraction_streams(64, SPLIT_MEMBERS, 0, whole=True) == 4
    assert extraction_streams(None, SPLIT_MEMBERS, 0, whole=True) == 1


class RecordingEngine(FakeEngine):
    """Keeps what each upload received; the upload into `failing` fails after one piece."""

    def __init__(self) -> None:
        super().__init__()
        self.received: dict[str, list[bytes]] = {}
        self.failing: str | None = None
        self.extracting = 0
        self.lock = threading.Lock()

    def put_archive(self, container: str, path: str, data: Iterable[bytes]) -> bool:
        with self.lock:
            self.extracting += 1
        try:
            for piece in data:
                self.received.setdefault(container, []).append(piece)
                if container == self.failing:
                    raise docker.errors.APIError("500 Server Error: no space left on device")
        finally:
            with self.lock:
                self.extracting -= 1
        return True


def pieces(count: int, streams: int) -> Iterator[tuple[int, bytes]]:
    for number in range(count):
        yield number % streams, number.to_bytes(4, "big")


def upload(engine: RecordingEngine, feed: Iterable[tuple[int, bytes]]) -> list[str]:
    with (
        helper_container(cast(Any, engine), "image", ["true"], []) as first,
        helper_container(cast(Any, engine), "image", ["true"], []) as second,
    ):
        engine.failing = second if engine.failing == "second" else None
        put_archives(cast(Any, engine), [first, second], "/dst", feed, depth=2)
        return [first, second]


def test_each_upload_receives_its_stream_in_order() -> None:
    engine = RecordingEngine()
    first, second = upload(engine, pieces(100, 2))
    assert engine.received[first] == [n.to_bytes(4, "big") for n in range(0, 100, 2)]
    assert engine.received[second] == [n.to_bytes(4, "big") for n in range(1, 100, 2)]


def test_an_engine_failure_on_one_stream_stops_the_others_and_what_feeds_them() -> None:
    engine = RecordingEngine()
    engine.failing = "second"
    fed: list[int] = []

    def counted() -> Iterator[tuple[int, bytes]]:
        for stream, piece in pieces(10_000, 2):
            fed.append(stream)
            yield stream, piece

    with pytest.raises(docker.errors.APIError, match="no space left"):
        upload(engine, counted())
    assert len(fed) < 100  # stopped early, not fed to the end
    assert engine.extracting == 0 and engine.containers == {}


def test_a_fault_in_the_archive_ends_every_upload_and_is_raised_as_it_is() -> None:
    engine = RecordingEngine()

    def faulty() -> Iterator[tuple[int, bytes]]:
        yield from pieces(50, 2)
        raise ValueError("corrupt archive: cannot decompress")

    with pytest.raises(ValueError, match="corrupt archive"):
        upload(engine, faulty())
    assert engine.extracting == 0 and engine.containers == {}


def test_a_stream_that_waits_does_not_stop_the_other_from_taking_its_pieces() -> None:
    engine = RecordingEngine()
    # all of the first stream's pieces, then all of the second's: each queue holds 2
    feed = [(0, bytes([n])) for n in range(50)] + [(1, bytes([n])) for n in range(50)]
    first, second = upload(engine, feed)
    assert len(engine.received[first]) == len(engine.received[second]) == 50
