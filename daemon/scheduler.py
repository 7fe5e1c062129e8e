"""`volkeep run`: every policy's backups and drills on their schedules, until SIGTERM.

- One APScheduler job per policy backup (`backup:<policy>`) and per policy drill
  (`drill:<policy>`), kept in memory: the YAML is the source of truth. A job resolves its
  volumes when it runs, so a newly labelled volume is picked up without a reload.
- Missed runs: each job's last run is recorded in the state dir. At start (and when a
  reload adds or changes a job), a job whose next run after its last run (or, if it never
  ran, after it was first scheduled) is already past runs once right away: missed runs are
  coalesced, never replayed. A run cut short by a crash or a stop does not count.
  Late runs are never dropped (no misfire grace limit): a late backup beats none.
- Concurrency: one operation per volume (the volume lock; the daemon waits for a busy
  volume, the command line fails at once), and at most `daemon.max_parallel` operations,
  and so helper containers, at once.
- Signals: SIGHUP reloads the config; an invalid one is logged and the running config
  kept. SIGTERM/SIGINT: no new operation starts; running ones get `daemon.shutdown_timeout`
  to finish, then their helpers are killed so that they abort and clean up as on any
  failure; exit 0. A second SIGTERM/SIGINT aborts at once.
- systemd: READY=1 once the config is valid, the engine answers, leftovers of a crash are
  gone and the scheduler runs; STATUS= says what it does; WATCHDOG=1 while the scheduler
  dispatches (a heartbeat job proves it, and also rewrites `daemon.json`).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from daemon.actions.backup import policy_volumes, run_backup
from daemon.actions.context import Context
from daemon.actions.drill import drillable_volumes, drilled_repository, run_drill
from daemon.config import load_config
from daemon.config.model import Config, Schedule
from daemon.docker.client import connect
from daemon.docker.helpers import kill_helpers
from daemon.errors import EXIT_FAILED, EXIT_OK, ConfigError, VolkeepError
from daemon.notify import Watchdog, notify, watchdog_interval
from daemon.progress import progress_of
from daemon.recovery import remove_incomplete_archives
from daemon.state import Heartbeat, History, daemon_pid_file, write_heartbeat
from daemon.triggers import first_run, trigger_for

log = structlog.get_logger()

HEARTBEAT_SECONDS = 10.0
ABORT_GRACE_SECONDS = 60.0  # after the helpers are killed, for the operations to clean up
KILL_TIMEOUT_SECONDS = 10
POLL_SECONDS = 0.2
JOB_THREADS = 64  # jobs waiting for a free slot each hold a thread; threads start lazily
VERBS = {"backup": "backing up", "drill": "drilling"}


@dataclass(frozen=True)
class JobSpec:
    """A scheduler job as the config asks for it."""

    kind: str  # backup or drill
    policy: str
    schedule: Schedule
    timezone: str

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.policy}"


def job_specs(config: Config) -> dict[str, JobSpec]:
    """Given a config, return the jobs it asks for by id: one per policy with a backup
    schedule, one per policy with a drill schedule."""
    specs = []
    for policy in config.policies.values():
        if policy.schedule is not None:
            specs.append(JobSpec("backup", policy.name, policy.schedule, policy.timezone))
        if policy.drill is not None and policy.drill.schedule is not None:
            specs.append(JobSpec("drill", policy.name, policy.drill.schedule, policy.timezone))
    return {spec.id: spec for spec in specs}


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


def _drill(ctx: Context, policy: str, volume: str) -> None:
    run_drill(ctx, policy, [volume], None)


def _volumes(ctx: Context, kind: str, policy: str) -> list[str]:
    """Given a job, return the volumes it works on now: a backup's volumes are the ones its
    policy selects in the engine, a drill's the ones it has archives of in its storage."""
    settings = ctx.policy(policy)
    if kind == "backup":
        return policy_volumes(ctx.docker(), settings, [])
    return drillable_volumes(drilled_repository(ctx, settings), policy)


