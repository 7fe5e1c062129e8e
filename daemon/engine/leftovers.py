"""Crash recovery: remove what a dead volkeep process left behind (SPEC §5.4).

Helper containers and scratch volumes carry volkeep's labels, naming the process that made
them (daemon.system.owner). Whatever belongs to a process that has ended is a leftover; what a
live volkeep process is using, on this host or another sharing the engine, is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import structlog

from daemon.engine.helpers import LABEL_OWNER, LABEL_ROLE, remove_container
from daemon.engine.volumes import remove_volume
from daemon.system.owner import owner_is_gone, this_process

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


# A restore target volkeep creates carries this label, and a marker in the state dir names
# it while the restore runs: after a crash, a half-restored volume is not taken for a real
# one (the volume is removed at the next start). A successful restore removes the marker;
# the label stays, telling which process restored the volume.
LABEL_RESTORED_BY = "volkeep.restored-by"
RESTORING = "restoring"


@contextmanager
def restoring_marker(state_dir: Path, target: str) -> Iterator[dict[str, str]]:
    """Mark `target` as a volume this process creates and restores for the block; yield the
    labels to create it with. The marker goes on every way out but a crash."""
    directory = state_dir / RESTORING
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker = directory / target
    marker.write_text(this_process())
    try:
        yield {LABEL_RESTORED_BY: this_process()}
    finally:
        marker.unlink(missing_ok=True)


def remove_half_restored(api: docker.APIClient, state_dir: Path) -> None:
    """Remove the volumes a dead volkeep created as restore targets and never finished."""
    directory = state_dir / RESTORING
    if not directory.is_dir():
        return
    for marker in directory.iterdir():
        owner = marker.read_text().strip()
        if not owner_is_gone(owner):
            continue
        with contextlib.suppress(docker.errors.NotFound):
            labels = api.inspect_volume(marker.name).get("Labels") or {}
            if labels.get(LABEL_RESTORED_BY) == owner:
                remove_volume(api, marker.name)
                log.warning("removed a half-restored volume", target=marker.name)
        marker.unlink(missing_ok=True)
