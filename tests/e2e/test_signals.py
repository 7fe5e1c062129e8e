"""Signals for the operator (SPEC §3b), as an operator meets them: `volkeep run` serving
Prometheus metrics and a status page on loopback, writing node_exporter's textfile, pinging
a Healthchecks-style URL and sending Apprise notifications to a server the test runs, and
the status page read in a real browser (Debian's headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.state.history import History
from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support.daemon_process import DaemonProcess, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SPEC_GAUGES = {
    "volkeep_last_success_timestamp_seconds",
    "volkeep_drill_passed",
    "volkeep_restore_seconds",
    "volkeep_archives",
    "volkeep_newest_archive_bytes",
    "volkeep_newest_archive_timestamp_seconds",
}


@pytest.fixture
def daemons(workspace: Workspace) -> Iterator[Callable[[], DaemonProcess]]:
    """A factory of `volkeep run` processes on the workspace; all are killed after the test."""
    started: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        log_file = workspace.root / f"daemon-{len(started)}.log"
        started.append(DaemonProcess(workspace.command("run"), log_file, {}, ROOT))
        return started[-1]

    yield start
    for process in started:
        process.kill()


class Receiver:
    """The test's own HTTP server on loopback: a Healthchecks stand-in and an Apprise
    json:// target. Records every request as (path, body)."""

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
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self, prefix: str) -> list[str]:
        return [path for path, _ in self.requests if path.startswith(prefix)]

    def messages(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for at, body in self.requests if at == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def record_last_run(workspace: Workspace, job: str, ago: timedelta) -> None:
    """Pretend the job last ran `ago`: an hourly job then catches up once at start."""
    History(workspace.state_dir).record_run(job, datetime.now(UTC) - ago)


def served(daemon: DaemonProcess) -> str:
    [line] = daemon.wait_for_event("metrics and status page served")
    url: str = line["url"]
    return url


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + "metrics", timeout=10) as response:
        return parse(response.read().decode())


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def listed(workspace: Workspace) -> list[dict[str, Any]]:
    result = workspace.run("list", "--json")
    assert result.returncode == 0, result.stderr
    archives: list[dict[str, Any]] = json.loads(result.stdout)
    return archives


