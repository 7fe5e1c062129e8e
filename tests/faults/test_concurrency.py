"""Two volkeeps at once (issue 13): a second daemon on the same state dir, and a backup by hand
while the daemon backs up the same volume. The second one refuses, in one clear line; the
first goes on; afterwards the four promises hold.

For the backup by hand, the daemon pauses itself halfway through its backup (the test-only
launcher, tests/faults/killpoints.py): the service is stopped and the volume locked for as
long as the test needs, then the daemon goes on."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.state.history import History
from tests.e2e.conftest import ROOT, mountpoint
from tests.faults.conftest import Ledger, LogBook, Things, Volkeep, check_the_promises
from tests.faults.killpoints import ACTION as POINT_ACTION
from tests.faults.killpoints import ENVIRONMENT as KILL_POINT
from tests.support.daemon_process import DaemonProcess, NotifySocket, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture
def start_daemon(volkeep: Volkeep, logbook: LogBook) -> Iterator[Callable[[], DaemonProcess]]:
    """A factory of `volkeep run` processes; their logs go to the log book; all are killed
    after the test."""
    started: list[DaemonProcess] = []
    notify = NotifySocket()

    def start(pause_at: str | None = None) -> DaemonProcess:
        log_file = volkeep.workspace.root / f"daemon-{len(started)}.log"
        logbook.files.append(log_file)
        env = {"NOTIFY_SOCKET": notify.address}
        if pause_at is not None:
            env |= {KILL_POINT: pause_at, POINT_ACTION: "pause"}
        command = volkeep.command("run", kill_point=pause_at)
        process = DaemonProcess(command, log_file, env, ROOT)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    notify.close()


def paused(daemon: DaemonProcess) -> bool:
    assert daemon.process.poll() is None, daemon.log_file.read_text()
    stat = Path(f"/proc/{daemon.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def test_a_second_daemon_on_the_same_state_dir_refuses_and_the_first_goes_on(
    things: Things, volkeep: Volkeep, ledger: Ledger, start_daemon, helper_image: str
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(1 << 20))
    service = things.service(helper_image, volume, "service")
    volkeep.workspace.write_config(
        {
            "app": {
                "volumes": [volume],
                "schedule": "@every 2s",
                "stop_containers": True,
                "retention": {"keep_last": 2},
            }
        }
    )
    first = start_daemon()
    first.wait_for_event("scheduled backup finished")

    second = volkeep.run("run", timeout=60)

    assert second.returncode == 1, second.stderr
    assert f"another volkeep daemon (pid {first.pid}) already runs" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.process.poll() is None
    done = len(first.events("scheduled backup finished"))
    first.wait_for_event("scheduled backup finished", count=done + 1)
    assert first.stop() == 0
    assert not first.events("scheduled backup failed")
    ledger.claim({volume: ledger.tree(volume)})
    check_the_promises(ledger, [service])


def test_a_backup_by_hand_while_the_daemon_backs_up_the_volume_is_refused_and_both_end_well(
    things: Things, volkeep: Volkeep, ledger: Ledger, start_daemon, helper_image: str
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(12 << 20))
    service = things.service(helper_image, volume, "service")
    volkeep.workspace.write_config(
        {"app": {"volumes": [volume], "schedule": "@every 1h", "stop_containers": True}}
    )
    # the last run was two hours ago: the daemon catches up at once
    History(volkeep.workspace.state_dir).record_run(
        "backup:app", datetime.now(UTC) - timedelta(hours=2)
    )
    daemon = start_daemon(pause_at="half of the archive written")
    wait_until(lambda: paused(daemon), "the daemon halfway through its backup")
    assert not things.running(service)

    by_hand = volkeep.run("backup", "app")

    assert by_hand.returncode == 1, by_hand.stderr
    assert f"volume is busy: backup of app by volkeep pid {daemon.pid}" in by_hand.stderr
    assert "Traceback" not in by_hand.stderr
    daemon.signal(signal.SIGCONT)
    daemon.wait_for_event("scheduled backup finished")
    wait_until(lambda: things.running(service), "the service running again")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(60) == 0
    assert daemon.events("backup published")
    ledger.claim({volume: ledger.tree(volume)})
    assert len(check_the_promises(ledger, [service])) == 1
