"""How the command line fails: one line, the right exit code, never an internal error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "volkeep.yaml"
    config.write_text(
        "version: 1\n"
        f"storage: {{local: {{type: local, path: {tmp_path / 'repo'}}}}}\n"
        "policies:\n"
        "  app: {volumes: [app_db], storage: local}\n"
    )
    return config


def _as_a_user(*command: str) -> subprocess.CompletedProcess[str]:
    """Run the command without root's power to read any file (a user namespace: root there
    is an ordinary user outside), and with no engine."""
    return subprocess.run(
        ["unshare", "--user", "--map-user=1000", *command],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_status_with_a_state_dir_it_may_not_read_says_so_and_shows_the_rest(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.pid").touch(mode=0o000)  # root's, mode 0600 or less

    result = _as_a_user(
        sys.executable, "-m", "daemon", "--config", str(_config(tmp_path)),
        "--state-dir", str(state), "status",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert f"note: the state dir {state} cannot be read" in result.stdout
    assert "app_db" in result.stdout


def test_a_missing_config_names_the_ways_to_give_one(tmp_path: Path) -> None:
    missing = tmp_path / "etc-volkeep"

    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(missing), "status"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"volkeep: {missing}:1:1: no such file or directory")
    assert "--config" in line and "volkeep init --output" in line
