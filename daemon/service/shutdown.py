"""Stopping in order: no new operation starts; the running ones get `daemon.shutdown_timeout`
to finish (a second SIGTERM/SIGINT cuts it short); then their helpers are killed, so that
they abort and clean up as on any failure. An operation stuck in the engine even then ends
the process: systemd would SIGKILL it anyway."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import docker
import structlog
from apscheduler.schedulers.base import BaseScheduler

from daemon.engine.helpers import kill_helpers
from daemon.errors import EXIT_FAILED
from daemon.service.runner import POLL_SECONDS, Runner
from daemon.service.status import StatusLine
from daemon.service.systemd import notify

log = structlog.get_logger()

ABORT_GRACE_SECONDS = 60.0  # after the helpers are killed, for the operations to clean up


def stop_operations(
    *,
    stopping: threading.Event,
    scheduler: BaseScheduler,
    runner: Runner,
    engine: docker.APIClient,
    timeout: float,
    status: StatusLine,
    second_stop: Callable[[], bool],
) -> None:
    """Stop the daemon's work as the module says; return once no run is left."""
    stopping.set()
    running = status.running
    log.info("stopping: no new operations start", running=running(), shutdown_timeout=timeout)
    notify("STOPPING=1", f"STATUS={status.describe()}")
    scheduler.shutdown(wait=False)
    if runner.wait(time.monotonic() + timeout, interrupted=second_stop):
        return
    log.warning("aborting the running operations", running=running())
    deadline = time.monotonic() + ABORT_GRACE_SECONDS
    while not runner.wait(time.monotonic() + POLL_SECONDS):
        if time.monotonic() > deadline:
            log.error("operations did not end after their helpers were killed")
            os._exit(EXIT_FAILED)
        kill_helpers(engine)
