"""Connecting to the Docker engine, and turning its failures into one clear line."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import docker
import requests
import structlog
from docker.utils import kwargs_from_env

from daemon.errors import DockerUnavailable, EngineFailure

log = structlog.get_logger()

# Streams can stall for long stretches (a slow disk, a huge file); operations are bounded
# by cancellation, not by a socket timeout.
API_TIMEOUT = 3600
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
SLOW_SECONDS = 10.0


def connect(timeout: int = API_TIMEOUT) -> docker.APIClient:
    """Return a low-level client for the engine in DOCKER_HOST (or the local socket), whose
    calls give up after `timeout` seconds.

    Raise DockerUnavailable if the engine does not answer.
    """
    address = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    try:
        api = docker.APIClient(**kwargs_from_env(), timeout=timeout)
        api.hooks["response"].append(_say_when_slow)
        api.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as error:
        raise DockerUnavailable(
            f"the Docker engine does not answer at {address}: {_why_unreachable(error, address)}"
        ) from None
    return api


def _say_when_slow(response: requests.Response, *args: object, **kwargs: object) -> None:
    """Log an engine call that took long to answer, so that a daemon waiting for a slow
    engine says so instead of going silent."""
    seconds = response.elapsed.total_seconds()
    request = response.request
    address = urlsplit(request.url or "")
    # A stop waits up to its timeout (`t`) for the container by design: the stop names a
    # container that takes that long; the engine is slow only beyond it.
    waited = parse_qs(address.query).get("t", ["0"])[0]
    allowed = SLOW_SECONDS + (float(waited) if waited.isdigit() else 0.0)
    if seconds >= allowed:
        path = address.path
        log.warning(
            "the Docker engine is slow to answer",
            seconds=round(seconds, 1),
            call=f"{request.method} {path}",
        )


def _why_unreachable(error: Exception, address: str) -> str:
    """Given why connecting failed, return it as a phrase with the likely fix."""
    text = str(error)
    if "FileNotFoundError" in text or "No such file" in text:
        return "no such socket; is dockerd running? (systemctl start docker)"
    if "PermissionError" in text or "Permission denied" in text:
        return "permission denied; run as root or as a member of the docker group"
    if "ConnectionRefused" in text or "Connection refused" in text:
        return "connection refused; is dockerd running?"
    if isinstance(error, requests.Timeout) or "timed out" in text.lower():
        return "it did not answer in time"
    return _reason(error)


def engine_failure(error: Exception) -> EngineFailure:
    """Given an error the Docker SDK raised mid-operation, return the error to report."""
    if isinstance(error, requests.Timeout):
        return EngineFailure("the Docker engine did not answer in time (read timed out)")
    if isinstance(error, requests.ConnectionError):
        return EngineFailure("the Docker engine went away (connection lost)")
    explanation = getattr(error, "explanation", None) or _reason(error)
    return EngineFailure(f"the Docker engine failed: {explanation}")


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:300]
