"""The pipe a helper streams into, with a real FIFO and a writer thread in the helper's place."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from daemon.engine import pipe
from daemon.engine.pipe import Pipe, PipeUnavailable


def write_into(path: Path, data: bytes, pieces: int = 7) -> threading.Thread:
    """Open the FIFO for writing, as the helper's tar does, and write `data` in pieces."""

    def run() -> None:
        with open(path, "wb", buffering=0) as writer:
            step = len(data) // pieces + 1
            for start in range(0, len(data), step):
                writer.write(data[start : start + step])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_what_the_writer_writes_comes_out_whole_in_pieces_of_the_asked_size(
    tmp_path: Path,
) -> None:
    data = os.urandom(5 * 65536 + 123)
    with Pipe(tmp_path) as through:
        mode = os.stat(through.path).st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o622
        assert stat.S_IMODE(os.stat(through.path.parent).st_mode) == 0o700
        writer = write_into(through.path, data)
        pieces = [bytes(piece) for piece in through.pieces(65536, helper_ended=lambda: False)]
        writer.join()
        directory = through.path.parent
    assert hashlib.sha256(b"".join(pieces)).digest() == hashlib.sha256(data).digest()
    assert [len(piece) for piece in pieces] == [65536] * 5 + [123]
    assert not directory.exists()  # leaving the block removes the pipe


def test_a_writer_that_opens_and_closes_at_once_is_an_empty_stream(tmp_path: Path) -> None:
    with Pipe(tmp_path) as through:
        write_into(through.path, b"").join()
        assert list(through.pieces(65536, helper_ended=lambda: True)) == []


def test_a_helper_that_ends_without_opening_the_pipe_makes_it_unavailable(
    tmp_path: Path,
) -> None:
    with Pipe(tmp_path) as through, pytest.raises(PipeUnavailable):
        list(through.pieces(65536, helper_ended=lambda: True))


def test_a_running_helper_that_never_opens_the_pipe_gives_up_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipe, "CONNECT_TIMEOUT", 0.3)
    with Pipe(tmp_path) as through, pytest.raises(PipeUnavailable):
        list(through.pieces(65536, helper_ended=lambda: False))


def test_stop_ends_the_stream_of_a_writer_that_goes_quiet(tmp_path: Path) -> None:
    with Pipe(tmp_path) as through, open(through.path, "wb", buffering=0) as writer:
        writer.write(b"x" * 1000)
        received = []
        for piece in through.pieces(1000, helper_ended=lambda: False):
            received.append(bytes(piece))
            through.stop()  # the consumer stopped early; the writer still holds the pipe
    assert received == [b"x" * 1000]


def test_the_pipes_of_ended_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    pipes = tmp_path / "pipes"
    pipes.mkdir()
    ended = pipes / f"{socket.gethostname()}:999999999:1.deadbeef"
    other_host = pipes / "elsewhere:1:1.cafe0000"
    for directory in (ended, other_host):
        directory.mkdir()
        os.mkfifo(directory / "stream")
    with Pipe(tmp_path) as through:
        live = through.path.parent
        assert sorted(pipes.iterdir()) == sorted([other_host, live])


def test_a_state_dir_that_cannot_hold_a_pipe_makes_it_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("a file")
    with pytest.raises(PipeUnavailable, match="cannot make a pipe in"):
        Pipe(not_a_directory)
