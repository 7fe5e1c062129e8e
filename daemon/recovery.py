"""Crash recovery: remove what a dead volkeep process left behind (SPEC §5.4).

Helper containers and scratch volumes carry volkeep's labels, naming the process that made
them (daemon.owner). Whatever belongs to a process that has ended is a leftover; what a
live volkeep process is using, on this host or another sharing the engine, is left alone.
"""

from __future__ import annotations

from pathlib import Path

import docker
import structlog

from daemon.config.model import Config
from daemon.docker.helpers import LABEL_OWNER, LABEL_ROLE, remove_container
from daemon.docker.volumes import remove_volume
from daemon.errors import OperationError
from daemon.locks import volume_lock
from daemon.owner import owner_is_gone
from daemon.storage import Storage, open_storage

log = structlog.get_logger()


def remove_leftovers(api: docker.APIClient) -> None:
    """Remove helper containers and scratch volumes whose owning process has ended."""
    for container in api.containers(all=True, filters={"label": LABEL_ROLE}):
        if owner_is_gone(container["Labels"].get(LABEL_OWNER, "")):
            remove_container(api, container["Id"])
            log.warning("removed a leftover helper container", container=container["Id"][:12])
    for volume in api.volumes(filters={"label": LABEL_ROLE}).get("Volumes") or []:
        if owner_is_gone((volume.get("Labels") or {}).get(LABEL_OWNER, "")):
            remove_volume(api, volume["Name"])
            log.warning("removed a leftover scratch volume", scratch_volume=volume["Name"])


def remove_garbage(storage: Storage, policy: str, volume: str) -> None:
    """Remove the volume's partial and uncommitted archive files (hold its lock)."""
    for name in storage.remove_garbage(policy, volume):
        log.warning("removed an incomplete archive file", file=name, storage=storage.name)


def remove_incomplete_archives(config: Config, state_dir: Path) -> None:
    """Remove the partial and uncommitted archive files of every policy's volumes in its
    storage, except those of volumes an operation holds the lock of (it may be writing)."""
    for policy in config.policies.values():
        storage = open_storage(config.storages[policy.storage])
        try:
            volumes = storage.volumes(policy.name)
        except OSError as error:
            log.warning(
                "cannot look for incomplete archives", storage=storage.name, error=str(error)
            )
            continue
        for volume in volumes:
            try:
                with volume_lock(state_dir, volume, "removal of incomplete archives"):
                    remove_garbage(storage, policy.name, volume)
            except OperationError:
                continue  # an operation of another process holds it
            except OSError as error:
                log.warning("cannot remove incomplete archives", volume=volume, error=str(error))
