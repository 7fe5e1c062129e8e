"""Crash recovery: remove what a dead volkeep process left behind (SPEC §5.4).

Helper containers and scratch volumes carry volkeep's labels, naming the process that made
them (daemon.system.owner). Whatever belongs to a process that has ended is a leftover; what a
live volkeep process is using, on this host or another sharing the engine, is left alone.

Removing them can take minutes (a scratch volume of a million files) and can fail (a volume an
application container has since mounted), and no operation needs them gone: they are removed
beside the operation asked for, in a thread of their own (`start_removing_leftovers`), and a
failure is a warning. The one exception is the operation's own volume: a half-restored volume
is removed before an operation takes it (`remove_half_restored_volume`, under the volume's
lock), so that a restore into the same name starts from nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import requests
import structlog

from daemon.engine.client import connect, engine_failure
from daemon.engine.helpers import LABEL_OWNER, LABEL_ROLE, remove_container
from daemon.engine.volumes import remove_volume
from daemon.errors import DockerUnavailable
from daemon.system.owner import owner_is_gone, this_process

log = structlog.get_logger()


def remove_leftovers(api: docker.APIClient) -> None:
    """Remove helper containers and scratch volumes whose owning process has ended; log one
    that cannot be removed and go on (the next volkeep process tries again)."""
    _remove_dead_helpers(api, {"label": LABEL_ROLE})
    for volume in api.volumes(filters={"label": LABEL_ROLE}).get("Volumes") or []:
        if owner_is_gone((volume.get("Labels") or {}).get(LABEL_OWNER, "")):
            with _failure_logged("scratch volume", scratch_volume=volume["Name"]):
                remove_volume(api, volume["Name"])
                log.warning("removed a leftover scratch volume", scratch_volume=volume["Name"])


def _remove_dead_helpers(api: docker.APIClient, filters: dict[str, str]) -> None:
    """Remove the helper containers matching `filters` whose owning process has ended."""
    for container in api.containers(all=True, filters=filters):
        if owner_is_gone(container["Labels"].get(LABEL_OWNER, "")):
            with _failure_logged("helper container", container=container["Id"][:12]):
                remove_container(api, container["Id"])
                log.warning("removed a leftover helper container", container=container["Id"][:12])


@contextmanager
def _failure_logged(what: str, **names: str) -> Iterator[None]:
    """Log an engine failure in the block as a warning naming the leftover, and go on."""
    try:
        yield
    except (docker.errors.APIError, requests.RequestException) as error:
        _cannot_remove(what, engine_failure(error).message, **names)


def _cannot_remove(what: str, error: str, **names: str) -> None:
    log.warning(
        f"cannot remove a leftover {what}; the next volkeep process tries again",
        error=error,
        **names,
    )


def start_removing_leftovers(state_dir: Path) -> threading.Thread:
    """Start removing what dead volkeep processes left behind (helpers, scratch volumes,
    half-restored volumes) in a thread of its own, on a connection of its own; return the
    thread. Nothing it meets is raised: it is logged."""

    def remove() -> None:
        try:
            api = connect()
            remove_leftovers(api)
            remove_half_restored(api, state_dir)
        except DockerUnavailable as error:
            _cannot_remove("of dead volkeep processes", str(error))
        except (docker.errors.APIError, requests.RequestException) as error:
            _cannot_remove("of dead volkeep processes", engine_failure(error).message)

    # A daemon thread: a command interrupted (Ctrl-C, SIGTERM) does not wait for it.
    thread = threading.Thread(target=remove, name="volkeep-leftovers", daemon=True)
    thread.start()
    return thread


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
    """Remove the volumes dead volkeep processes created as restore targets and never
    finished."""
    directory = state_dir / RESTORING
    if directory.is_dir():
        for marker in directory.iterdir():
            remove_half_restored_volume(api, state_dir, marker.name)


def half_restored_by(state_dir: Path, volume: str) -> str | None:
    """Given a volume, return the dead process that was restoring into it, or None if no
    dead process was."""
    try:
        owner = (state_dir / RESTORING / volume).read_text().strip()
    except FileNotFoundError:
        return None
    return owner if owner_is_gone(owner) else None


def remove_half_restored_volume(api: docker.APIClient, state_dir: Path, volume: str) -> None:
    """Remove the volume if a dead volkeep process created it as a restore target and never
    finished (its marker names a dead owner, the volume's label the same); then its marker.
    One removal of a volume at a time in this process (the start-up thread and an operation
    taking the volume may meet here)."""
    with _removing(volume):
        owner = half_restored_by(state_dir, volume)
        if owner is None:
            return
        try:
            labels = api.inspect_volume(volume).get("Labels") or {}
            if labels.get(LABEL_RESTORED_BY) == owner:
                # the dead process's helpers may still mount it: they go first, whatever the
                # background removal of leftovers has reached
                _remove_dead_helpers(api, {"label": LABEL_ROLE, "volume": volume})
                remove_volume(api, volume)
                log.warning("removed a half-restored volume", target=volume)
        except docker.errors.NotFound:
            pass
        except (docker.errors.APIError, requests.RequestException) as error:
            _cannot_remove("half-restored volume", engine_failure(error).message, target=volume)
            return  # its marker stays, for the next volkeep process
        (state_dir / RESTORING / volume).unlink(missing_ok=True)


_removals: dict[str, threading.Lock] = {}
_removals_lock = threading.Lock()


@contextmanager
def _removing(volume: str) -> Iterator[None]:
    with _removals_lock:
        lock = _removals.setdefault(volume, threading.Lock())
    with lock:
        yield
