"""Scheduled runs that have nothing to work on, or cannot see their storage: each is a failed
run with one line that says what to fix, never a success of "0 volumes" (issue 19, 10-11).

The daemon's runner runs in this process against the real Docker engine, so that the run's
announcement (`RunFinished`: what the history, the ping and the notifications hear) and its
log lines can be read as data.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from daemon import events
from daemon.config import load_config
from daemon.events import RunFinished
from daemon.service.runner import ParallelLimit, Runner


@pytest.fixture
def finished() -> Iterator[list[RunFinished]]:
    runs: list[RunFinished] = []
    unsubscribe = events.subscribe(
        lambda event: isinstance(event, RunFinished) and runs.append(event)
    )
    yield runs
    unsubscribe()


def run_once(
    tmp_path: Path, kind: str, policy: dict[str, Any], storage: dict[str, Any]
) -> list[dict[str, Any]]:
    """Write a config of one policy "app", run one scheduled `kind` of it; return the log."""
    config_file = tmp_path / "volkeep.yaml"
    document = {
        "version": 1,
        "storage": {"store": storage},
        "policies": {"app": {"storage": "store", **policy}},
    }
    config_file.write_text(yaml.safe_dump(document))
    config = load_config(config_file)
    runner = Runner(lambda: config, tmp_path / "state", ParallelLimit(1), threading.Event())
    with capture_logs() as logged:
        runner.run(kind, "app")
    return logged


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_scheduled_backup_of_a_policy_whose_match_selects_nothing_fails_saying_what_to_fix(
    tmp_path, finished, api
):
    label = f"volkeep.test={uuid.uuid4().hex}"  # no volume on this engine carries it
    local = {"type": "local", "path": str(tmp_path / "repo")}

    logged = run_once(tmp_path, "backup", {"match": {"label": label}}, local)

    [run] = finished
    assert run.volumes == ()
    assert list(run.failures) == ["*"]
    assert (
        f"matches {{label: {label}}}" in run.failures["*"]
        and "selects no volume" in run.failures["*"]
    )
    errors = [line for line in logged if line["log_level"] == "error"]
    assert [line["event"] for line in errors] == ["scheduled backup finished with failures"]


def test_a_scheduled_drill_with_nothing_to_drill_fails_saying_what_to_fix(tmp_path, finished, api):
    local = {"type": "local", "path": str(tmp_path / "repo")}

    run_once(tmp_path, "drill", {"volumes": ["app_db"], "drill": {"schedule": "@weekly"}}, local)

    [run] = finished
    assert list(run.failures) == ["*"]
    assert "nothing to drill" in run.failures["*"] and "'store'" in run.failures["*"]


def test_a_scheduled_drill_with_its_storage_down_fails_in_one_line_naming_the_storage(
    tmp_path, finished, api
):
    down = {
        "type": "s3",
        "bucket": "volkeep",
        "endpoint": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "path_style": True,
        "region": "us-east-1",
    }
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = volkeep\naws_secret_access_key = unused\n"
    )
    down["credentials_file"] = str(credentials)

    logged = run_once(
        tmp_path, "drill", {"volumes": ["app_db"], "drill": {"schedule": "@weekly"}}, down
    )

    [run] = finished
    assert list(run.failures) == ["*"]
    assert run.failures["*"].startswith("cannot list the archives in storage 'store'")
    assert "Error(" not in run.failures["*"]  # a sentence, not a Python repr
    assert all("internal error" not in line["event"] for line in logged)
    assert all("exc_info" not in line for line in logged)
