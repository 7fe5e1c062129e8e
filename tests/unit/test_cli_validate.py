"""`volkeep validate` on every bad config: exit 2, one line per problem naming file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pyrage import x25519

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


def _validate_encrypted(tmp_path: Path, age: str) -> subprocess.CompletedProcess[str]:
    """Run `validate` (no engine) on a policy that encrypts with the given `age:` block and
    drills weekly."""
    config = tmp_path / "volkeep.yaml"
    config.write_text(
        "version: 1\n"
        f"storage: {{local: {{type: local, path: {tmp_path / 'repo'}}}}}\n"
        "policies:\n"
        "  app:\n"
        "    volumes: [app_db]\n"
        "    storage: local\n"
        "    drill: {schedule: '30 4 * * 0'}\n"
        "    encryption:\n"
        f"      age: {age}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "--state-dir",
         str(tmp_path / "state"), "validate"],
        capture_output=True, text=True, env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )  # fmt: skip


def _key(tmp_path: Path, name: str) -> tuple[str, Path]:
    """Return a new age key's public key and the file of its secret key (mode 0600)."""
    identity = x25519.Identity.generate()
    path = tmp_path / name
    path.write_text(f"# created: today\n{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public()), path


IDENTITY_LINE = 9  # the line of `age:` in _validate_encrypted's file, where identity_file is


def test_validate_accepts_the_identity_of_a_recipient(tmp_path: Path) -> None:
    public, identity = _key(tmp_path, "key.txt")

    result = _validate_encrypted(tmp_path, f"{{recipients: [{public}], identity_file: {identity}}}")

    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_validate_refuses_an_identity_that_opens_none_of_the_recipients(tmp_path: Path) -> None:
    public, _ = _key(tmp_path, "right.txt")
    _, wrong = _key(tmp_path, "wrong.txt")
    secret = wrong.read_text().split()[-1]

    result = _validate_encrypted(tmp_path, f"{{recipients: [{public}], identity_file: {wrong}}}")

    assert result.returncode == 2
    assert f"volkeep.yaml:{IDENTITY_LINE}:" in result.stderr
    assert "identity_file" in result.stderr and public in result.stderr
    assert secret not in result.stderr + result.stdout


def test_validate_refuses_a_missing_identity_file(tmp_path: Path) -> None:
    public, _ = _key(tmp_path, "key.txt")

    result = _validate_encrypted(
        tmp_path, f"{{recipients: [{public}], identity_file: {tmp_path / 'gone.txt'}}}"
    )

    assert result.returncode == 2
    assert f"volkeep.yaml:{IDENTITY_LINE}:" in result.stderr
    assert "gone.txt: no such file or directory" in result.stderr


def test_validate_refuses_a_public_key_given_as_the_identity(tmp_path: Path) -> None:
    public, _ = _key(tmp_path, "key.txt")
    given = tmp_path / "public.txt"
    given.write_text(f"{public}\n")

    result = _validate_encrypted(tmp_path, f"{{recipients: [{public}], identity_file: {given}}}")

    assert result.returncode == 2
    assert f"volkeep.yaml:{IDENTITY_LINE}:" in result.stderr
    assert "public.txt:1: a public key (a recipient), not an identity" in result.stderr


def test_validate_refuses_a_drill_of_encrypted_archives_without_identity_file(
    tmp_path: Path,
) -> None:
    public, _ = _key(tmp_path, "key.txt")

    result = _validate_encrypted(tmp_path, f"{{recipients: [{public}]}}")

    assert result.returncode == 2
    assert "drills of encrypted archives need identity_file" in result.stderr
