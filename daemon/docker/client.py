"""Connecting to the Docker engine, and turning its failures into one clear line."""

from __future__ import annotations

import docker
import requests
from docker.utils import kwargs_from_env

from daemon.errors import DockerUnavailable, OperationError

# Streams can stall for long stretches (a slow disk, a huge file); operations are bounded
# by cancellation, not by a socket timeout.
API_TIMEOUT = 3600


def connect(timeout: int = API_TIMEOUT) -> docker.APIClient:
    """Return a low-level client for the engine in DOCKER_HOST (or the local socket), whose
    calls give up after `timeout` seconds.

    Raise DockerUnavailable if the engine does not answer.
    """
    try:
        api = docker.APIClient(**kwargs_from_env(), timeout=timeout)
        api.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as error:
        raise DockerUnavailable(f"the Docker engine does not answer: {_reason(error)}") from None
    return api


def engine_failure(error: Exception) -> OperationError:
    """Given an error the Docker SDK raised mid-operation, return the error to report."""
    explanation = getattr(error, "explanation", None) or _reason(error)
    return OperationError(f"the Docker engine failed: {explanation}")


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:300]
