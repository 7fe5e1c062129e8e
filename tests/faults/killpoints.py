"""volkeep with a kill point: `python -m tests.faults.killpoints ARGS...` runs `volkeep ARGS`
and SIGKILLs itself at the point named by $VOLKEEP_TEST_KILL_POINT (test-only; volkeep's own
code knows nothing of it). With $VOLKEEP_TEST_POINT_ACTION=pause it SIGSTOPs itself there
instead, for the test to break something under it and SIGCONT it.

A point is a place at one of volkeep's edges: a call into the Docker engine (the SDK's
`APIClient`), into the local blob store (a file written, synced, renamed, deleted), or into
the S3 store (a multipart upload begun). The
process dies there as it would under `kill -9` from outside: no `finally` runs, no buffer is
flushed, the helper containers and the stop journal stay as they are. A point that is never
reached leaves the command to end as usual, so the test sees it did not die.
"""

from __future__ import annotations

import faulthandler
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker

from daemon.cli.main import main
from daemon.engine import tarflavour
from daemon.repository import chunks
from daemon.storage import local, s3

ENVIRONMENT = "VOLKEEP_TEST_KILL_POINT"
ACTION = "VOLKEEP_TEST_POINT_ACTION"
HALF = 8 << 20  # bytes: well inside the fault suite's volumes, far from either end


_paused = False


def die() -> None:
    """The point is reached: die (or pause, the first time, if the test asked)."""
    global _paused
    if os.environ.get(ACTION) != "pause":
        os.kill(os.getpid(), signal.SIGKILL)
    elif not _paused:
        _paused = True
        os.kill(os.getpid(), signal.SIGSTOP)


def kill_at(
    owner: Any,
    attribute: str,
    *,
    after: bool,
    nth: int = 1,
    where: Callable[..., bool] = lambda *args, **kwargs: True,
) -> None:
    """Make the `nth` call of `owner.attribute` whose arguments satisfy `where` the last
    thing the process does: kill it just before the call, or just after it returned."""
    original = getattr(owner, attribute)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        matched = where(*args, **kwargs)
        calls += matched
        if matched and calls == nth and not after:
            die()
        result = original(*args, **kwargs)
        if matched and calls == nth and after:
            die()
        return result

    setattr(owner, attribute, wrapper)


def kill_mid_upload() -> None:
    """Kill the process once HALF bytes of a tar went into the engine's archive endpoint
    (the extraction of a restore or a drill is under way)."""
    original = docker.APIClient.put_archive

    def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        sent = 0
        for chunk in chunks:
            yield chunk
            sent += len(chunk)
            if sent >= HALF:
                die()

    @functools.wraps(original)
    def wrapper(self: docker.APIClient, container: str, path: str, data: Any) -> Any:
        return original(self, container, path, counted(data))

    docker.APIClient.put_archive = wrapper  # type: ignore[method-assign]


def kill_mid_archive() -> None:
    """Kill the process once HALF bytes of a new archive file are written to the storage
    (the helper's tar is streaming)."""
    original = local._LocalUpload.write
    written: dict[int, int] = {}

    @functools.wraps(original)
    def wrapper(self: Any, data: Any) -> object:
        if ".tar." in self._final.name:
            written[id(self)] = written.get(id(self), 0) + len(data)
            if written[id(self)] >= HALF:
                die()
        return original(self, data)

    local._LocalUpload.write = wrapper  # type: ignore[method-assign]


def _named(suffix: str) -> Callable[..., bool]:
    """The calls of `publish(temporary, final)` whose final file name holds `suffix`."""
    return lambda temporary, final, **kwargs: suffix in Path(final).name


def _under(directory: str) -> Callable[..., bool]:
    """The calls of `publish(temporary, final)` whose final file lies under `directory`."""
    return lambda temporary, final, **kwargs: directory in Path(final).as_posix()


def _upload_of(suffix: str) -> Callable[..., bool]:
    return lambda upload: suffix in upload._final.name


def _deleting(suffix: str) -> Callable[..., bool]:
    return lambda store, key: suffix in key.rsplit("/", 1)[-1]


POINTS: dict[str, Callable[[], None]] = {
    "after the service container was stopped": lambda: kill_at(
        docker.APIClient, "stop", after=True
    ),
    "half of the archive written": kill_mid_archive,
    "multipart upload begun": lambda: kill_at(s3.S3Store, "begin_multipart", after=True),
    # a backup takes its start time, the archive's id, right after its helper's tar is known
    "helper's tar known": lambda: kill_at(tarflavour, "parse_flavour", after=True),
    "archive complete, not yet synced": lambda: kill_at(
        local._LocalUpload, "commit", after=False, where=_upload_of(".tar.")
    ),
    "archive file published, manifest not written": lambda: kill_at(
        local, "publish", after=True, where=_named(".tar.")
    ),
    # a dedup backup has read its chunk repository's config (None: none yet), not written one
    "chunk repository config read": lambda: kill_at(chunks.ChunkStore, "read_config", after=True),
    "first pack stored, no index yet": lambda: kill_at(
        local, "publish", after=True, where=_under("_chunks/packs/")
    ),
    "index stored, manifest not written": lambda: kill_at(
        local, "publish", after=True, where=_under("_chunks/index/")
    ),
    "manifest written, retention not yet run": lambda: kill_at(
        local, "publish", after=True, where=_named(".manifest.json")
    ),
    "first manifest deleted": lambda: kill_at(
        local.LocalStore, "delete", after=True, where=_deleting(".manifest.json")
    ),
    "first archive file deleted": lambda: kill_at(
        local.LocalStore, "delete", after=True, where=_deleting(".tar.")
    ),
    "second manifest deleted": lambda: kill_at(
        local.LocalStore, "delete", after=True, nth=2, where=_deleting(".manifest.json")
    ),
    "garbage collection: new index stored": lambda: kill_at(
        local, "publish", after=True, where=_under("_chunks/index/")
    ),
    "repack: first new pack stored": lambda: kill_at(
        local, "publish", after=True, where=_under("_chunks/packs/")
    ),
    "repack: new index stored": lambda: kill_at(
        local, "publish", after=True, where=_under("_chunks/index/")
    ),
    "repack: condemned record stored": lambda: kill_at(
        local, "publish", after=True, where=_under("_chunks/condemned/")
    ),
    "garbage collection: first pack deleted": lambda: kill_at(
        local.LocalStore, "delete", after=True, where=lambda store, key: "/packs/" in key
    ),
    "volume created": lambda: kill_at(docker.APIClient, "create_volume", after=True),
    "half of the archive extracted": kill_mid_upload,
    "extracted, not yet compared": lambda: kill_at(docker.APIClient, "put_archive", after=True),
    "safety archive published": lambda: kill_at(
        local, "publish", after=True, where=_named("-safety.manifest.json")
    ),
    "target emptied, extraction not begun": lambda: kill_at(
        docker.APIClient, "put_archive", after=False
    ),
    "verdict being written": lambda: kill_at(
        local._LocalUpload, "commit", after=False, where=_upload_of(".drill.json")
    ),
}


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # where a hung volkeep waits: kill -USR1 PID
    POINTS[os.environ[ENVIRONMENT]]()
    sys.exit(main(sys.argv[1:]))
