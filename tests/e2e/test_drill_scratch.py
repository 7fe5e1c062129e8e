"""Where a drill restores (docs/drills.md, "The scratch volume"): in the Docker host's memory
when the archive fits the bound, on disk otherwise or when the policy says `disk`; a
restore that runs out of memory starts again on disk. The real engine, real volumes,
volkeep as a real process; the scratch volume in memory still proves every byte."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import docker
import pytest

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support.tree import build_fidelity_tree

pytestmark = pytest.mark.e2e


def backed_up(
    api: docker.APIClient, volumes, workspace: Workspace, drill: dict[str, object] | None = None
) -> tuple[str, str]:
    """Back up the fidelity tree deduplicated, with the policy's `drill` section; return the
    volume and the archive id."""
    volume = volumes("app_data")
    build_fidelity_tree(mountpoint(api, volume))
    time.sleep(1.1)  # past the tree's second: no file is racy
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup", "drill": drill or {}}})
    result = workspace.run("backup", "app")
    assert result.returncode == 0, result.stderr
    archive_id = json.loads(workspace.run("list", "app", "--json").stdout)[0]["id"]
    return volume, archive_id


def drill(workspace: Workspace, *wrapper: str) -> subprocess.CompletedProcess[str]:
    """Drill the policy, through the test-support module and arguments `wrapper` if given."""
    command = workspace.command("drill", "app")
    if wrapper:
        command[1:3] = ["-m", *wrapper]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def log_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def scratches(stderr: str) -> list[str]:
    """Return where each restore the drill logged went: "memory" or "disk"."""
    return [line["scratch"] for line in log_lines(stderr) if line["event"] == "restored"]


def verdict(workspace: Workspace, volume: str, archive_id: str) -> dict[str, Any]:
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.drill.json"
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def leftovers(api: docker.APIClient, volume: str) -> list[str]:
    """Return the helper containers and scratch volumes labelled as working for `volume`."""
    label = {"label": f"volkeep.volume={volume}"}
    containers = [c["Names"][0] for c in api.containers(all=True, filters=label)]
    return containers + [v["Name"] for v in api.volumes(filters=label).get("Volumes") or []]


def test_a_small_archive_drills_in_memory_and_a_byte_changed_there_fails_the_drill(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id = backed_up(api, volumes, workspace)

    clean = drill(workspace)
    assert clean.returncode == 0, clean.stderr
    assert scratches(clean.stderr) == ["memory"]
    assert verdict(workspace, volume, archive_id)["passed"] is True

    edited = drill(workspace, "tests.support.scratch_edit", "big.bin")
    assert edited.returncode == 1, edited.stderr
    assert scratches(edited.stderr) == ["memory"]
    record = verdict(workspace, volume, archive_id)
    assert (record["passed"], record["differences"]) == (False, ["/big.bin content"])
    assert leftovers(api, volume) == []


def test_drill_scratch_disk_drills_a_small_archive_on_disk(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id = backed_up(api, volumes, workspace, {"scratch": "disk"})

    result = drill(workspace)

    assert result.returncode == 0, result.stderr
    assert scratches(result.stderr) == ["disk"]
    assert verdict(workspace, volume, archive_id)["passed"] is True
    assert leftovers(api, volume) == []


def test_an_archive_over_the_memory_bound_drills_on_disk(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id = backed_up(api, volumes, workspace)

    # a host of 1 MiB: a quarter of it is far less than the fidelity tree takes in memory
    result = drill(workspace, "tests.support.drill_memory", "host", str(1 << 20))

    assert result.returncode == 0, result.stderr
    assert scratches(result.stderr) == ["disk"]
    assert verdict(workspace, volume, archive_id)["passed"] is True


@pytest.mark.parametrize(
    ("failure", "argument"),
    [
        ("tmpfs", str(64 << 10)),  # 64 KiB of tmpfs: big.bin alone is larger
        ("unmountable", "0"),  # the engine cannot mount the tmpfs
    ],
)
def test_a_memory_scratch_that_fails_the_restore_drills_again_on_disk_and_passes(
    api: docker.APIClient, volumes, workspace: Workspace, failure: str, argument: str
) -> None:
    volume, archive_id = backed_up(api, volumes, workspace, {"scratch": "memory"})

    result = drill(workspace, "tests.support.drill_memory", failure, argument)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in log_lines(result.stderr) if line["level"] == "warning"]
    assert [line["event"] for line in warnings] == [
        "the restore into memory failed; drilling again on disk"
    ]
    assert scratches(result.stderr) == ["disk"]
    assert verdict(workspace, volume, archive_id)["passed"] is True
    assert leftovers(api, volume) == []


def test_a_memory_scratch_emptied_mid_drill_is_a_drill_not_run_and_the_verdict_stands(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume, archive_id = backed_up(api, volumes, workspace)
    assert drill(workspace).returncode == 0
    passed = verdict(workspace, volume, archive_id)

    # the helper holding the scratch volume ends after the restore: the tmpfs is unmounted
    result = drill(workspace, "tests.support.drill_memory", "unhold", "0")

    assert result.returncode == 1, result.stderr
    assert scratches(result.stderr) == ["memory"]
    last = result.stderr.strip().splitlines()[-1]
    assert "drill not run" in last and "what was restored into it is gone" in last, last
    assert verdict(workspace, volume, archive_id) == passed
    assert leftovers(api, volume) == []


@pytest.mark.parametrize("scratch", ["auto", "disk", "memory"])
def test_validate_accepts_each_drill_scratch(workspace: Workspace, scratch: str) -> None:
    workspace.write_config({"app": {"volumes": ["data"], "drill": {"scratch": scratch}}})

    result = workspace.run("validate")

    assert result.returncode == 0, result.stderr


def test_validate_refuses_an_unknown_drill_scratch_naming_the_key(workspace: Workspace) -> None:
    workspace.write_config({"app": {"volumes": ["data"], "drill": {"scratch": "ram"}}})

    result = workspace.run("validate")

    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "drill.scratch" in last and "'ram'" in last and "auto, disk, memory" in last, last
    assert "Traceback" not in result.stderr
