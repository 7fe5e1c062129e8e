"""How the `volkeep` command ends: without the interpreter's teardown (`run`), yet with
all its output written, its exit handlers run and its exit code kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _volkeep(*arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *arguments],
        capture_output=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_all_the_output_reaches_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    # more than a pipe's write buffer holds at once: stdout is flushed before the end
    assert main(["completion", "bash"]) == 0
    expected = capsys.readouterr().out.encode()
    assert len(expected) > 8192
    finished = _volkeep("completion", "bash")
    assert finished.returncode == 0
    assert finished.stdout == expected


def test_a_failure_keeps_its_exit_code_and_its_line(tmp_path: Path) -> None:
    finished = _volkeep("--config", str(tmp_path / "missing.yaml"), "validate")
    assert finished.returncode == 2
    lines = finished.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"volkeep: {tmp_path / 'missing.yaml'}")


def test_the_exit_handlers_run(tmp_path: Path) -> None:
    # logging's handlers flush at exit; so must any handler a library registers
    marker = tmp_path / "ran"
    program = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "sys.argv = ['volkeep', 'completion', 'bash']\n"
        "from daemon.cli.main import run\n"
        "run()\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, cwd=ROOT, timeout=60
    )
    assert finished.returncode == 0
    assert marker.exists()


def test_a_profiler_still_writes_its_profile(tmp_path: Path) -> None:
    profile = tmp_path / "volkeep.prof"
    profiling = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "daemon"]
    finished = subprocess.run(
        [*profiling, "completion", "bash"], capture_output=True, cwd=ROOT, timeout=60
    )
    assert finished.returncode == 0
    assert profile.stat().st_size > 0