def status(workspace: Workspace) -> dict[str, Any]:
    result = workspace.run("status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_metrics_after_a_scheduled_backup_and_drill_hold_the_spec_values_even_after_a_restart(
    api, volumes, workspace, daemons
):
    volume = volumes("measured")
    (mountpoint(api, volume) / "data").write_bytes(os.urandom(200_000))
    textfile = workspace.root / "node-exporter" / "volkeep.prom"
    textfile.parent.mkdir()
    metrics = {"listen": "127.0.0.1:0", "textfile": str(textfile)}
    policy = {"volumes": [volume], "schedule": "@every 1h", "drill": {"schedule": "@every 2s"}}
    workspace.write_config({"app": policy}, daemon={"metrics": metrics, "host": "web-1"})
    record_last_run(workspace, "backup:app", timedelta(hours=2))

    daemon = daemons()
    url = served(daemon)
    daemon.wait_for_event("scheduled drill finished", volumes=1)
    ours = {"host": "web-1", "policy": "app", "volume": volume}
    passed = ("volkeep_drill_passed", labels(**ours))
    found = wait_until(lambda: (now := scrape(url)).get(passed) == 1 and now, "the drill's metrics")
    assert {name for name, _ in found} >= SPEC_GAUGES
    assert found["volkeep_archives", labels(**ours, storage="local")] == 1
    assert found["volkeep_restore_seconds", labels(**ours)] > 0
    backups = ("volkeep_operations_total", labels(**ours, operation="backup", outcome="success"))
    assert found[backups] == 1
    count = ("volkeep_operation_duration_seconds_count", labels(**ours, operation="backup"))
    assert found[count] == 1
    # what the alert rules need: the schedule's interval, the prune after the backup
    hourly = labels(host="web-1", policy="app", operation="backup")
    assert found["volkeep_schedule_interval_seconds", hourly] == 3600
    ended = "volkeep_last_success_timestamp_seconds"
    pruned, backed_up = labels(**ours, operation="prune"), labels(**ours, operation="backup")
    assert abs(found[ended, pruned] - found[ended, backed_up]) < 60  # the backup's own prune
    assert {dict(pairs)["host"] for _, pairs in found} == {"web-1"}
    assert daemon.stop() == 0

    # the storage and the history say the same after a restart, before any run
    workspace.write_config(
        {"app": {**policy, "drill": {"schedule": "@every 1h"}}},
        daemon={"metrics": metrics, "host": "web-1"},
    )
    restarted = daemons()
    url = served(restarted)
    after = wait_until(lambda: (now := scrape(url)).get(passed) == 1 and now, "metrics at start")
    [archive] = listed(workspace)
    [watched] = status(workspace)["policies"][0]["volumes"]
    local = labels(**ours, storage="local")
    assert after["volkeep_archives", local] == 1
    assert after["volkeep_newest_archive_bytes", local] == archive["size"]
    created = datetime.fromisoformat(watched["newest_archive"]["created"]).timestamp()
    assert after["volkeep_newest_archive_timestamp_seconds", local] == created
    assert (
        after["volkeep_restore_seconds", labels(**ours)] == watched["last_drill"]["restore_seconds"]
    )
    success = "volkeep_last_success_timestamp_seconds"
    last_backup = datetime.fromisoformat(watched["last_backup"]["finished"]).timestamp()
    assert after[success, labels(**ours, operation="backup")] == last_backup
    last_drill = datetime.fromisoformat(watched["last_drill"]["finished"]).timestamp()
    assert abs(after[success, labels(**ours, operation="drill")] - last_drill) < 5
    assert not any(name == "volkeep_operations_total" for name, _ in after)
    assert restarted.stop() == 0

    # the textfile, rewritten after the last read, holds the same gauges
    written = parse(textfile.read_text())
    assert {key: value for key, value in written.items() if key[0] in SPEC_GAUGES} == {
        key: value for key, value in after.items() if key[0] in SPEC_GAUGES
    }
    assert [path.name for path in textfile.parent.iterdir()] == ["volkeep.prom"]


def test_pings_and_apprise_notifications_tell_start_success_failure_and_recovery(
    api, volumes, workspace, daemons, receiver
):
    good = volumes("good")
    later = good.removesuffix("good") + "later"  # created once it has failed
    dead = f"json://127.0.0.1:{closed_port()}/dead-{os.urandom(4).hex()}"
    workspace.write_config(
        {
            "good": {
                "volumes": [good],
                "schedule": "@every 1h",
                "notify": {
                    "ping": f"http://{receiver.address}/ping/good",
                    "urls": [dead, f"json://{receiver.address}/apprise/good"],
                },
            },
            "bad": {
                "volumes": [later],
                "schedule": "@every 2s",
                "notify": {
                    "ping": f"http://{receiver.address}/ping/bad",
                    "urls": [f"json://{receiver.address}/apprise/bad"],
                },
            },
        }
    )
    record_last_run(workspace, "backup:good", timedelta(hours=2))  # missed while down

    daemon = daemons()
    wait_until(lambda: receiver.messages("/apprise/bad"), "the failure notification")
    api.create_volume(later)
    wait_until(
        lambda: any(m["type"] == "success" for m in receiver.messages("/apprise/bad")),
        "the recovered notification",
    )
    wait_until(lambda: "/ping/good" in receiver.paths("/ping/good"), "the good backup's ping")
    daemon.wait_for_event("notification not delivered", setting="notify.urls[0]", policy="good")
    assert daemon.stop() == 0

    assert receiver.paths("/ping/good") == ["/ping/good/start", "/ping/good"]
    [missed] = receiver.messages("/apprise/good")
    assert missed["type"] == "warning" and "did not start on time" in missed["title"]
    assert sorted(entry["volume"] for entry in listed(workspace)) == sorted([good, later])

    bad_pings = receiver.paths("/ping/bad")
    assert bad_pings[:2] == ["/ping/bad/start", "/ping/bad/fail"]
    assert "/ping/bad" in bad_pings
    failure_body = dict(receiver.requests)["/ping/bad/fail"].decode()
    assert failure_body.startswith(f"{later}: ")
    kinds = [message["type"] for message in receiver.messages("/apprise/bad")]
    assert kinds[0] == "failure" and kinds[-1] == "success" and kinds.count("success") == 1
    assert later in receiver.messages("/apprise/bad")[0]["message"]

    log_text = daemon.log_file.read_text()
    assert "/ping/" not in log_text and "/apprise/" not in log_text and "/dead-" not in log_text


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run): it is missing")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return found


