"""Docker volumes: selection by policy, inspection, creation and removal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import docker

from daemon.config.model import VolumeSelector
from daemon.engine.helpers import Mount, helper_container, run_helper
from daemon.errors import EngineFailure, OperationError
from daemon.rules.scratch import MemoryScratch

HELD_AT = "/held"


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    driver: str = "local"
    labels: dict[str, str] = field(default_factory=dict)


def _info(raw: dict[str, object]) -> VolumeInfo:
    labels = raw.get("Labels") or {}
    return VolumeInfo(str(raw["Name"]), str(raw.get("Driver", "local")), dict(labels))  # type: ignore[call-overload]


def all_volumes(api: docker.APIClient) -> list[VolumeInfo]:
    return sorted((_info(raw) for raw in api.volumes().get("Volumes") or []), key=lambda v: v.name)


def select_volumes(api: docker.APIClient, selector: VolumeSelector) -> list[VolumeInfo]:
    """Given a policy's selector, return the volumes it covers now (names as listed, or the
    matching volumes in name order). Named volumes that do not exist are left out."""
    if selector.names:
        existing = {volume.name: volume for volume in all_volumes(api)}
        return [existing[name] for name in selector.names if name in existing]
    selected = []
    for volume in all_volumes(api):
        if selector.name_glob is not None and not fnmatchcase(volume.name, selector.name_glob):
            continue
        if selector.label_key is not None:
            if selector.label_key not in volume.labels:
                continue
            if (
                selector.label_value is not None
                and volume.labels[selector.label_key] != selector.label_value
            ):
                continue
        selected.append(volume)
    return selected


def inspect_volume(api: docker.APIClient, name: str) -> VolumeInfo | None:
    try:
        return _info(api.inspect_volume(name))
    except docker.errors.NotFound:
        return None


def require_volume(api: docker.APIClient, name: str, policy: str) -> VolumeInfo:
    volume = inspect_volume(api, name)
    if volume is None:
        raise OperationError("no such Docker volume", policy=policy, volume=name)
    return volume


def create_volume(
    api: docker.APIClient,
    name: str,
    labels: dict[str, str] | None = None,
    in_memory: MemoryScratch | None = None,
) -> None:
    """Create a volume with the local driver: on disk, or `in_memory`, a tmpfs with those
    limits, which holds its files only while a container mounts it (see `held_mounted`)."""
    if in_memory is None:
        api.create_volume(name, labels=labels or {})
        return
    limits = f"size={int(in_memory.size)},nr_inodes={int(in_memory.inodes)}"
    options = {"type": "tmpfs", "device": "tmpfs", "o": limits}
    api.create_volume(name, driver="local", driver_opts=options, labels=labels or {})


@contextmanager
def held_mounted(
    api: docker.APIClient, image: str, volume: str, owner: str
) -> Iterator[Callable[[], None]]:
    """Keep the volume mounted while the block runs, by a helper that mounts it read-only and
    sleeps: the local driver mounts a volume with options (a tmpfs) when the first container
    mounts it and unmounts it, its files gone, when the last one ends. Yield a check that
    raises EngineFailure if the helper has ended since (the volume was emptied between the
    containers that wrote and read it). The helper is removed on every path out, the
    volume with it if it is a tmpfs."""
    with helper_container(
        api, image, ["sleep", "2147483647"], [Mount(volume, HELD_AT)], capabilities=(), owner=owner
    ) as holder:
        api.start(holder)

        def still_held() -> None:
            if not api.inspect_container(holder)["State"]["Running"]:
                raise EngineFailure(
                    f"the helper holding the scratch volume {volume} in memory ended during the "
                    "drill: what was restored into it is gone"
                )

        yield still_held


def host_memory(api: docker.APIClient) -> int | None:
    """Return the Docker host's memory in bytes (`docker info`'s MemTotal), None if the
    engine does not say."""
    total = api.info().get("MemTotal")
    return total if isinstance(total, int) and total > 0 else None


def remove_volume(api: docker.APIClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_volume(name, force=True)


def volume_usage(api: docker.APIClient, image: str, volume: str) -> int | None:
    """Return roughly how many bytes the volume's files take (a helper's `du`), the size a
    first backup's progress shows; None if it cannot be told."""
    code, output, _ = run_helper(api, image, ["du", "-s", "-k", "/src"], [Mount(volume, "/src")])
    fields = output.split()
    if code != 0 or not fields or not fields[0].isdigit():
        return None
    return int(fields[0]) * 1024