OPERATIONS: dict[str, Callable[[Context, str, str], None]] = {"backup": _back_up, "drill": _drill}


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.log(record.levelno, record.getMessage(), logger=record.name)


def _forward_apscheduler_logs() -> None:
    """APScheduler logs through the standard library: send its warnings (a job skipped
    because its previous run still runs...) to our structured log."""
    apscheduler_log = logging.getLogger("apscheduler")
    apscheduler_log.setLevel(logging.WARNING)
    apscheduler_log.propagate = False
    if not any(isinstance(handler, _ToStructlog) for handler in apscheduler_log.handlers):
        apscheduler_log.addHandler(_ToStructlog())


class Daemon:
    def __init__(self, config: Config, config_path: Path, state_dir: Path) -> None:
        self._config = config
        self._config_path = config_path
        self._state_dir = state_dir
        self._history = History(state_dir)
        self._specs: dict[str, JobSpec] = {}
        self._stopping = threading.Event()
        self._limit = ParallelLimit(config.daemon.max_parallel)
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._started = datetime.now(UTC)
        self._activities: dict[int, str] = {}  # by thread: "backing up app/app_db"
        self._jobs_running = 0
        self._jobs_condition = threading.Condition()
        self._activities_lock = threading.Lock()
        self._publish_lock = threading.Lock()  # one writer of STATUS= and daemon.json at once
        self._status_line = ""
        watchdog = watchdog_interval()
        self._beat_seconds = min(HEARTBEAT_SECONDS, watchdog / 2) if watchdog else HEARTBEAT_SECONDS
        self._watchdog = Watchdog(watchdog, self._alive) if watchdog else None
        self._last_beat = time.monotonic()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": ThreadPoolExecutor(JOB_THREADS),
                "heartbeat": ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code.

        Raise OperationError if another daemon uses the state dir, DockerUnavailable if the
        engine does not answer at start.
        """
        with daemon_pid_file(self._state_dir):
            # connect, start again the containers a crash left stopped, remove leftovers
            ctx = Context(self._config, self._state_dir)
            ctx.docker()
            remove_incomplete_archives(ctx)
            engine = connect(timeout=KILL_TIMEOUT_SECONDS)  # to abort: never wait long
            self._install_signal_handlers()
            _forward_apscheduler_logs()
            self._scheduler.start()
            self._apply(self._config)
            self._scheduler.add_job(
                self._heartbeat,
                "interval",
                seconds=self._beat_seconds,
                id="heartbeat",
                executor="heartbeat",
                next_run_time=datetime.now(UTC),
            )
            if self._watchdog is not None:
                self._watchdog.start()
            log.info(
                "daemon started",
                pid=os.getpid(),
                config=[str(path) for path in self._config.files],
                jobs=sorted(self._specs),
                max_parallel=self._config.daemon.max_parallel,
            )
            notify("READY=1", f"STATUS={self._describe()}")
            self._wait_for_stop()
            return self._shut_down(engine)

    def _install_signal_handlers(self) -> None:
        for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda number, _: self._signals.put(number))

    def _wait_for_stop(self) -> None:
        while True:
            try:
                number = self._signals.get(timeout=1)
            except queue.Empty:
                continue
            if number != signal.SIGHUP:
                log.info("stop requested", signal=signal.Signals(number).name)
                return
            self._reload()

    def _reload(self) -> None:
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config = load_config(self._config_path)
        except ConfigError as error:
            for problem in error.problems:
                log.error("config reload failed: keeping the running config", problem=str(problem))
        except VolkeepError as error:
            log.error("config reload failed: keeping the running config", error=str(error))
        else:
            self._config = config
            self._limit.resize(config.daemon.max_parallel)
            old = set(self._specs)
            changed = self._apply(config)
            log.info(
                "config reloaded",
                added=sorted(set(self._specs) - old),
                removed=sorted(old - set(self._specs)),
                rescheduled=sorted(changed & old),
            )
        notify("READY=1", f"STATUS={self._describe()}")

    def _apply(self, config: Config) -> set[str]:
        """Make the scheduler's jobs those `config` asks for; return the ids of the jobs that
        were added or rescheduled. Jobs whose schedule did not change keep their next run."""
        wanted = job_specs(config)
        for job_id in sorted(set(self._specs) - set(wanted)):
            self._scheduler.remove_job(job_id)
            log.info("job removed", job=job_id)
        now = datetime.now(UTC)
        changed = set()
        for job_id, spec in sorted(wanted.items()):
            if self._specs.get(job_id) == spec:
                continue
            anchor = self._history.schedule_anchor(job_id, now)
            first = first_run(spec.schedule, spec.timezone, anchor, now)
            self._scheduler.add_job(
                self._run_job,
                trigger_for(spec.schedule, spec.timezone, start=anchor),
                args=(spec.kind, spec.policy),
                id=job_id,
                name=job_id,
                next_run_time=first,
                replace_existing=True,
            )
            changed.add(job_id)
            log.info(
                "job scheduled",
                job=job_id,
                schedule=spec.schedule.text,
                timezone=spec.timezone,
                counts_from=anchor.isoformat(),
                next_run=first.isoformat() if first else None,
                catching_up=first == now,
            )
        self._specs = wanted
        return changed

    def _run_job(self, kind: str, policy: str) -> None:
        """One scheduled run: every volume of the policy, one after another."""
        config = self._config
        if self._stopping.is_set() or policy not in config.policies:
            return
        job_id = f"{kind}:{policy}"
        started = datetime.now(UTC)
        ctx = Context(config, self._state_dir, lock_wait=math.inf, stopping=self._stopping)
        volumes: list[str] = []
        failures: dict[str, str] = {}
        skipped: list[str] = []
        with self._job_running(), structlog.contextvars.bound_contextvars(policy=policy):
            log.info(f"scheduled {kind} started")
            try:
                volumes = _volumes(ctx, kind, policy)
                for volume in volumes:
                    if not self._limit.acquire(self._stopping):
                        skipped.append(volume)
                        continue
                    try:
                        with self._activity(f"{VERBS[kind]} {policy}/{volume}"):
                            OPERATIONS[kind](ctx, policy, volume)
                    except VolkeepError as error:
                        failures[volume] = str(error)
                    finally:
                        self._limit.release()
            except VolkeepError as error:
                failures["*"] = str(error)
            except Exception as error:  # a bug must not take the scheduler down
                log.exception(f"internal error in the scheduled {kind}")
                failures["*"] = repr(error)
            if self._stopping.is_set() and (skipped or failures):
                log.warning(
                    f"scheduled {kind} interrupted by the stop: it runs again at the next start",
                    not_started=skipped,
                    failed=sorted(failures),
                )
            else:
                self._history.record_run(job_id, started)
                if failures:
                    log.error(f"scheduled {kind} finished with failures", failed=failures)
                else:
                    log.info(f"scheduled {kind} finished", volumes=len(volumes))
        self._publish()

    @contextmanager
    def _job_running(self) -> Iterator[None]:
        with self._jobs_condition:
            self._jobs_running += 1
        try:
            yield
        finally:
            with self._jobs_condition:
                self._jobs_running -= 1
                self._jobs_condition.notify_all()

    @contextmanager
    def _activity(self, text: str) -> Iterator[None]:
        thread = threading.get_ident()
        with self._activities_lock:
            self._activities[thread] = text
        self._publish()
        try:
            yield
        finally:
            with self._activities_lock:
                del self._activities[thread]

    def _heartbeat(self) -> None:
        self._last_beat = time.monotonic()
        self._publish()

    def _alive(self) -> bool:
        """Say whether the scheduler still dispatches jobs (its heartbeat job ran lately), or
        the daemon is stopping in order."""
        if self._stopping.is_set():
            return True
        return time.monotonic() - self._last_beat < 3 * self._beat_seconds

    def _describe(self) -> str:
        """Return what the daemon does now, for STATUS= and `volkeep status`."""
        with self._activities_lock:
            activities = list(self._activities.items())
        now = time.monotonic()
        doing = "; ".join(
            f"{text} {progress.describe(now)}" if (progress := progress_of(thread)) else text
            for thread, text in activities
        )
        if self._stopping.is_set():
            return f"stopping: {doing}" if doing else "stopping"
        if doing:
            return doing
        upcoming = [
            (job.next_run_time, job.id)
            for job in self._scheduler.get_jobs()
            if job.id in self._specs and job.next_run_time is not None
        ]
        if not upcoming:
            return "idle, nothing scheduled"
        when, job_id = min(upcoming)
        kind, _, policy = job_id.partition(":")
        return f"idle, next: {policy} {kind} at {when.strftime('%Y-%m-%d %H:%M:%S %Z')}"

    def _publish(self) -> None:
        """Tell systemd what the daemon does (if that changed) and rewrite `daemon.json`."""
        with self._publish_lock:
            line = self._describe()
            if line != self._status_line:
                self._status_line = line
                notify(f"STATUS={line}")
            next_runs = {
                job.id: job.next_run_time
                for job in self._scheduler.get_jobs()
                if job.id in self._specs
            }
            heartbeat = Heartbeat(os.getpid(), self._started, datetime.now(UTC), line, next_runs)
            try:
                write_heartbeat(self._state_dir, heartbeat)
            except OSError as error:
                log.warning("cannot write the heartbeat file", error=str(error))

    def _shut_down(self, engine: docker.APIClient) -> int:
        timeout = self._config.daemon.shutdown_timeout.total_seconds()
        self._stopping.set()
        with self._activities_lock:
            running = sorted(self._activities.values())
        log.info("stopping: no new operations start", running=running, shutdown_timeout=timeout)
        notify("STOPPING=1", f"STATUS={self._describe()}")
        self._scheduler.shutdown(wait=False)
        if not self._wait_for_jobs(time.monotonic() + timeout):
            with self._activities_lock:
                running = sorted(self._activities.values())
            log.warning("aborting the running operations", running=running)
            deadline = time.monotonic() + ABORT_GRACE_SECONDS
            while not self._wait_for_jobs(time.monotonic() + POLL_SECONDS, interruptible=False):
                if time.monotonic() > deadline:
                    log.error("operations did not end after their helpers were killed")
                    os._exit(EXIT_FAILED)  # stuck in the engine: systemd would SIGKILL us
                kill_helpers(engine)
        if self._watchdog is not None:
            self._watchdog.stop()
        self._publish()
        log.info("daemon stopped")
        return EXIT_OK

    def _wait_for_jobs(self, deadline: float, *, interruptible: bool = True) -> bool:
        """Wait until no job runs, the deadline passes, or (if `interruptible`) a second
        SIGTERM/SIGINT comes; return True if no job runs."""
        with self._jobs_condition:
            while self._jobs_running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._jobs_condition.wait(min(remaining, POLL_SECONDS))
                if interruptible and self._second_stop_signal():
                    return False
            return True

    def _second_stop_signal(self) -> bool:
        try:
            number = self._signals.get_nowait()
        except queue.Empty:
            return False
        if number == signal.SIGHUP:
            return False
        log.warning("second stop signal: aborting now", signal=signal.Signals(number).name)
        return True


def run_daemon(config: Config, config_path: Path, state_dir: Path) -> int:
    """Given a valid config, the path it was read from (for reloads) and the state dir,
    run the daemon until SIGTERM or SIGINT; return the exit code.

    Raise OperationError if another daemon uses the state dir, DockerUnavailable if the
    engine does not answer at start.
    """
    return Daemon(config, config_path, state_dir).run()
