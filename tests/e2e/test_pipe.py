"""A volume's tar goes from the helper to volkeep through a pipe in the state dir, and
through dockerd's attach socket when the engine cannot reach that pipe."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from daemon.engine.helpers import Mount, helper_container
from daemon.engine.pipe import PIPE_TARGET, Pipe
from tests.e2e.conftest import ROOT, assert_restores_whole, mountpoint
from tests.support.tree import build_fidelity_tree

FALLBACK = "the helper cannot stream through a pipe: streaming through dockerd"


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == name]


def test_backup_and_drill_stream_through_the_pipe_and_leave_none_behind(api, volumes, workspace):
    source = volumes("piped")
    build_fidelity_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})

    backup = workspace.run("--log-level", "debug", "backup", "app")
    assert backup.returncode == 0, backup.stderr
    drill = workspace.run("--log-level", "debug", "drill", "app", "--volume", source)
    assert drill.returncode == 0, drill.stderr

    streams = events(backup.stderr, "helper tar") + events(drill.stderr, "helper tar")
    assert [(line["volume"] == source, line["stream"]) for line in streams] == [
        (True, "pipe"),  # the backup
        (False, "pipe"),  # the drill's read-back of its scratch volume
    ]
    assert FALLBACK not in backup.stderr + drill.stderr
    assert list((workspace.state_dir / "pipes").iterdir()) == []
    assert_restores_whole(api, workspace, source)


def test_a_relative_state_dir_still_streams_through_the_pipe(api, volumes, workspace):
    source = volumes("relative")
    (mountpoint(api, source) / "data").write_bytes(b"kept" * 1000)
    workspace.write_config({"app": {"volumes": [source]}})
    command = workspace.command("--log-level", "debug", "backup", "app")
    command[command.index("--state-dir") + 1] = "state"  # relative to the working directory
    backup = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=workspace.root
    )
    assert backup.returncode == 0, backup.stderr
    assert [line["stream"] for line in events(backup.stderr, "helper tar")] == ["pipe"]
    assert_restores_whole(api, workspace, source)


def test_a_state_dir_the_engine_cannot_see_streams_through_dockerd(api, volumes, workspace):
    """volkeep in a mount namespace of its own, its state dir a tmpfs there: the engine
    cannot bind the pipe, and the backup goes through the attach socket, whole."""
    source = volumes("unshared")
    build_fidelity_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})
    workspace.state_dir.mkdir()
    command = workspace.command("--log-level", "debug", "backup", "app")
    mount_then_run = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    backup = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_then_run,
         str(workspace.state_dir), *command],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    assert [line["event"] for line in events(backup.stderr, FALLBACK)] == [FALLBACK]
    assert "bind source path does not exist" in events(backup.stderr, FALLBACK)[0]["why"]
    assert [line["stream"] for line in events(backup.stderr, "helper tar")] == ["pipe", "attach"]
    assert_restores_whole(api, workspace, source)


def test_the_helper_gets_the_pipe_writable_and_nothing_else(api, volumes, helper_image, tmp_path):
    source = volumes("bound")
    with (
        Pipe(tmp_path) as through,
        helper_container(
            api, helper_image, ["true"], [Mount(source, "/src")], pipe=through
        ) as helper,
    ):
        mounts = api.inspect_container(helper)["Mounts"]
    assert sorted((m["Type"], m["Destination"], m["RW"]) for m in mounts) == [
        ("bind", PIPE_TARGET, True),
        ("volume", "/src", False),
    ]
    assert [m["Source"] for m in mounts if m["Type"] == "bind"] == [str(Path(through.path))]
