"""What the daemon does, for systemd's STATUS= line and `daemon.json` (read by `volkeep
status`), told by the event stream: an operation that starts or ends changes the line. A
config reload that failed stays on it until one succeeds: the daemon runs an older config
than the files say, and only the log would tell otherwise.

A heartbeat job of the scheduler republishes it (with the progress of the running
operations) and proves that the scheduler dispatches, which is what the watchdog pings on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from daemon.events import (
    ConfigReload,
    ContainersStarted,
    ContainersStopped,
    Event,
    OperationFailed,
    OperationFinished,
    OperationStarted,
    RunFinished,
)
from daemon.service.systemd import notify
from daemon.state.history import Heartbeat, write_heartbeat
from daemon.terminal.progress import progress_of

log = structlog.get_logger()

VERBS = {"backup": "backing up", "drill": "drilling", "prune": "pruning", "restore": "restoring"}


class StatusLine:
    """Subscribes to the event stream; `publish` tells systemd and `daemon.json`."""

    def __init__(
        self,
        state_dir: Path,
        next_runs: Callable[[], dict[str, datetime | None]],
        stopping: threading.Event,
    ) -> None:
        self._state_dir = state_dir
        self._next_runs = next_runs
        self._stopping = stopping
        self._started = datetime.now(UTC)
        self._running: dict[int, OperationStarted] = {}  # by operation id
        self._stopped: dict[tuple[str, str], tuple[str, ...]] = {}  # by (policy, volume)
        self._refused: ConfigReload | None = None  # the last reload, if it failed
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()  # one writer of STATUS= and daemon.json at once
        self._line = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, OperationStarted):
            with self._lock:
                self._running[event.id] = event
        elif isinstance(event, OperationFinished | OperationFailed):
            with self._lock:
                self._running.pop(event.id, None)
                if event.kind == "backup":
                    self._stopped.pop((event.policy, event.volume), None)
        elif isinstance(event, ContainersStopped):
            with self._lock:
                self._stopped[event.policy, event.volume] = event.containers
        elif isinstance(event, ContainersStarted):
            with self._lock:
                self._stopped.pop((event.policy, event.volume), None)
        elif isinstance(event, ConfigReload):
            with self._lock:
                self._refused = event if event.failed else None
        elif not isinstance(event, RunFinished):
            return
        self.publish()

    def _outermost(self) -> list[OperationStarted]:
        """Return the running operations, one per thread: the one it began first (a
        backup's prune is part of the backup)."""
        with self._lock:
            operations = sorted(self._running.values(), key=lambda started: started.id)
        outermost: dict[int, OperationStarted] = {}
        for started in operations:
            outermost.setdefault(started.thread, started)
        return list(outermost.values())

    def running(self) -> list[str]:
        """Return what runs now, e.g. "backing up app/app_db (stopped: web)"."""
        return [self._doing(started) for started in self._outermost()]

    def _doing(self, started: OperationStarted) -> str:
        doing = f"{VERBS.get(started.kind, started.kind)} {started.policy}/{started.volume}"
        with self._lock:
            stopped = self._stopped.get((started.policy, started.volume))
        return f"{doing} (stopped: {', '.join(stopped)})" if stopped else doing

    def describe(self) -> str:
        """Return what the daemon does now, and that its last config reload failed if it
        did."""
        with self._lock:
            refused = self._refused
        if refused is None:
            return self._activity()
        more = f" (and {len(refused.problems) - 1} more)" if len(refused.problems) > 1 else ""
        return (
            f"{self._activity()}; CONFIG RELOAD FAILED at "
            f"{refused.at.strftime('%Y-%m-%d %H:%M:%S %Z')}, the previous config runs: "
            f"{refused.problems[0]}{more}"
        )

    def _activity(self) -> str:
        now = time.monotonic()
        doing = "; ".join(
            f"{self._doing(started)} {progress.describe(now)}"
            if (progress := progress_of(started.thread))
            else self._doing(started)
            for started in self._outermost()
        )
        if self._stopping.is_set():
            return f"stopping: {doing}" if doing else "stopping"
        if doing:
            return doing
        upcoming = [(when, job) for job, when in self._next_runs().items() if when is not None]
        if not upcoming:
            return "idle, nothing scheduled"
        when, job_id = min(upcoming)
        kind, _, policy = job_id.partition(":")
        return f"idle, next: {policy} {kind} at {when.strftime('%Y-%m-%d %H:%M:%S %Z')}"

    def publish(self) -> None:
        """Tell systemd what the daemon does (if that changed) and rewrite `daemon.json`."""
        with self._publish_lock:
            line = self.describe()
            if line != self._line:
                self._line = line
                notify(f"STATUS={line}")
            now = datetime.now(UTC)
            heartbeat = Heartbeat(os.getpid(), self._started, now, line, self._next_runs())
            try:
                write_heartbeat(self._state_dir, heartbeat)
            except OSError as error:
                log.warning("cannot write the heartbeat file", error=str(error))


class Heartbeats:
    """The scheduler's heartbeat job: `beat` republishes the status; `alive` says whether
    beats came lately (or the daemon is stopping in order)."""

    def __init__(self, seconds: float, status: StatusLine, stopping: threading.Event) -> None:
        self.seconds = seconds
        self._status = status
        self._stopping = stopping
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()
        self._status.publish()

    def alive(self) -> bool:
        if self._stopping.is_set():
            return True
        return time.monotonic() - self._last < 3 * self.seconds
