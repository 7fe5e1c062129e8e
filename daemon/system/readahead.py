"""Run a producer of pieces in a thread, a bounded number of pieces ahead of its consumer.

The pipelines here alternate between waiting (on a socket, on dockerd) and computing
(decompressing, digesting); with the producer in its own thread the two overlap, and the
bound keeps memory flat.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(
    pieces: Iterable[T], depth: int = 8, *, interrupt: Callable[[], None] | None = None
) -> Iterator[T]:
    """Yield the pieces of `pieces`, produced in a thread up to `depth` pieces ahead.

    An exception in the producer is raised in the consumer. If the consumer stops early,
    `interrupt` is called to unblock a producer waiting on I/O, and the thread is joined.
    """
    handed: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: object) -> None:
        while not stop.is_set():
            try:
                handed.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        iterator = iter(pieces)
        try:
            for piece in iterator:
                hand_over(piece)
                if stop.is_set():
                    break
            hand_over(_END)
        except BaseException as error:  # raised again in the consumer
            hand_over(error)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while (item := handed.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        if interrupt is not None:
            interrupt()
        producer.join()
