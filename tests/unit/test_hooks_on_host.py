"""Hooks run on the host: real processes, argument lists, exit status, timeouts."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.cli.log import configure_logging
from daemon.config.model import RunHook
from daemon.engine.hooks import after_hooks, redacted, run_before_hooks, run_hook
from daemon.errors import OperationError

NO_ENGINE: Any = None  # host hooks never talk to the engine


def test_arguments_reach_the_command_as_written_never_through_a_shell(tmp_path: Path) -> None:
    target = tmp_path / "a file; rm -rf $HOME"
    run_hook(NO_ENGINE, RunHook(("touch", str(target))), "before hook 1")
    assert [path.name for path in tmp_path.iterdir()] == ["a file; rm -rf $HOME"]


def test_a_failing_command_is_reported_with_its_status_and_last_line() -> None:
    hook = RunHook(("sh", "-c", "echo starting; echo 'disk full' >&2; exit 4"))
    with pytest.raises(OperationError) as failed:
        run_before_hooks(NO_ENGINE, [hook])
    assert failed.value.message == (
        "before hook 1 (run: sh -c …) failed: exit status 4: disk full; "
        "the volume was not backed up"
    )


def test_a_missing_command_is_reported() -> None:
    with pytest.raises(OperationError, match="cannot run 'no-such-command-vk': No such file"):
        run_hook(NO_ENGINE, RunHook(("no-such-command-vk",)), "before hook 1")


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    script = f"sleep 30 & sleep 1 && touch {marker}; wait"
    began = time.monotonic()
    with pytest.raises(OperationError, match=r"timed out after 0\.5s and was killed"):
        run_hook(NO_ENGINE, RunHook(("sh", "-c", script), timeout=0.5), "x")
    assert time.monotonic() - began < 5
    time.sleep(1.5)  # past the moment the killed child would have touched the marker
    assert not marker.exists()
    left = subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True)
    assert left.returncode == 1, left.stdout


def test_after_hooks_all_run_after_a_failure_and_the_failure_wins(tmp_path: Path) -> None:
    hooks = [RunHook(("false",)), RunHook(("touch", str(tmp_path / "second")))]
    with pytest.raises(RuntimeError, match="the backup broke"), after_hooks(NO_ENGINE, hooks):
        raise RuntimeError("the backup broke")
    assert (tmp_path / "second").exists()


def test_failing_after_hooks_fail_a_successful_block() -> None:
    hooks = [RunHook(("true",)), RunHook(("false",))]
    with pytest.raises(OperationError) as failed, after_hooks(NO_ENGINE, hooks):
        pass
    assert failed.value.message == (
        "the backup is done, but after hook 2 (run: false): exit status 1"
    )


@pytest.fixture
def json_log() -> Iterator[None]:
    """volkeep's own logging, as in the journal, on the captured stderr."""
    configure_logging("json")
    yield
    structlog.reset_defaults()


def test_a_secret_argument_of_a_hook_never_reaches_the_log(
    json_log: None, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "echo dumping; exit 3"
    hook = RunHook(("sh", "-c", script, "sh", "-pSECRET-1", "--password=SECRET-2", "SECRET-3"))
    with pytest.raises(OperationError) as failed:
        run_before_hooks(NO_ENGINE, [hook])
    structlog.get_logger().error("backup failed", error=failed.value.message)  # as actions do
    logged = capsys.readouterr().err
    assert "SECRET" not in logged
    lines = [json.loads(line) for line in logged.splitlines()]
    started = next(line for line in lines if line["event"] == "hook started")
    assert started["command"] == "run: sh -c … … … --password=… …"
    assert [line["line"] for line in lines if line["event"] == "hook output"] == ["dumping"]
    assert failed.value.message.startswith("before hook 1 (run: sh -c … … … --password=… …)")


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (("sync",), "sync"),
        (("pg_dump", "-U", "app", "-Fc", "shop"), "pg_dump -U … … …"),
        (("mysqldump", "-pSECRET", "--single-transaction"), "mysqldump … --single-transaction"),
        (("curl", "--header=Authorization: x", "--", "url"), "curl --header=… -- …"),
        (("/opt/backup tool", "-v"), "'/opt/backup tool' -v"),
    ],
)
def test_a_logged_command_keeps_the_program_and_bare_flags_only(
    command: tuple[str, ...], shown: str
) -> None:
    assert redacted(command) == shown
