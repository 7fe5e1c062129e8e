"""Notifications against a real HTTP server on loopback: the Healthchecks ping sequence,
Apprise's json:// URLs, which events say what, and that a URL never reaches a log line or a
config error."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.config.model import Config
from daemon.errors import ConfigError, OperationError
from daemon.events import DrillVerdict, RunFinished, RunMissed, RunStarted, VolumeShrank
from daemon.observe.notifications import apprise, healthchecks
from daemon.observe.notifications.base import Notice, Undelivered, redacted
from daemon.observe.notifications.dispatch import Notifications
from daemon.rules.retention import Candidate
from daemon.rules.shrink import Content, shrinks
from daemon.rules.verdict import DrillRecord
from daemon.state.history import History


class Receiver:
    """An HTTP server on loopback that records every request: (path, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append((self.path, self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def apprise_messages(self) -> list[dict[str, Any]]:
        return [json.loads(body) for path, body in self.requests if path.startswith("/apprise")]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config(tmp_path: Path, notify: str) -> Config:
    path = tmp_path / "volkeep.yaml"
    path.write_text(
        f"""
version: 1
storage:
  local: {{type: local, path: {tmp_path}}}
policies:
  app:
    volumes: [app_db]
    storage: local
    notify: {notify}
"""
    )
    return load_config(path)


def notifications(tmp_path: Path, notify: str) -> Notifications:
    loaded = config(tmp_path, notify)
    sender = Notifications(lambda: loaded, History(tmp_path / "state"), "testhost")
    sender.start()
    return sender


def failed_drill(volume: str) -> DrillVerdict:
    record = DrillRecord(
        "app", volume, "20261128T030000Z", False, datetime.now(UTC), 1.0, 0.0, 0, reason="bad"
    )
    return DrillVerdict(record, "local")


def test_the_ping_url_hears_start_then_success_or_fail_with_the_error_lines(
    tmp_path: Path, receiver: Receiver
) -> None:
    sender = notifications(tmp_path, f"{{ping: {receiver.url}/ping/uuid}}")
    sender(RunStarted("backup", "app"))
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender(RunStarted("backup", "app"))
    sender(RunFinished("backup", "app", ("app_db",), {"app_db": "no such volume"}))
    sender(RunStarted("drill", "app"))  # drills are no backups: no ping
    sender(RunFinished("drill", "app", ("app_db",), {}))
    sender.close()
    assert receiver.paths() == [
        "/ping/uuid/start",
        "/ping/uuid",
        "/ping/uuid/start",
        "/ping/uuid/fail",
    ]
    assert receiver.requests[-1][1] == b"app_db: no such volume"


def test_apprise_hears_a_failure_then_the_recovery_and_not_a_second_success(
    tmp_path: Path, receiver: Receiver
) -> None:
    sender = notifications(tmp_path, f'{{urls: ["json://{receiver.url[7:]}/apprise"]}}')
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender(RunFinished("backup", "app", ("app_db",), {"app_db": "engine down"}))
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender.close()
    failure, recovered = receiver.apprise_messages()
    assert failure["type"] == "failure" and "backup of app failed" in failure["title"]
    assert failure["message"] == "app_db: engine down"
    assert recovered["type"] == "success" and "succeeds again" in recovered["title"]


def test_a_failed_drill_verdict_is_a_drill_failure_not_also_a_failure(
    tmp_path: Path, receiver: Receiver
) -> None:
    sender = notifications(tmp_path, f'{{urls: ["json://{receiver.url[7:]}/apprise"]}}')
    sender(failed_drill("app_db"))
    sender(RunFinished("drill", "app", ("app_db",), {"app_db": "bad"}))
    sender.close()
    [drill_failure] = receiver.apprise_messages()
    assert "found an archive that does not restore" in drill_failure["title"]
    assert drill_failure["message"] == "app_db: archive 20261128T030000Z: bad"


def test_a_missed_run_is_told_once_until_the_job_runs_and_only_the_listed_events_are_sent(
    tmp_path: Path, receiver: Receiver
) -> None:
    url = f"json://{receiver.url[7:]}/apprise"
    sender = notifications(tmp_path, f'{{urls: ["{url}"], events: [missed]}}')
    due = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    for _ in range(3):  # a backup outlasting three ticks of its schedule
        sender(RunMissed("backup", "app", due, "the previous run still ran"))
    sender(RunFinished("backup", "app", ("app_db",), {"app_db": "engine down"}))  # not listed
    sender(RunMissed("backup", "app", due, "the previous run still ran"))
    sender.close()
    messages = receiver.apprise_messages()
    assert [message["type"] for message in messages] == ["warning", "warning"]
    assert "did not start on time" in messages[0]["title"]
    assert "2026-11-28 03:00:00 UTC" in messages[0]["message"]


def test_a_failure_before_a_restart_makes_the_first_success_after_it_a_recovery(
    tmp_path: Path, receiver: Receiver
) -> None:
    with (
        pytest.raises(OperationError),
        History(tmp_path / "state").operation("backup", "app", "app_db"),
    ):
        raise OperationError("disk full")
    sender = notifications(tmp_path, f'{{urls: ["json://{receiver.url[7:]}/apprise"]}}')
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender.close()
    [recovered] = receiver.apprise_messages()
    assert recovered["type"] == "success"


def test_an_interrupted_run_tells_nothing(tmp_path: Path, receiver: Receiver) -> None:
    url = f"json://{receiver.url[7:]}/apprise"
    sender = notifications(tmp_path, f'{{urls: ["{url}"], ping: {receiver.url}/ping}}')
    sender(RunFinished("backup", "app", ("app_db",), {"app_db": "stopped"}, interrupted=True))
    sender.close()
    assert receiver.requests == []


def test_an_unreachable_service_is_a_warning_that_names_no_url(tmp_path: Path) -> None:
    port = closed_port()
    secret = "s3cr3t-token"
    sender = notifications(
        tmp_path,
        f'{{urls: ["json://user:{secret}@127.0.0.1:{port}/{secret}"], '
        f"ping: http://127.0.0.1:{port}/ping/{secret}}}",
    )
    with capture_logs() as logs:
        sender(RunStarted("backup", "app"))
        sender(RunFinished("backup", "app", ("app_db",), {"app_db": "engine down"}))
        sender.close()
    warnings = [line for line in logs if line["event"] == "notification not delivered"]
    assert {(line["setting"], line["notice"]) for line in warnings} == {
        ("notify.ping", "start"),
        ("notify.ping", "failure"),
        ("notify.urls[0]", "failure"),
    }
    assert secret not in repr(logs)
    assert {line["service"] for line in warnings} == {f"http://127.0.0.1:{port}", "json://…"}


def test_each_service_raises_undelivered_without_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}/ping/secret-uuid"
    notice = Notice("failure", "app", "title", "body")
    with pytest.raises(Undelivered) as ping_error:
        healthchecks.send(url, notice)
    with pytest.raises(Undelivered) as apprise_error:
        apprise.send("json" + url[4:], notice)
    assert "secret-uuid" not in str(ping_error.value) + str(apprise_error.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hc.example/ping/0b1e-uuid", "https://hc.example"),
        ("http://user:pw@127.0.0.1:8000/x", "http://127.0.0.1:8000"),
        ("tgram://123456:BOT-TOKEN/chat", "tgram://…"),
        ("ntfy://user:pw@ntfy.example/topic", "ntfy://…"),
    ],
)
def test_a_url_is_named_by_its_scheme_and_at_most_its_host(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_config_errors_about_notify_urls_never_echo_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        config(tmp_path, '{urls: ["nosuch://tok3n@x/y"], ping: ftp://hc/p1ng}')
    with pytest.raises(ConfigError) as repeated:
        config(tmp_path, '{urls: ["json://h/t0ken", "json://h/t0ken"]}')
    problems = [str(problem) for problem in refused.value.problems + repeated.value.problems]
    assert any("urls[0]" in problem and "nosuch://" in problem for problem in problems)
    assert any("urls[1]" in problem and "the same URL as [0]" in problem for problem in problems)
    assert any("notify.ping" in problem for problem in problems)
    assert not any(word in " ".join(problems) for word in ("tok3n", "t0ken", "p1ng"))


def shrank_volume(volume: str) -> VolumeShrank:
    [found] = shrinks(
        [
            Candidate(
                "20261127T030000Z",
                datetime(2026, 11, 27, 3, tzinfo=UTC),
                False,
                Content(1200, 50 << 20),
            ),
            Candidate(
                "20261128T030000Z", datetime(2026, 11, 28, 3, tzinfo=UTC), False, Content(1, 1536)
            ),
        ]
    )
    return VolumeShrank("app", volume, found)


def test_a_volume_that_shrank_is_told_by_default_and_only_where_listed(
    tmp_path: Path, receiver: Receiver
) -> None:
    url = f"json://{receiver.url[7:]}/apprise"
    sender = notifications(tmp_path, f'{{urls: ["{url}"]}}')
    sender(shrank_volume("app_db"))
    sender.close()
    [told] = receiver.apprise_messages()
    assert told["type"] == "warning"
    assert told["title"] == "volkeep on testhost: volume app_db of app lost most of its content"
    assert "objects 1200 -> 1" in told["message"]
    assert "volkeep accept-shrink app --volume app_db" in told["message"]

    sender = notifications(tmp_path, f'{{urls: ["{url}"], events: [failure]}}')
    sender(shrank_volume("app_db"))
    sender.close()
    assert len(receiver.apprise_messages()) == 1


def test_a_job_that_keeps_failing_is_told_once_then_reminded_after_remind_every(
    tmp_path: Path, receiver: Receiver
) -> None:
    loaded = config(tmp_path, f'{{urls: ["json://{receiver.url[7:]}/apprise"], remind_every: 6h}}')
    moment = [datetime(2026, 3, 1, 3, 0, tzinfo=UTC)]
    sender = Notifications(
        lambda: loaded, History(tmp_path / "state"), "testhost", clock=lambda: moment[0]
    )
    sender.start()
    broken = RunFinished("backup", "app", ("app_db",), {"app_db": "engine down"})
    for hours in (0, 1, 2, 5):  # hourly runs that fail: told at the first
        moment[0] = datetime(2026, 3, 1, 3 + hours, 0, tzinfo=UTC)
        sender(broken)
    moment[0] = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)  # 6 h after the first: a reminder
    sender(broken)
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender.close()

    titles = [message["title"] for message in receiver.apprise_messages()]
    assert titles == [
        "volkeep on testhost: the scheduled backup of app failed",
        "volkeep on testhost: the scheduled backup of app still fails",
        "volkeep on testhost: the scheduled backup of app succeeds again",
    ]


def test_a_recovery_of_one_volume_says_one_volume(tmp_path: Path, receiver: Receiver) -> None:
    sender = notifications(tmp_path, f'{{urls: ["json://{receiver.url[7:]}/apprise"]}}')
    sender(RunFinished("backup", "app", ("app_db",), {"app_db": "engine down"}))
    sender(RunFinished("backup", "app", ("app_db",), {}))
    sender.close()
    [_, recovered] = receiver.apprise_messages()
    assert recovered["message"] == "1 volume, no failure, after a failed run."
