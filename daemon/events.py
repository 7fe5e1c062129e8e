"""One stream of events: what happens to operations, announced once, read by every observer.

An action announces an operation by running it in `operation(...)` (started, then finished
or failed), and announces what it finds on the way with `emit` (a drill's verdict, a volume
that shrank, the containers it stopped and started again). The daemon's scheduler adds its
runs (a scheduled run started, finished, missed). The run history, systemd's STATUS= line,
the metrics, the notifications and the status page subscribe; no action calls them.

Subscribers are called in the emitting thread, in the order they subscribed. They must be
quick (hand slow work to a thread of their own) and must not fail: an exception of a
subscriber is logged and the operation goes on. The one exception is an operation's
`recorder` (the run history of its state dir), whose errors are the operation's.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from daemon.errors import VolkeepError
from daemon.rules.shrink import Shrink
from daemon.rules.verdict import DrillRecord

log = structlog.get_logger()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class OperationStarted:
    """An operation (backup, drill, prune, restore) of one volume began in `thread`."""

    id: int
    kind: str
    policy: str
    volume: str
    thread: int = field(default_factory=threading.get_ident)
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class OperationFinished:
    id: int
    kind: str
    policy: str
    volume: str
    seconds: float
    archive: str | None = None
    bytes: int | None = None
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class OperationFailed:
    """`error` is the one line the operation failed with."""

    id: int
    kind: str
    policy: str
    volume: str
    seconds: float
    error: str
    archive: str | None = None
    bytes: int | None = None
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class DrillVerdict:
    """A drill reached its verdict on an archive of the storage `storage`."""

    record: DrillRecord
    storage: str


@dataclass(frozen=True)
class VolumeShrank:
    """A backup found that the volume lost most of its content (SPEC promise 13): the
    backup is published, and retention keeps the archive before the loss until an
    operator accepts the shrink or the longest keep window has passed."""

    policy: str
    volume: str
    shrink: Shrink
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class ContainersStopped:
    """Containers that use the volume were stopped for its backup."""

    policy: str
    volume: str
    containers: tuple[str, ...]
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class ContainersStarted:
    """The containers stopped for the volume's backup run again, and the backup goes on
    (if one cannot be started, the backup fails, saying so)."""

    policy: str
    volume: str
    containers: tuple[str, ...]
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class RunStarted:
    """A scheduled run of a policy's backups or drills (`kind`) began."""

    kind: str
    policy: str
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class RunFinished:
    """A scheduled run ended: `failures` by volume ("*": the run itself), `interrupted` if
    the daemon's stop cut it short (it runs again at the next start)."""

    kind: str
    policy: str
    volumes: tuple[str, ...]
    failures: dict[str, str]
    interrupted: bool = False
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class RunMissed:
    """A scheduled run did not start on time: it was `due` and `why` it did not start."""

    kind: str
    policy: str
    due: datetime
    why: str
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class ConfigReload:
    """The daemon read its config again (SIGHUP): `problems` is why it was refused (the
    running config goes on), empty if it took effect."""

    problems: tuple[str, ...]
    at: datetime = field(default_factory=_now)

    @property
    def failed(self) -> bool:
        return bool(self.problems)


Event = (
    OperationStarted
    | OperationFinished
    | OperationFailed
    | DrillVerdict
    | VolumeShrank
    | ContainersStopped
    | ContainersStarted
    | RunStarted
    | RunFinished
    | RunMissed
    | ConfigReload
)
Subscriber = Callable[[Event], None]


class Stream:
    """Where events are announced and subscribers hear them."""

    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; return the function that removes it."""
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Give the event to every subscriber; a subscriber that fails is logged and skipped."""
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("an event subscriber failed", event_type=type(event).__name__)


STREAM = Stream()  # the process's stream: one process, one story
_ids = itertools.count(1)


def emit(event: Event) -> None:
    STREAM.emit(event)


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    return STREAM.subscribe(subscriber)


def containers_stopped(policy: str, volume: str, containers: Iterable[str]) -> None:
    """Announce the containers stopped for a volume's backup, if any were."""
    if names := tuple(containers):
        emit(ContainersStopped(policy, volume, names))


def containers_started(policy: str, volume: str, containers: Iterable[str]) -> None:
    """Announce that the containers stopped for a volume's backup run again, if any were."""
    if names := tuple(containers):
        emit(ContainersStarted(policy, volume, names))


@dataclass
class Operation:
    """What an action fills in while its operation runs."""

    archive: str | None = None
    bytes: int | None = None


def interruption(failure: BaseException) -> str:
    """Given what cut an operation short, say it as a phrase (never a Python repr)."""
    if isinstance(failure, KeyboardInterrupt):
        return "Ctrl-C (SIGINT)"
    if type(failure).__name__ == "Terminated":
        return "volkeep was stopped (SIGTERM)"
    if isinstance(failure, OSError):
        return failure.strerror or str(failure) or "an input/output error"
    return str(failure) or "an unexpected error (run with --log-level debug)"


@contextmanager
def operation(
    kind: str, policy: str, volume: str, recorder: Subscriber | None = None
) -> Iterator[Operation]:
    """Announce the operation run in the block: started now, then finished, or failed with
    its error line (an exception that is no VolkeepError is "interrupted: ..."). The
    exception goes on.

    `recorder` hears this operation's events before the subscribers do, and its errors are
    raised: a recorder that cannot record its start keeps the operation from running.
    """
    announced = Operation()
    number = next(_ids)
    began = time.monotonic()

    def announce(event: Event) -> None:
        if recorder is not None:
            recorder(event)
        emit(event)

    announce(OperationStarted(number, kind, policy, volume))
    error: str | None = None
    try:
        yield announced
    except VolkeepError as failure:
        error = str(failure)
        raise
    except BaseException as failure:
        error = f"interrupted: {interruption(failure)}"
        raise
    finally:
        seconds = time.monotonic() - began
        if error is None:
            ended: Event = OperationFinished(
                number, kind, policy, volume, seconds, announced.archive, announced.bytes
            )
        else:
            ended = OperationFailed(
                number, kind, policy, volume, seconds, error, announced.archive, announced.bytes
            )
        announce(ended)