def rendered(url: str, profile: Path) -> str:
    """Load the page in headless Chromium; return the DOM it rendered."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def row_of(dom: str, volume: str) -> str:
    start = dom.index(f'<tr data-volume="{volume}">')
    return dom[start : dom.index("</tr>", start)]


@pytest.mark.archive_format("tar")
def test_the_status_page_in_a_browser_shows_a_failed_drill_and_the_restore_time_of_a_passed_one(
    api, volumes, workspace, daemons
):
    chromium()
    sound, broken = volumes("sound"), volumes("broken")
    for volume in (sound, broken):
        (mountpoint(api, volume) / "data").write_bytes(os.urandom(300_000))
    policy = {"volumes": [sound, broken], "drill": {"schedule": "@every 1h"}}
    workspace.write_config({"app": policy}, daemon={"metrics": {"listen": "127.0.0.1:0"}})
    backed_up = workspace.run("backup", "app")
    assert backed_up.returncode == 0, backed_up.stderr
    [stored] = workspace.archive_dir("app", broken).glob("*.tar.zst")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    record_last_run(workspace, "drill:app", timedelta(hours=2))

    daemon = daemons()
    url = served(daemon)
    daemon.wait_for_event("scheduled drill finished with failures")
    dom = wait_until(
        lambda: (
            'data-verdict="failed"' in (page := rendered(url, workspace.root / "chromium")) and page
        ),
        "the drill verdicts on the page",
    )
    assert daemon.stop() == 0

    drills = {v["name"]: v["last_drill"] for v in status(workspace)["policies"][0]["volumes"]}
    failed, passed = row_of(dom, broken), row_of(dom, sound)
    assert 'data-verdict="failed"' in failed and "failed" in failed
    assert 'data-verdict="passed"' in passed
    assert f"{drills[sound]['restore_seconds']:.1f} s" in passed
    assert "<svg" in passed and 'class="restore passed"' in passed
    assert 'class="restore failed"' in failed
    assert f"volkeep on {socket.gethostname()}" in dom


def test_a_failed_config_reload_shows_in_status_the_page_and_a_metric_until_one_succeeds(
    volumes, workspace, daemons
):
    volume = volumes("reloaded")
    metrics = {"listen": "127.0.0.1:0"}
    workspace.write_config({"app": {"volumes": [volume]}}, daemon={"metrics": metrics})
    daemon = daemons()
    url = served(daemon)
    failed = ("volkeep_config_reload_failed", labels(host=socket.gethostname()))
    assert wait_until(lambda: scrape(url).get(failed) == 0, "the metric at start")

    good = workspace.config.read_text()
    workspace.config.write_text(good.replace("version: 1", "version: 1\nnonsense: true"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("config reload failed: keeping the running config")

    assert wait_until(lambda: scrape(url).get(failed) == 1, "the metric after the failure")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert "CONFIG RELOAD FAILED" in response.read().decode()
    workspace.config.write_text(good)  # mended, not reloaded yet: the daemon runs the old one
    shown = workspace.run("status").stdout
    assert "CONFIG RELOAD FAILED" in shown and "nonsense" in shown, shown

    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("config reloaded")
    assert wait_until(lambda: scrape(url).get(failed) == 0, "the metric after a good reload")
    assert "CONFIG RELOAD FAILED" not in workspace.run("status").stdout
    assert daemon.stop() == 0
