"""Several uploads into the Engine's archive endpoint at once, fed from one producer.

The Engine holds a container's lock while it extracts into it, so concurrent uploads need a
helper each (they may mount the same volume). Each upload reads from its own queue of at
most `depth` pieces: memory stays bounded by depth x pieces x helpers, and an upload that
stalls holds up the producer once its queue is full, never the others' queued pieces.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence

import docker

from daemon.engine.helpers import QUEUE_DEPTH, put_archive

_END = object()
_POLL = 0.1  # seconds between looks at the stop flag of a waiting producer or upload


class _Stopped(Exception):
    """Another upload, or the producer, failed: this upload ends too."""


def put_archives(
    api: docker.APIClient,
    containers: Sequence[str],
    path: str,
    pieces: Iterable[tuple[int, bytes]],
    depth: int = QUEUE_DEPTH,
) -> None:
    """Stream one tar into `path` in each helper of `containers` at once (see `put_archive`):
    a piece (stream, bytes) of `pieces` goes to `containers[stream]`; each upload ends when
    `pieces` does.

    Any failure stops everything, and returns only once every upload has ended: what
    `pieces` raises is raised as it is; else the first upload's failure (EngineFailure,
    docker.errors.APIError).
    """
    queues: list[queue.Queue[object]] = [queue.Queue(maxsize=depth) for _ in containers]
    stop = threading.Event()
    failures: list[BaseException] = []

    def drained(handed: queue.Queue[object]) -> Iterator[bytes]:
        while not stop.is_set():
            try:
                item = handed.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return
            assert isinstance(item, bytes)
            yield item
        raise _Stopped

    def upload(container: str, handed: queue.Queue[object]) -> None:
        try:
            put_archive(api, container, path, drained(handed))
        except _Stopped:
            pass
        except BaseException as error:  # raised again by the producer's thread
            failures.append(error)
            stop.set()

    def hand_over(handed: queue.Queue[object], item: object) -> None:
        while not stop.is_set():
            try:
                handed.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    uploads = [
        threading.Thread(target=upload, args=(container, handed), name="volkeep-put", daemon=True)
        for container, handed in zip(containers, queues, strict=True)
    ]
    for thread in uploads:
        thread.start()
    try:
        for stream, piece in pieces:
            hand_over(queues[stream], piece)
            if stop.is_set():
                break
        for handed in queues:
            hand_over(handed, _END)
        for thread in uploads:
            thread.join()
    except BaseException:
        stop.set()
        for thread in uploads:
            thread.join()
        raise
    if failures:
        raise failures[0]
