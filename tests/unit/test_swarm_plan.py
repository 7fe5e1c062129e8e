"""What volkeep does with the containers of a Swarm service it would stop, by what the engine
says of itself and of the service (daemon.engine.swarm), and how the stop journal keeps a
scaled service (daemon.engine.journal). The real swarm is in tests/e2e/test_swarm.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import docker
import pytest

from daemon.engine.containers import ContainerInfo
from daemon.engine.journal import (
    Journal,
    ScaledService,
    StoppedContainer,
    containers_stopped,
    journal_path,
)
from daemon.engine.swarm import plan_scaling
from daemon.errors import OperationError

MOMENT = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def task(name: str, service: str) -> ContainerInfo:
    labels = {
        "com.docker.swarm.service.id": f"id-{service}",
        "com.docker.swarm.service.name": service,
    }
    return ContainerInfo(f"id-{name}", name, True, labels)


class Engine:
    """What a swarm node's engine answers about itself and its services; it records every
    call that would change something."""

    def __init__(self, state: str, manager: bool, modes: dict[str, dict[str, Any]]) -> None:
        self.swarm = {"LocalNodeState": state, "ControlAvailable": manager}
        self.modes = modes
        self.changes: list[str] = []

    def info(self) -> dict[str, Any]:
        return {"Swarm": self.swarm}

    def inspect_service(self, service_id: str) -> dict[str, Any]:
        name = service_id.removeprefix("id-")
        if name not in self.modes:
            raise docker.errors.NotFound(f"service {service_id} not found")
        return {"Spec": {"Mode": self.modes[name]}, "Version": {"Index": 1}}

    def stop(self, container_id: str, timeout: int) -> None:
        self.changes.append(f"stop {container_id}")

    def update_service(self, *args: Any, **kwargs: Any) -> None:
        self.changes.append(f"update {args[0]}")


def plan(engine: Engine, containers: list[ContainerInfo]) -> tuple[list[str], list[Any]]:
    plain, scalings = plan_scaling(cast(docker.APIClient, engine), containers)
    return [c.name for c in plain], [(s.name, s.replicas, s.refusal) for s in scalings]


def test_a_manager_scales_a_replicated_service_once_for_all_its_containers():
    engine = Engine("active", True, {"web": {"Replicated": {"Replicas": 3}}})
    containers = [task("web.1", "web"), task("web.2", "web"), ContainerInfo("id-db", "db", True)]

    assert plan(engine, containers) == (["db"], [("web", 3, None)])


def test_a_worker_refuses_a_service_it_cannot_scale_naming_container_service_and_way_out():
    engine = Engine("active", False, {})

    (plain, [(name, _, refusal)]) = plan(engine, [task("web.1", "web")])

    assert (plain, name) == ([], "web")
    assert refusal == (
        "container web.1 belongs to Swarm service web; volkeep on a worker cannot scale it: "
        "run the backup on a manager or use a hook"
    )


def test_a_global_service_is_refused_even_on_a_manager():
    engine = Engine("active", True, {"agent": {"Global": {}}})

    [(_, _, refusal)] = plan(engine, [task("agent.x", "agent")])[1]

    assert refusal is not None
    assert "the global Swarm service agent, which volkeep cannot scale to 0" in refusal


def test_containers_of_an_engine_that_left_the_swarm_or_of_a_removed_service_are_plain():
    left = Engine("inactive", False, {})
    manager = Engine("active", True, {})  # the service is gone

    assert plan(left, [task("web.1", "web")]) == (["web.1"], [])
    assert plan(manager, [task("web.1", "web")]) == (["web.1"], [])


def test_a_refused_service_stops_nothing_and_writes_no_journal(tmp_path: Path):
    engine = Engine("active", False, {})
    containers = [ContainerInfo("id-db", "db", True), task("web.1", "web")]
    api = cast(docker.APIClient, engine)

    with (
        pytest.raises(OperationError, match="volkeep on a worker cannot scale it"),
        containers_stopped(api, tmp_path, "app", "app_data", containers, 10),
    ):
        pass

    assert engine.changes == []
    assert not journal_path(tmp_path, "app_data").exists()


def test_a_journal_keeps_a_scaled_service_and_its_count_and_reads_older_journals():
    scaled = Journal(
        "app",
        "app_data",
        "host:1:2",
        (StoppedContainer("id-db", "db", MOMENT),),
        (ScaledService("id-web", "web", 3, MOMENT),),
    )
    older = b'{"version": 1, "policy": "app", "volume": "app_data", "owner": "host:1:2",'
    older += (
        b' "containers": [{"id": "id-db", "name": "db", "since": "2026-11-28T03:00:00+00:00"}]}'
    )

    assert Journal.from_json(scaled.to_json()) == scaled
    assert Journal.from_json(older).services == ()
