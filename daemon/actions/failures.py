"""One volume's failure is that volume's: whatever stops one volume's part of an action is
reported in one line naming it, and the action goes on with the next volume."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import requests
import structlog

from daemon.engine.client import engine_failure
from daemon.errors import OperationError

log = structlog.get_logger()


@contextmanager
def volume_failure(
    failures: list[OperationError], action: str, policy: str, volume: str
) -> Iterator[None]:
    """Run one volume's part of an action. Any failure of it (an OperationError, or an
    engine, network, file system or run-history error raised before or after the stream)
    is logged once, addressed to the volume and appended to `failures`."""
    try:
        yield
        return
    except OperationError as error:
        failure = error
    except (docker.errors.DockerException, requests.RequestException) as error:
        failure = engine_failure(error)
    except sqlite3.Error as error:
        failure = OperationError(f"the run history cannot be written: {error}")
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        failure = OperationError(f"{error.strerror or error}{where}")
    failure.policy, failure.volume = policy, volume
    log.error(f"{action} failed", error=failure.message)
    failures.append(failure)
