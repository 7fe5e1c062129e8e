"""The secrets of `daemon.metrics` and `notify`: read from files and the environment, never
echoed; a metrics address off loopback needs a token or an explicit `public: true`; a
policy file every user can read that holds a notification URL is warned about."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.config.model import Config
from daemon.errors import ConfigError

PING = "https://hc.example/ping/0b1e5ec2-7oken"
SLACK = "json://hooks.example/services/T0KEN"


def write_config(tmp_path: Path, daemon: str = "{}", notify: str = "{}", mode: int = 0o600) -> Path:
    path = tmp_path / "volkeep.yaml"
    path.write_text(
        f"""version: 1
daemon: {daemon}
storage:
  local: {{type: local, path: {tmp_path}}}
policies:
  app:
    volumes: [app_db]
    storage: local
    notify: {notify}
"""
    )
    path.chmod(mode)
    return path


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    return "\n".join(str(problem) for problem in refused.value.problems)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.0.2.10", "metrics.example"])
def test_an_address_others_can_reach_needs_a_token_or_public(tmp_path: Path, host: str) -> None:
    refused = problems(write_config(tmp_path, f'{{metrics: {{listen: "{host}:9318"}}}}'))
    assert f"{tmp_path}/volkeep.yaml:2:" in refused
    assert "daemon.metrics.listen" in refused and "not a loopback address" in refused
    public = load_config(
        write_config(tmp_path, f'{{metrics: {{listen: "{host}:9318", public: true}}}}')
    )
    assert public.daemon.metrics.public and public.daemon.metrics.token is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "[::1]", "localhost"])
def test_a_loopback_address_needs_no_token(tmp_path: Path, host: str) -> None:
    config = load_config(write_config(tmp_path, f'{{metrics: {{listen: "{host}:9318"}}}}'))
    assert config.daemon.metrics.listen is not None and config.daemon.metrics.token is None


def test_the_metrics_token_is_read_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secret_file(tmp_path, "metrics.token", "  t0ken-from-file ")
    from_file = load_config(
        write_config(tmp_path, f'{{metrics: {{listen: "0.0.0.0:9318", token: {{file: {token}}}}}}}')
    )
    assert from_file.daemon.metrics.token == "t0ken-from-file"
    assert "t0ken" not in repr(from_file)
    monkeypatch.setenv("VOLKEEP_METRICS_TOKEN", "t0ken-from-env")
    from_env = load_config(
        write_config(tmp_path, "{metrics: {listen: 9318, token: {env: VOLKEEP_METRICS_TOKEN}}}")
    )
    assert from_env.daemon.metrics.token == "t0ken-from-env"


def test_a_token_written_in_the_text_or_missing_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOLKEEP_NO_SUCH_TOKEN", raising=False)
    inline = problems(write_config(tmp_path, "{metrics: {listen: 9318, token: inl1ne-t0ken}}"))
    assert "daemon.metrics.token" in inline and "{file: PATH}" in inline
    assert "inl1ne-t0ken" not in inline
    missing = problems(
        write_config(tmp_path, f"{{metrics: {{listen: 9318, token: {{file: {tmp_path}/none}}}}}}")
    )
    assert f"cannot read {tmp_path}/none" in missing and "daemon.metrics.token.file" in missing
    unset = problems(
        write_config(tmp_path, "{metrics: {listen: 9318, token: {env: VOLKEEP_NO_SUCH_TOKEN}}}")
    )
    assert "VOLKEEP_NO_SUCH_TOKEN is not set" in unset


def test_notification_urls_are_read_from_files_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOLKEEP_PING_URL", PING + "/")
    slack = secret_file(tmp_path, "slack.url", SLACK)
    urls = f'["ntfy://ntfy.example/t", {{file: {slack}}}]'
    config = load_config(
        write_config(tmp_path, notify=f"{{ping: {{env: VOLKEEP_PING_URL}}, urls: {urls}}}")
    )
    notify = config.policies["app"].notify
    assert notify.ping == PING
    assert notify.urls == ("ntfy://ntfy.example/t", SLACK)
    assert config.warnings == ()


def test_a_url_read_from_a_file_is_checked_without_echoing_it(tmp_path: Path) -> None:
    bad = secret_file(tmp_path, "ping.url", "ftp://hc.example/p1ng-t0ken")
    refused = problems(write_config(tmp_path, notify=f"{{ping: {{file: {bad}}}}}"))
    assert "notify.ping" in refused and "http:// or https://" in refused
    assert "p1ng-t0ken" not in refused


def warnings_of(config: Config) -> list[str]:
    return [str(warning) for warning in config.warnings]


def test_a_policy_file_every_user_reads_that_holds_a_url_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = f'{{ping: "{PING}", urls: ["{SLACK}"]}}'
    readable = load_config(write_config(tmp_path, notify=notify, mode=0o644))
    warned = warnings_of(readable)
    assert [warning.split(": ")[1] for warning in warned] == [
        "policies.app.notify.ping",
        "policies.app.notify.urls[0]",
    ]
    assert all(f"{tmp_path}/volkeep.yaml:9:" in warning for warning in warned)
    assert "every user may read" in warned[0]
    assert PING not in repr(warned) and "T0KEN" not in repr(warned)
    assert warnings_of(load_config(write_config(tmp_path, notify=notify, mode=0o640))) == []
    monkeypatch.setenv("VOLKEEP_PING_URL", PING)
    from_env = write_config(tmp_path, notify="{ping: {env: VOLKEEP_PING_URL}}", mode=0o644)
    assert warnings_of(load_config(from_env)) == []


def test_validate_prints_the_warning_naming_the_file_never_the_url(tmp_path: Path) -> None:
    path = write_config(tmp_path, notify=f'{{ping: "{PING}"}}', mode=0o644)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "--config",
            str(path),
            "--state-dir",
            str(tmp_path / "state"),
            "validate",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    assert f"volkeep: warning: {path}:9:" in result.stderr
    assert PING not in result.stderr + result.stdout
