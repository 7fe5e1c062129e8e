"""Keeps the overview that the metrics and the status page show fresh: read at start, again
after each operation (and each scheduled run) that the event stream tells of, and every few
minutes for what other hosts record in a shared storage. After each read, the textfile for
node_exporter is rewritten atomically.

Reading happens on a thread of its own: a slow storage never delays an operation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests
import structlog

from daemon.actions.context import Context
from daemon.config.model import Config
from daemon.errors import VolkeepError
from daemon.events import DrillVerdict, Event, OperationFailed, OperationFinished, RunFinished
from daemon.observe.metrics import Metrics
from daemon.observe.overview import take_overview

log = structlog.get_logger()

REFRESH_SECONDS = 300.0


class Observer:
    def __init__(
        self,
        config: Callable[[], Config],
        state_dir: Path,
        metrics: Metrics,
        textfile: Path | None,
    ) -> None:
        self._config = config
        self._state_dir = state_dir
        self._metrics = metrics
        self._textfile = textfile
        self._due = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._context: Context | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, OperationFinished | OperationFailed | DrillVerdict | RunFinished):
            self._due.set()

    def start(self) -> None:
        """Start the thread; it reads first when `read_soon` asks (once the daemon wrote
        its heartbeat: the overview shows its next runs)."""
        self._thread.start()

    def read_soon(self) -> None:
        """Read the overview again as soon as the thread is free."""
        self._due.set()

    def stop(self) -> None:
        """Stop after a last read (the operations' last outcomes reach the textfile)."""
        self._stopped.set()
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._due.wait(REFRESH_SECONDS)
            self._due.clear()
            try:
                self.refresh()
            except Exception:  # a bug here must not leave the metrics frozen unnoticed
                log.exception("internal error while reading the overview for the metrics")
            if self._stopped.is_set():
                return

    def refresh(self) -> None:
        """Read the overview and give it to the metrics, then write the textfile; on a
        failure, log it and keep the last one."""
        config = self._config()
        if self._context is None or self._context.config is not config:
            self._context = Context(config, self._state_dir)  # opened once per config
        try:
            self._metrics.update(take_overview(self._context, datetime.now(UTC)))
        except (VolkeepError, OSError, sqlite3.Error) as error:
            log.warning(
                "cannot read the storages and the history for the metrics", error=str(error)
            )
        except (docker.errors.DockerException, requests.RequestException) as error:
            log.warning("cannot read the engine for the metrics", error=str(error))
        if self._textfile is not None:
            try:
                self._metrics.write_textfile(self._textfile)
            except OSError as error:
                log.warning(
                    "cannot write the metrics textfile",
                    textfile=str(self._textfile),
                    error=str(error),
                )
