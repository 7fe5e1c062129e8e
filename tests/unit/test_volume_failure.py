"""One volume's failure is that volume's: engine, OS and history errors raised outside the
stream become one line addressed to the volume, and the next volume still runs."""

from __future__ import annotations

import sqlite3

import docker
import pytest
import requests

from daemon.actions.failures import volume_failure
from daemon.errors import OperationError


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (docker.errors.APIError("boom", explanation="no such container"), "no such container"),
        (requests.ConnectionError("connection aborted"), "connection lost"),
        (PermissionError(13, "Permission denied", "/var/lib/volkeep/locks"), "/var/lib/volkeep"),
        (sqlite3.OperationalError("database is locked"), "run history"),
        (OperationError("helper image missing"), "helper image missing"),
    ],
)
def test_any_failure_of_one_volume_is_collected_and_the_next_volume_runs(raised, message):
    failures: list[OperationError] = []
    done = []
    for volume in ("first", "second"):
        with volume_failure(failures, "backup", "app", volume):
            if volume == "first":
                raise raised
            done.append(volume)

    assert done == ["second"]
    (failure,) = failures
    assert (failure.policy, failure.volume) == ("app", "first")
    assert message in str(failure)
    assert "Error(" not in str(failure)


def test_an_unexpected_bug_is_not_swallowed():
    with pytest.raises(ZeroDivisionError), volume_failure([], "backup", "app", "v"):
        _ = 1 / 0
