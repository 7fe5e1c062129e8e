"""The containers that use a volume: which to stop during its backup, in what order, and how.

Containers are found through the engine by what they mount, not by label. A container label
opts in or out whatever the policy says; Compose's `depends_on` label orders the stops
(dependents first) and the starts (dependencies first). Containers that do not depend on each
other are stopped at the same time (`stop_waves`): two that ignore SIGTERM cost one stop
timeout, not two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import docker
import structlog

from daemon.config.model import COMPOSE_PROJECT_LABEL
from daemon.engine.helpers import LABEL_ROLE
from daemon.rules.databases import is_database_image

log = structlog.get_logger()

LABEL_STOP = "volkeep.stop-during-backup"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_DEPENDS_ON_LABEL = "com.docker.compose.depends_on"

StartOutcome = Literal["started", "running", "missing"]


@dataclass(frozen=True)
class ContainerInfo:
    """A container that mounts the volume, as the engine listed it."""

    id: str
    name: str
    running: bool
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    image: str = ""  # as the container was created from ("postgres:16"), or its id

    @property
    def service(self) -> tuple[str, str] | None:
        """Return (Compose project, service) if Compose made this container."""
        project = self.labels.get(COMPOSE_PROJECT_LABEL)
        service = self.labels.get(COMPOSE_SERVICE_LABEL)
        return (project, service) if project and service else None

    @property
    def depends_on(self) -> list[str]:
        """Return the services of its Compose project it depends on.

        Compose writes them as "db:service_started:false,cache:service_healthy:true".
        """
        written = self.labels.get(COMPOSE_DEPENDS_ON_LABEL, "")
        return [item.split(":", 1)[0].strip() for item in written.split(",") if item.strip()]


def containers_using(api: docker.APIClient, volume: str) -> list[ContainerInfo]:
    """Given a volume, return every container that mounts it, running or not, by name.

    volkeep's own helpers are left out.
    """
    found = []
    for raw in api.containers(all=True, filters={"volume": volume}):
        labels = raw.get("Labels") or {}
        mounts = raw.get("Mounts") or []
        if LABEL_ROLE in labels or not any(m.get("Name") == volume for m in mounts):
            continue  # the filter also matches a mount *destination* spelled like the name
        name = (raw.get("Names") or [raw["Id"][:12]])[0].lstrip("/")
        running = raw.get("State") == "running"
        found.append(ContainerInfo(raw["Id"], name, running, labels, raw.get("Image") or ""))
    return sorted(found, key=lambda container: container.name)


def stop_choice(container: ContainerInfo, policy_default: bool) -> bool:
    """Given a container and the policy's `stop_containers`, say whether the container opts
    in: its `volkeep.stop-during-backup` label (true or false) wins over the policy."""
    written = container.labels.get(LABEL_STOP)
    if written is None:
        return policy_default
    if written.strip().lower() in ("true", "false"):
        return written.strip().lower() == "true"
    log.warning(
        "container label is neither true nor false; the policy decides",
        container=container.name,
        label=f"{LABEL_STOP}={written}",
    )
    return policy_default


def live_databases(
    containers: Iterable[ContainerInfo], policy_default: bool
) -> list[ContainerInfo]:
    """Given the containers that mount a volume and the policy's `stop_containers`, return
    the running ones of a database image that its backup would leave running."""
    return [
        container
        for container in containers
        if container.running
        and is_database_image(container.image)
        and not stop_choice(container, policy_default)
    ]


def containers_to_stop(
    containers: Iterable[ContainerInfo], policy_default: bool
) -> list[ContainerInfo]:
    """Given the containers that mount a volume and the policy's `stop_containers`, return
    the running ones to stop, in stop order. Containers not running are left as they are."""
    chosen = [c for c in containers if c.running and stop_choice(c, policy_default)]
    return stop_order(chosen)


def _dependencies(
    container: ContainerInfo, by_service: dict[tuple[str, str] | None, ContainerInfo]
) -> list[ContainerInfo]:
    """Given a container and the containers by Compose service, return those it depends on."""
    if container.service is None:
        return []
    project = container.service[0]
    return [
        by_service[(project, name)]
        for name in container.depends_on
        if (project, name) in by_service
    ]


def _by_service(
    containers: Sequence[ContainerInfo],
) -> dict[tuple[str, str] | None, ContainerInfo]:
    return {c.service: c for c in containers if c.service is not None}


def stop_order(containers: Sequence[ContainerInfo]) -> list[ContainerInfo]:
    """Given containers, return them in the order to stop them: a container before the
    containers of its Compose project it depends on; otherwise in the order given.

    Starting them in the reverse order starts dependencies first. A dependency cycle (which
    Compose refuses) is broken somewhere; every container is still listed once.
    """
    by_service = _by_service(containers)
    ordered: list[ContainerInfo] = []
    placed: set[str] = set()

    def place(container: ContainerInfo, visiting: frozenset[str]) -> None:
        """Place the container after every container that depends on it."""
        if container.id in placed or container.id in visiting:
            return
        for dependent in containers:
            if container in _dependencies(dependent, by_service):
                place(dependent, visiting | {container.id})
        placed.add(container.id)
        ordered.append(container)

    for container in containers:
        place(container, frozenset())
    return ordered


def stop_waves(containers: Sequence[ContainerInfo]) -> list[list[ContainerInfo]]:
    """Given containers in stop order (`stop_order`), return them in waves to stop one after
    the other, the containers of a wave at the same time: a container comes in a wave after
    every container listed before it that depends on it."""
    by_service = _by_service(containers)
    wave_of: dict[str, int] = {}
    for container in containers:
        dependents = [
            wave_of[other.id]
            for other in containers
            if other.id in wave_of and container in _dependencies(other, by_service)
        ]
        wave_of[container.id] = max(dependents, default=-1) + 1
    waves: list[list[ContainerInfo]] = [[] for _ in range(max(wave_of.values(), default=-1) + 1)]
    for container in containers:
        waves[wave_of[container.id]].append(container)
    return waves


def stop_container(api: docker.APIClient, container: ContainerInfo, timeout: float) -> None:
    """Stop the container: SIGTERM (or its stop signal), SIGKILL after `timeout` seconds."""
    api.stop(container.id, timeout=math.ceil(timeout))


def start_container(api: docker.APIClient, container_id: str) -> StartOutcome:
    """Start the container unless it runs already; say which, or that it no longer exists."""
    try:
        if api.inspect_container(container_id)["State"]["Running"]:
            return "running"
        api.start(container_id)
    except docker.errors.NotFound:
        return "missing"
    return "started"
