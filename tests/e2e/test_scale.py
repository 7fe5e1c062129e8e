"""A volume of a hundred thousand small files, as an operator with a big cache would keep:
it backs up, restores and drills with every object compared, each command in bounded
memory, its manifest at no more than 40 bytes an object (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support import manifests
from tests.support.tree import differences, snapshot

FILES = 100_000
PER_DIRECTORY = 1000
OBJECTS = FILES + FILES // PER_DIRECTORY + 1  # the files, their directories, the root
RSS_LIMIT_MIB = 150


# A small launcher takes the command's own peak RSS: a child forked from this (large)
# process would count this process's pages until it execs.
LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(workspace: Workspace, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run volkeep; return its outcome and its own peak RSS in MiB."""
    peak = workspace.root / "peak_rss"
    command = [sys.executable, "-c", LAUNCHER, str(peak), *workspace.command(*args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    return result, int(peak.read_text()) >> 10


def logged(result: subprocess.CompletedProcess[str], event: str) -> dict[str, object]:
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return next(line for line in lines if line.get("event") == event)


def test_a_hundred_thousand_small_files_round_trip_and_drill_object_by_object(
    api, volumes, workspace
):
    source = volumes("many")
    root = mountpoint(api, source)
    for index in range(FILES):
        directory = root / f"d{index // PER_DIRECTORY:03}"
        if index % PER_DIRECTORY == 0:
            directory.mkdir()
        (directory / f"f{index:06}").write_bytes(f"small file {index}\n".encode())
    workspace.write_config({"app": {"volumes": [source]}})
    peaks = {}

    backup, peaks["backup"] = run_measured(workspace, "backup", "app")
    assert backup.returncode == 0, backup.stderr
    [manifest_path] = workspace.archive_dir("app", source).glob("*.manifest.json")
    assert manifests.summary(manifest_path)["entries"]["count"] == OBJECTS
    assert manifest_path.stat().st_size / OBJECTS <= 40

    target = source + "_restored"
    try:
        restore, peaks["restore"] = run_measured(
            workspace, "restore", "app", "--volume", source, "--to", target
        )
        assert restore.returncode == 0, restore.stderr
        assert differences(snapshot(root), snapshot(mountpoint(api, target))) == []
    finally:
        api.remove_volume(target, force=True)

    drill, peaks["drill"] = run_measured(workspace, "drill", "app")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert logged(drill, "compared with the manifest")["objects"] == OBJECTS
    for command in ("list", "status"):
        listed, peaks[command] = run_measured(workspace, command)
        assert listed.returncode == 0, listed.stderr
    assert max(peaks.values()) < RSS_LIMIT_MIB, peaks
    spooled = [path for path in workspace.state_dir.rglob("tmp*")]
    assert spooled == []  # the entries waited in unnamed files

    # Every object is compared: an entry changed deep in the manifest is found (its
    # content is compared through the recipe's chunk ids: tests/e2e/test_dedup_digests.py)
    changed = "d073/f073456"
    manifests.rewrite_entries(
        manifest_path,
        lambda entry: replace(entry, mode=0o640) if entry.path == changed else entry,
    )
    drill = workspace.run("drill", "app")
    assert drill.returncode == 1
    assert drill.stdout.rstrip().endswith(f"FAILED: 1 object differs: /{changed} mode 0640≠0644")
