"""`volkeep validate` on every bad config: exit 2, one line per problem naming file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli.main import main
from tests.unit.test_config import BAD_CONFIGS


@pytest.mark.parametrize(("files", "at", "says"), BAD_CONFIGS)
def test_validate_exits_2_and_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], at: str, says: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    code = main(["--config", str(tmp_path), "--state-dir", str(tmp_path / "state"), "validate"])

    error = capsys.readouterr().err
    assert code == 2
    file, line = at.split()[0].split(":")
    assert f"{tmp_path / file}:{line}:" in error, error
    assert all(row.startswith("volkeep: ") for row in error.splitlines())
    assert "Traceback" not in error


def test_a_valid_config_is_summarised_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "volkeep.yaml"
    config.write_text(
        "version: 1\n"
        f"storage: {{local: {{type: local, path: {tmp_path / 'repo'}}}}}\n"
        "policies:\n"
        "  app: {volumes: [app_db], storage: local, schedule: '0 3 * * *'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "--state-dir",
         str(tmp_path / "state"), "validate"],
        capture_output=True, text=True, env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "config OK: 1 policy" in result.stdout
    assert "'0 3 * * *', next" in result.stdout
