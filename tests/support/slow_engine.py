"""volkeep with a slow engine: `python -m tests.support.slow_engine SECONDS ARGS...` runs
`volkeep ARGS` with every volume removal answered SECONDS late, as an engine deleting a
scratch volume of a million files answers (test-only; volkeep's own code knows nothing of
it)."""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import docker

from daemon.cli.main import main


def slow_removals(seconds: float) -> None:
    original = docker.APIClient.remove_volume

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return original(*args, **kwargs)

    docker.APIClient.remove_volume = wrapper  # type: ignore[method-assign]


if __name__ == "__main__":
    slow_removals(float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
