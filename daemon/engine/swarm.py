"""Containers of a Docker Swarm service: scaled to 0 for a backup, never stopped one by one.

Swarm replaces the task of a container that stops: a container stopped for a backup would
come back as a new one, on the same volume, in the middle of the backup. So volkeep scales
the service to 0 replicas instead, waits until its containers on this engine have stopped,
and scales it back to the count it had (the stop journal records that count, so that a
volkeep that dies meanwhile scales it back at its next start: SPEC §5.3).

Only a manager can change a service: on a worker, the volume's backup is refused before
anything is stopped. Only a replicated service has a count to lower: a global service (one
task on every node) or a job is refused too. A container whose engine is no longer in a swarm
is a plain container: nothing replaces it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import docker
from docker.types import ServiceMode

from daemon.engine.containers import ContainerInfo, StartOutcome
from daemon.errors import OperationError

SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"
SWARM_SERVICE_NAME_LABEL = "com.docker.swarm.service.name"
NANOSECONDS = 1_000_000_000
DEFAULT_GRACE_SECONDS = 10.0  # Swarm's stop grace period when the service sets none
STOP_MARGIN_SECONDS = 30.0  # beyond the grace period, for Swarm to notice and the engine to act
POLL_SECONDS = 0.2

HOOK_ADVICE = (
    "leave it running (container label volkeep.stop-during-backup=false) and quiesce it in a hook"
)


@dataclass(frozen=True)
class Scaling:
    """A Swarm service with running containers on a volume, and whether volkeep can scale
    it to 0 replicas for the volume's backup."""

    id: str
    name: str
    replicas: int  # its replica count now, to scale back to
    grace_seconds: float  # how long Swarm lets one of its tasks stop
    refusal: str | None = None  # why volkeep cannot scale it (None: it can)


def swarm_service(container: ContainerInfo) -> tuple[str, str] | None:
    """Given a container, return (id, name) of the Swarm service whose task it runs, if any."""
    service_id = container.labels.get(SWARM_SERVICE_LABEL)
    if not service_id:
        return None
    return service_id, container.labels.get(SWARM_SERVICE_NAME_LABEL) or service_id


def plan_scaling(
    api: docker.APIClient, containers: Sequence[ContainerInfo]
) -> tuple[list[ContainerInfo], list[Scaling]]:
    """Given the running containers to stop for a volume (in stop order), return those to stop
    one by one and the Swarm services to scale to 0 instead, each with its refusal if volkeep
    cannot scale it here (a worker, a global service, a job)."""
    members = [c for c in containers if swarm_service(c) is not None]
    if not members:
        return list(containers), []
    swarm = api.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") == "inactive":  # left the swarm: nothing replaces them
        return list(containers), []
    plain = [c for c in containers if swarm_service(c) is None]
    scalings: dict[str, Scaling] = {}
    for container in members:
        service_id, name = swarm_service(container) or ("", "")
        if service_id in scalings:
            continue
        if not swarm.get("ControlAvailable"):
            scalings[service_id] = Scaling(
                service_id,
                name,
                0,
                0.0,
                f"container {container.name} belongs to Swarm service {name}; volkeep on a "
                "worker cannot scale it: run the backup on a manager or use a hook",
            )
            continue
        try:
            spec = api.inspect_service(service_id)["Spec"]
        except docker.errors.NotFound:  # the service is gone: nothing replaces its container
            plain.append(container)
            continue
        scalings[service_id] = _scaling(service_id, name, container, spec)
    return plain, list(scalings.values())


def _scaling(service_id: str, name: str, container: ContainerInfo, spec: dict[str, Any]) -> Scaling:
    """Given a service's spec, return how to scale it (or why it cannot be)."""
    mode = spec.get("Mode") or {}
    grace = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("StopGracePeriod")
    grace_seconds = grace / NANOSECONDS if grace else DEFAULT_GRACE_SECONDS
    replicated = mode.get("Replicated")
    if not isinstance(replicated, dict):
        kind = {"Global": "global", "ReplicatedJob": "replicated-job", "GlobalJob": "global-job"}
        written = next((kind.get(key, key) for key in mode), "unknown")
        return Scaling(
            service_id,
            name,
            0,
            grace_seconds,
            f"container {container.name} belongs to the {written} Swarm service {name}, which "
            f"volkeep cannot scale to 0 (only a replicated service can be): {HOOK_ADVICE}",
        )
    return Scaling(service_id, name, int(replicated.get("Replicas") or 0), grace_seconds)


def refuse_unscalable(scalings: Sequence[Scaling], volume: str) -> None:
    """Raise OperationError with the first refusal among the scalings, if any."""
    for scaling in scalings:
        if scaling.refusal is not None:
            raise OperationError(scaling.refusal, volume=volume)


def scale(api: docker.APIClient, service_id: str, replicas: int) -> None:
    """Set the replicated service's replica count, keeping the rest of its spec."""
    version = api.inspect_service(service_id)["Version"]["Index"]
    api.update_service(
        service_id, version, mode=ServiceMode("replicated", replicas), fetch_current_spec=True
    )


def scale_back(api: docker.APIClient, service_id: str, replicas: int) -> StartOutcome:
    """Scale the service back to `replicas` if it is still at 0; say which, or that it runs
    already (someone scaled it meanwhile: their count stays), or no longer exists."""
    try:
        mode = api.inspect_service(service_id)["Spec"].get("Mode") or {}
    except docker.errors.NotFound:
        return "missing"
    if (mode.get("Replicated") or {}).get("Replicas"):
        return "running"
    scale(api, service_id, replicas)
    return "started"


def wait_until_stopped(api: docker.APIClient, scaling: Scaling) -> None:
    """Wait until no container of the service runs on this engine.

    Raise OperationError if one still runs after its grace period and a margin.
    """
    limit = scaling.grace_seconds + STOP_MARGIN_SECONDS
    deadline = time.monotonic() + limit
    while api.containers(filters={"label": f"{SWARM_SERVICE_LABEL}={scaling.id}"}):
        if time.monotonic() > deadline:
            raise OperationError(
                f"Swarm service {scaling.name} was scaled to 0 but its containers on this "
                f"engine still run after {limit:.0f} s"
            )
        time.sleep(POLL_SECONDS)
