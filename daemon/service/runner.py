"""One scheduled run: every volume of a policy, one after another, under the parallel limit.

- A job resolves its volumes when it runs, so a newly labelled volume is picked up without
  a reload: a backup's are the ones its policy selects in the engine, a drill's the ones it
  has archives of in its storage. A run that finds none has failed (its line says what to
  fix), as has one whose storage cannot be listed: neither is a success of "0 volumes".
- Concurrency: one operation per volume (the volume lock; the daemon waits for a busy
  volume) and at most `daemon.max_parallel` operations, and so helper containers, at once.
- A run cut short by the daemon's stop does not count as a run: it runs again at the next
  start. Each run is announced (`RunStarted`, `RunFinished`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import structlog

from daemon import events
from daemon.actions.backup import policy_volumes, run_backup
from daemon.actions.collect import collect_after_backups
from daemon.actions.context import Context
from daemon.actions.fleetdrill import run_scheduled_drill, scheduled_targets
from daemon.config.model import Config
from daemon.errors import VolkeepError
from daemon.events import RunFinished, RunStarted
from daemon.state.history import History

log = structlog.get_logger()

POLL_SECONDS = 0.2


class ParallelLimit:
    """At most `limit` operations at once; a reload may change the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running = 0
        self._condition = threading.Condition()

    def resize(self, limit: int) -> None:
        with self._condition:
            self._limit = limit
            self._condition.notify_all()

    def acquire(self, stopping: threading.Event) -> bool:
        """Wait for a free slot and take it; return False, without one, if `stopping` is set
        first."""
        with self._condition:
            while self._running >= self._limit:
                if stopping.is_set():
                    return False
                self._condition.wait(POLL_SECONDS)
            if stopping.is_set():
                return False
            self._running += 1
            return True

    def release(self) -> None:
        with self._condition:
            self._running -= 1
            self._condition.notify()


def _back_up(ctx: Context, policy: str, volume: str) -> None:
    run_backup(ctx, policy, [volume], report=lambda published: None)


def _drill(ctx: Context, policy: str, target: str) -> None:
    run_scheduled_drill(ctx, policy, target)


def _volumes(ctx: Context, kind: str, policy: str) -> list[str]:
    """Given a job, return the volumes it works on now (a drill of other hosts' archives:
    `host/volume`). Raise OperationError if there is none, or the engine or the storage
    cannot say."""
    settings = ctx.policy(policy)
    if kind == "backup":
        return policy_volumes(ctx.docker(), settings, [])
    return scheduled_targets(ctx, settings)


OPERATIONS: dict[str, Callable[[Context, str, str], None]] = {"backup": _back_up, "drill": _drill}


class Runner:
    """Runs the scheduled jobs with the config `config()` returns at the start of each run."""

    def __init__(
        self,
        config: Callable[[], Config],
        state_dir: Path,
        limit: ParallelLimit,
        stopping: threading.Event,
    ) -> None:
        self._config = config
        self._state_dir = state_dir
        self._limit = limit
        self._stopping = stopping
        self._running = 0
        self._condition = threading.Condition()

    def run(self, kind: str, policy: str) -> None:
        """One scheduled run: every volume of the policy, one after another."""
        config = self._config()
        if self._stopping.is_set() or policy not in config.policies:
            return
        started = datetime.now(UTC)
        ctx = Context(config, self._state_dir, lock_wait=math.inf, stopping=self._stopping)
        volumes: list[str] = []
        failures: dict[str, str] = {}
        skipped: list[str] = []
        with self._counted(), structlog.contextvars.bound_contextvars(policy=policy):
            log.info(f"scheduled {kind} started")
            events.emit(RunStarted(kind, policy))
            try:
                volumes = _volumes(ctx, kind, policy)
                for volume in volumes:
                    if not self._limit.acquire(self._stopping):
                        skipped.append(volume)
                        continue
                    try:
                        OPERATIONS[kind](ctx, policy, volume)
                    except VolkeepError as error:
                        failures[volume] = str(error)
                    finally:
                        self._limit.release()
                if kind == "backup" and not self._stopping.is_set():
                    collect_after_backups(ctx, policy)  # no volume lock: nothing waits for it
            except VolkeepError as error:
                failures["*"] = str(error)
            except Exception as error:  # a bug must not take the scheduler down
                log.exception(f"internal error in the scheduled {kind}")
                failures["*"] = repr(error)
            interrupted = self._stopping.is_set() and bool(skipped or failures)
            if interrupted:
                log.warning(
                    f"scheduled {kind} interrupted by the stop: it runs again at the next start",
                    not_started=skipped,
                    failed=sorted(failures),
                )
            else:
                History(self._state_dir).record_run(f"{kind}:{policy}", started)
                if failures:
                    log.error(f"scheduled {kind} finished with failures", failed=failures)
                else:
                    log.info(f"scheduled {kind} finished", volumes=len(volumes))
            events.emit(RunFinished(kind, policy, tuple(volumes), failures, interrupted))

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._condition:
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    def wait(self, deadline: float, interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Wait until no run is left, the deadline passes or `interrupted()` says so; return
        True if no run is left."""
        with self._condition:
            while self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, POLL_SECONDS))
                if interrupted():
                    return False
            return True
