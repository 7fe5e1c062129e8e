"""`volkeep run`: every policy's backups and drills on their schedules, until SIGTERM.

This module is the daemon's life: start, signals, reload, stop. Its parts live in
`daemon.service` (the job table, the runs, the status line, the shutdown) and read one
event stream (`daemon.events`), as do the metrics, the notifications and the status page.

- Signals: SIGHUP reloads the config: the new job table is built whole, then swapped; a
  config that does not load, or a table that cannot be built, is logged and the running
  config kept. SIGTERM/SIGINT: no new operation starts; running ones get
  `daemon.shutdown_timeout` to finish, then their helpers are killed so that they abort
  and clean up as on any failure; exit 0. A second SIGTERM/SIGINT aborts at once.
- systemd: READY=1 once the config is valid, the engine answers, leftovers of a crash are
  gone and the scheduler runs; STATUS= says what it does; WATCHDOG=1 while the scheduler
  dispatches (a heartbeat job proves it, and also rewrites `daemon.json`).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from daemon import events
from daemon.actions.context import Context
from daemon.actions.garbage import remove_incomplete_archives
from daemon.actions.hostname import publish_host_records
from daemon.config import load_config
from daemon.config.model import Config, MetricsSettings
from daemon.engine.client import connect
from daemon.errors import EXIT_OK, ConfigError, OperationError, VolkeepError
from daemon.events import ConfigReload
from daemon.observe.metrics import Metrics
from daemon.observe.notifications.dispatch import Notifications
from daemon.observe.web.server import StatusServer
from daemon.service.jobs import JobTable
from daemon.service.observer import Observer
from daemon.service.runner import ParallelLimit, Runner
from daemon.service.shutdown import stop_operations
from daemon.service.status import Heartbeats, StatusLine
from daemon.service.systemd import Watchdog, notify, watchdog_interval
from daemon.state.history import History, daemon_pid_file

log = structlog.get_logger()

HEARTBEAT_SECONDS = 10.0
KILL_TIMEOUT_SECONDS = 10
JOB_THREADS = 64  # jobs waiting for a free slot each hold a thread; threads start lazily


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "maximum number of running instances reached" in message:
            return  # the job table says it in volkeep's words (service.jobs)
        log.log(record.levelno, message, logger=record.name)


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
        self.config = config
        self._config_path = config_path
        self._state_dir = state_dir
        self._stopping = threading.Event()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._limit = ParallelLimit(config.daemon.max_parallel)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": ThreadPoolExecutor(JOB_THREADS),
                "heartbeat": ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._runner = Runner(lambda: self.config, state_dir, self._limit, self._stopping)
        self.jobs = JobTable(self.scheduler, History(state_dir), self._runner.run)
        self.status = StatusLine(state_dir, self.jobs.next_runs, self._stopping)
        watchdog = watchdog_interval()
        beat = min(HEARTBEAT_SECONDS, watchdog / 2) if watchdog else HEARTBEAT_SECONDS
        self._heartbeats = Heartbeats(beat, self.status, self._stopping)
        self._watchdog = Watchdog(watchdog, self._heartbeats.alive) if watchdog else None

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code.

        Raise OperationError if another daemon uses the state dir, DockerUnavailable if the
        engine does not answer at start.
        """
        with daemon_pid_file(self._state_dir):
            # connect, start again the containers a crash left stopped, remove leftovers
            ctx = Context(self.config, self._state_dir)
            ctx.docker()
            ctx.wait_for_cleanup()  # at start-up, before any scheduled run
            remove_incomplete_archives(ctx)
            publish_host_records(ctx)  # its schedules, for `fleet status`
            History(self._state_dir).trim()  # each operation trims its own volume after this
            engine = connect(timeout=KILL_TIMEOUT_SECONDS)  # to abort: never wait long
            self._install_signal_handlers()
            _forward_apscheduler_logs()
            with self._observed(ctx) as read_again:
                self.scheduler.start()
                self.jobs.replace(self.config, ctx.splay)
                self.status.publish()  # this daemon's pid and next runs, in daemon.json
                read_again()  # so that the status page shows them
                self.scheduler.add_job(
                    self._heartbeats.beat,
                    "interval",
                    seconds=self._heartbeats.seconds,
                    id="heartbeat",
                    executor="heartbeat",
                    next_run_time=datetime.now(UTC),
                )
                if self._watchdog is not None:
                    self._watchdog.start()
                _warn_about(self.config)
                log.info(
                    "daemon started",
                    pid=os.getpid(),
                    config=[str(path) for path in self.config.files],
                    jobs=sorted(self.jobs.specs),
                    max_parallel=self.config.daemon.max_parallel,
                )
                notify("READY=1", f"STATUS={self.status.describe()}")
                self._wait_for_stop()
                stop_operations(
                    stopping=self._stopping,
                    scheduler=self.scheduler,
                    runner=self._runner,
                    engine=engine,
                    timeout=self.config.daemon.shutdown_timeout.total_seconds(),
                    status=self.status,
                    second_stop=self._second_stop_signal,
                )
                if self._watchdog is not None:
                    self._watchdog.stop()
                self.status.publish()
            log.info("daemon stopped")
            return EXIT_OK

    @contextmanager
    def _observed(self, ctx: Context) -> Iterator[Callable[[], None]]:
        """Subscribe the event stream's readers for the block: the status line, the
        notifications, and (if `daemon.metrics` asks) the metrics, their textfile and the
        status page; yield the function that has the overview they show read again. Raise
        OperationError if the metrics address cannot be listened on."""
        settings = self.config.daemon.metrics
        notifications = Notifications(lambda: self.config, History(self._state_dir), ctx.host)
        with ExitStack() as stack:
            stack.callback(events.subscribe(self.status))
            notifications.start()
            stack.callback(notifications.close)
            stack.callback(events.subscribe(notifications))
            if settings.listen is not None or settings.textfile is not None:
                metrics = Metrics(ctx.host)
                observer = Observer(
                    lambda: self.config, self._state_dir, metrics, settings.textfile
                )
                stack.callback(events.subscribe(metrics))
                observer.start()
                stack.callback(observer.stop)
                stack.callback(events.subscribe(observer))
                if settings.listen is not None:
                    server = _serve(settings, metrics, ctx.host, self.status.describe)
                    server.start()
                    stack.callback(server.stop)
                yield observer.read_soon
            else:
                yield lambda: None

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
            self.reload()

    def reload(self) -> None:
        """Load the config again and make its jobs the scheduler's. If the config does not
        load or its job table cannot be built, log why and keep the running ones."""
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        refused = "config reload failed: keeping the running config"
        running = self.config
        problems: tuple[str, ...] = ()
        try:
            self.config = load_config(self._config_path)  # the jobs it adds run with it
            changes = self.jobs.replace(self.config, Context(self.config, self._state_dir).splay)
        except ConfigError as error:
            problems = tuple(str(problem) for problem in error.problems)
            for problem in problems:
                log.error(refused, problem=problem)
        except VolkeepError as error:
            problems = (str(error),)
            log.error(refused, error=str(error))
        except Exception as error:  # whatever it is, the running config goes on
            problems = (f"internal error: {error!r}",)
            log.exception(refused, error=repr(error))
        else:
            self._limit.resize(self.config.daemon.max_parallel)
            if self.config.daemon.metrics != running.daemon.metrics:
                log.warning("daemon.metrics changed: that takes effect at the next start")
            log.info(
                "config reloaded",
                added=changes.added,
                removed=changes.removed,
                rescheduled=changes.rescheduled,
            )
            running = self.config
            _warn_about(running)
        self.config = running
        events.emit(ConfigReload(problems))  # the status line, the page and the metrics
        notify("READY=1", f"STATUS={self.status.describe()}")

    def _second_stop_signal(self) -> bool:
        try:
            number = self._signals.get_nowait()
        except queue.Empty:
            return False
        if number == signal.SIGHUP:
            return False
        log.warning("second stop signal: aborting now", signal=signal.Signals(number).name)
        return True


def _warn_about(config: Config) -> None:
    """Log what the config's files do that loads but deserves the operator's eye."""
    for warning in config.warnings:
        log.warning("config warning", problem=str(warning))


def _serve(
    settings: MetricsSettings, metrics: Metrics, host_name: str, activity: Callable[[], str]
) -> StatusServer:
    assert settings.listen is not None
    host, port = settings.listen
    try:
        return StatusServer(host, port, metrics, host_name, activity, settings.token)
    except OSError as error:
        raise OperationError(
            f"cannot serve the metrics on {host}:{port} (daemon.metrics.listen): "
            f"{error.strerror or error}"
        ) from None


def run_daemon(config: Config, config_path: Path, state_dir: Path) -> int:
    """Given a valid config, the path it was read from (for reloads) and the state dir,
    run the daemon until SIGTERM or SIGINT; return the exit code.

    Raise OperationError if another daemon uses the state dir, DockerUnavailable if the
    engine does not answer at start.
    """
    return Daemon(config, config_path, state_dir).run()
