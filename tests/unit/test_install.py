"""install.sh's choices, run in a sandbox: its steps are sourced with
VOLKEEP_INSTALL_FUNCTIONS_ONLY=1 and pointed at temporary places, never at the system."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _step(step: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Source install.sh's steps and run one of them with `env` added."""
    return subprocess.run(
        ["sh", "-c", f'. "$0"; {step}', str(ROOT / "install.sh")],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "VOLKEEP_INSTALL_FUNCTIONS_ONLY": "1", **env},
    )  # fmt: skip


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs the system's /usr/bin/python3")
def test_install_prefers_the_system_python_to_the_first_on_path() -> None:
    result = _step("choose_python", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(SYSTEM_PYTHON)


@pytest.mark.skipif(
    not Path(sys.executable).resolve().is_relative_to("/root"),
    reason="needs a Python under /root (pyenv's, as on the machine the issue was seen)",
)
def test_install_refuses_a_python_under_root_or_home_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "python3").symlink_to(sys.executable)  # found by another name: resolved

    result = _step("choose_python", VOLKEEP_PYTHON=str(tmp_path / "python3"))

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("install: ") and "ProtectHome=yes" in line and "/root" in line


def test_install_writes_the_example_config_for_root_only_and_never_replaces_one(
    tmp_path: Path,
) -> None:
    etc = tmp_path / "etc-volkeep"

    first = _step("install_config", VOLKEEP_ETC=str(etc))

    assert first.returncode == 0, first.stderr
    config = etc / "volkeep.yaml"
    assert config.read_text() == (ROOT / "config" / "example.yaml").read_text()
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    config.write_text("# the operator's own\n")
    again = _step("install_config", VOLKEEP_ETC=str(etc))
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# the operator's own\n"


def test_install_puts_the_completions_and_the_man_page_where_shells_and_man_look(
    tmp_path: Path,
) -> None:
    volkeep = tmp_path / "volkeep"
    volkeep.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m daemon "$@"\n')
    volkeep.chmod(0o755)
    share = tmp_path / "share"

    result = _step(f'install_reference "{volkeep}"', VOLKEEP_SHARE=str(share))

    assert result.returncode == 0, result.stderr
    bash = share / "bash-completion" / "completions" / "volkeep"
    assert "-F _shtab_volkeep volkeep" in bash.read_text()
    assert (share / "zsh" / "site-functions" / "_volkeep").read_text().startswith("#compdef")
    assert (share / "man" / "man1" / "volkeep.1").read_text().startswith('.TH VOLKEEP "1"')
