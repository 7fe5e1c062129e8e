"""The systemd unit and tmpfiles entry, checked by systemd's own tools."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_COMMAND = "/opt/volkeep/bin/volkeep"


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package: systemd)")
    return path


def test_the_unit_verifies_with_volkeep_where_it_is_installed(tmp_path: Path) -> None:
    analyze = systemd_tool("systemd-analyze")
    text = (SYSTEMD / "volkeep.service").read_text()
    assert f"ExecStart={INSTALLED_COMMAND} " in text
    unit = tmp_path / "volkeep.service"
    # verify checks that the command exists: point it at this checkout's volkeep
    unit.write_text(text.replace(INSTALLED_COMMAND, f"{sys.executable} -m daemon"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "volkeep.service" not in result.stderr, result.stderr


def test_the_tmpfiles_entry_creates_a_private_backup_dir(tmp_path: Path) -> None:
    tmpfiles = systemd_tool("systemd-tmpfiles")
    entry = SYSTEMD / "tmpfiles.d" / "volkeep.conf"
    result = subprocess.run(
        [tmpfiles, "--create", f"--root={tmp_path}", str(entry)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    backups = tmp_path / "var" / "backups" / "volkeep"
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert (tmp_path / "etc" / "volkeep").is_dir()


def test_the_unit_bounds_the_tasks_volkeep_may_start() -> None:
    settings = [
        line.partition("=")[2]
        for line in (SYSTEMD / "volkeep.service").read_text().splitlines()
        if line.startswith("TasksMax=")
    ]
    assert len(settings) == 1 and settings[0].isdigit()
    assert 128 <= int(settings[0]) <= 1024  # room for the job threads, and a bound
