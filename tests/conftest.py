"""The whole suite: how it is spread over pytest-xdist's workers (README, under its test command).

The suite runs on two workers (`-n 2` in pyproject.toml's addopts): most of a test's time
is spent waiting for the Docker engine, SeaweedFS or a volkeep command, not on a core. Each
test module goes to one worker whole, so its module-scoped fixtures (a private engine, a
swarm) start once; the fault suite (tests/faults) goes to one worker whole, in its order,
so that its last test reads the logs of all the others (`after_the_fault_suite`). Tests
that touch the machine's engine name what they create uniquely, and the tests that restart
an engine or form a swarm use private engines of their own, so the two workers do not see
each other's volumes, containers or faults. Each worker has its own directory of volume
locks: unit tests lock volumes of the same few names ("app_db").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from daemon.state.locks import LOCK_DIRECTORY

FAULTS = Path(__file__).parent / "faults"


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None and LOCK_DIRECTORY not in os.environ:
        os.environ[LOCK_DIRECTORY] = tempfile.mkdtemp(prefix=f"volkeep-locks-{worker}-")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path)
        group = "faults" if FAULTS in path.parents else path.stem
        item.add_marker(pytest.mark.xdist_group(group))
