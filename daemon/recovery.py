"""Crash recovery: remove what a dead volkeep process left behind (SPEC §5.4).

Helper containers and scratch volumes carry volkeep's labels, naming the volume whose lock
their operation held. Whatever belongs to a volume nobody holds the lock of is a leftover.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import docker
import structlog

from daemon.docker.helpers import LABEL_ROLE, LABEL_VOLUME, remove_container
from daemon.docker.volumes import remove_volume
from daemon.errors import OperationError
from daemon.locks import volume_lock
from daemon.storage import Storage

log = structlog.get_logger()


def remove_leftovers(api: docker.APIClient, state_dir: Path) -> None:
    """Remove helper containers and scratch volumes of operations that no longer run."""
    containers: dict[str, list[str]] = defaultdict(list)
    scratch: dict[str, list[str]] = defaultdict(list)
    for container in api.containers(all=True, filters={"label": LABEL_ROLE}):
        containers[container["Labels"].get(LABEL_VOLUME, "")].append(container["Id"])
    for volume in api.volumes(filters={"label": LABEL_ROLE}).get("Volumes") or []:
        scratch[(volume.get("Labels") or {}).get(LABEL_VOLUME, "")].append(volume["Name"])
    for owner in sorted(set(containers) | set(scratch)):
        try:
            with volume_lock(state_dir, owner or "-", "cleanup"):
                for container_id in containers[owner]:
                    remove_container(api, container_id)
                    log.warning("removed leftover helper container", container=container_id[:12])
                for name in scratch[owner]:
                    remove_volume(api, name)
                    log.warning("removed leftover scratch volume", scratch_volume=name)
        except OperationError:
            continue  # its operation is still running in another process


def remove_garbage(storage: Storage, policy: str, volume: str) -> None:
    """Remove the volume's partial and uncommitted archive files (hold its lock)."""
    for name in storage.remove_garbage(policy, volume):
        log.warning("removed an incomplete archive file", file=name, storage=storage.name)
