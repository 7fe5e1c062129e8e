"""volkeep on a Docker host with less memory, or whose drills' memory scratch volumes fall
short: `python -m tests.support.drill_memory MODE N ARGS...` runs `volkeep ARGS` with

- `host BYTES`: the engine reporting BYTES of memory (`docker info`'s MemTotal);
- `tmpfs BYTES`: every scratch volume in memory limited to BYTES of content, far less than
  its archive needs;
- `unmountable 0`: an engine that cannot mount a tmpfs volume (as a rootless one may not);
- `unhold 0`: the helper holding a scratch volume in memory killed between the restore and
  the read-back, which empties the volume

(test-only; volkeep's own code knows nothing of it)."""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import docker

import daemon.actions.drill
from daemon.cli.main import main
from daemon.rules.scratch import MemoryScratch


def report_host_memory(total: int) -> None:
    original = docker.APIClient.info

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return {**original(*args, **kwargs), "MemTotal": total}

    docker.APIClient.info = wrapper  # type: ignore[method-assign]


def limit_memory_scratch(size: int) -> None:
    original = daemon.actions.drill.memory_scratch

    @functools.wraps(original)
    def wrapper(*args: Any) -> MemoryScratch | None:
        limits = original(*args)
        return None if limits is None else dataclasses.replace(limits, size=size)

    daemon.actions.drill.memory_scratch = wrapper


def unmountable_tmpfs(_: int) -> None:
    original = daemon.actions.drill.create_volume

    @functools.wraps(original)
    def wrapper(api: docker.APIClient, name: str, labels: Any, in_memory: Any = None) -> None:
        if in_memory is None:
            return original(api, name, labels)
        options = {"type": "tmpfs", "device": "tmpfs", "o": "no_such_option"}
        api.create_volume(name, driver="local", driver_opts=options, labels=labels)
        return None

    daemon.actions.drill.create_volume = wrapper  # type: ignore[assignment]


def kill_the_holder(_: int) -> None:
    original = daemon.actions.drill.extract_into

    @functools.wraps(original)
    def wrapper(api: docker.APIClient, archive: Any, image: str, target: str, *rest: Any) -> None:
        original(api, archive, image, target, *rest)
        for container in api.containers(filters={"volume": target}):
            api.kill(container["Id"])
            api.wait(container["Id"])

    daemon.actions.drill.extract_into = wrapper  # type: ignore[assignment]


if __name__ == "__main__":
    modes = {
        "host": report_host_memory,
        "tmpfs": limit_memory_scratch,
        "unmountable": unmountable_tmpfs,
        "unhold": kill_the_holder,
    }
    modes[sys.argv[1]](int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
