"""Docker volumes: selection by policy, inspection, creation and removal."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import docker

from daemon.config.model import VolumeSelector
from daemon.engine.helpers import Mount, run_helper
from daemon.errors import OperationError


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


def create_volume(api: docker.APIClient, name: str, labels: dict[str, str] | None = None) -> None:
    api.create_volume(name, labels=labels or {})


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
