"""volkeep on a Docker host with less memory, or whose drills' memory scratch volumes are too
small: `python -m tests.support.drill_memory host BYTES ARGS...` runs `volkeep ARGS` with the
engine reporting BYTES of memory (`docker info`'s MemTotal); `... tmpfs BYTES ARGS...` with
every scratch volume in memory limited to BYTES of content, far less than its archive needs
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


if __name__ == "__main__":
    {"host": report_host_memory, "tmpfs": limit_memory_scratch}[sys.argv[1]](int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
