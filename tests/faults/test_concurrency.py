"""Two volkeeps at once (issue 13): a second daemon on the same state dir, and a backup by hand
while the daemon backs up the same volume. The second one refuses, in one clear line; the
first goes on; afterwards the four promises hold. Then (issue 19) two volkeeps with their own
state dirs on one host, and two hosts on one storage: neither breaks the other's backup.

For the backup by hand, the daemon pauses itself halfway through its backup (the test-only
launcher, tests/faults/killpoints.py): the service is stopped and the volume locked for as
long as the test needs, then the daemon goes on."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.state.history import History
from daemon.state.locks import LOCK_DIRECTORY
from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.faults.conftest import (
    Ledger,
    LogBook,
    Things,
    Volkeep,
    check_the_promises,
    one_clean_error,
)
from tests.faults.killpoints import ACTION as POINT_ACTION
from tests.faults.killpoints import ENVIRONMENT as KILL_POINT
from tests.support.daemon_process import DaemonProcess, NotifySocket, wait_until
from tests.support.seaweed import S3Bucket

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


# Two processes on one host, two hosts on one storage (issue 19, defects 5 and 6)


def other_volkeep(
    root: Path, volkeep: Volkeep, config: dict[str, object], **top: object
) -> Volkeep:
    """A volkeep with its own config and state dir under `root`, beside `volkeep`."""
    root.mkdir()
    workspace = Workspace(root, volkeep.workspace.helper_image, volkeep.workspace.archive_format)
    workspace.write_config(config, **top)  # type: ignore[arg-type]
    return Volkeep(workspace, volkeep.logs)


def same_storage(volkeep: Volkeep) -> dict[str, dict[str, object]]:
    return {"local": {"type": "local", "path": str(volkeep.workspace.storage)}}


def test_a_backup_from_a_second_state_dir_waits_for_the_volumes_host_wide_lock(
    things: Things, volkeep: Volkeep, ledger: Ledger, tmp_path: Path
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(12 << 20))
    policy = {"app": {"volumes": [volume]}}
    volkeep.workspace.write_config(policy)
    second = other_volkeep(tmp_path / "second", volkeep, policy, storages=same_storage(volkeep))
    first = volkeep.start("backup", "app", pause_at="half of the archive written")
    first.wait_until_paused()

    refused = second.run("backup", "app")

    assert f"volume is busy: backup of app by volkeep pid {first.process.pid}" in one_clean_error(
        refused
    )
    first.signal(signal.SIGCONT)
    assert first.wait().returncode == 0
    ledger.claim({volume: ledger.tree(volume)})
    assert len(check_the_promises(ledger, [])) == 1


def test_two_backups_of_one_volume_that_share_no_lock_keep_each_others_partial_files(
    things: Things, volkeep: Volkeep, ledger: Ledger, tmp_path: Path
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(12 << 20))
    policy = {"app": {"volumes": [volume]}}
    volkeep.workspace.write_config(policy)
    # two containers on one host, each with its own /run/lock: nothing serialises them
    second = other_volkeep(tmp_path / "second", volkeep, policy, storages=same_storage(volkeep))
    second.env[LOCK_DIRECTORY] = str(tmp_path / "second" / "locks")
    first = volkeep.start("backup", "app", pause_at="half of the archive written")
    first.wait_until_paused()
    in_flight = sorted(volkeep.workspace.storage.rglob(".*.partial"))

    second.ok("backup", "app")

    assert in_flight and all(path.exists() for path in in_flight)
    first.signal(signal.SIGCONT)
    assert first.wait().returncode == 0
    ledger.claim({volume: ledger.tree(volume)})
    listed = check_the_promises(ledger, [])
    assert len({archive.id for archive in listed}) == 2


@pytest.mark.parametrize("archive_format", ["tar", "dedup"])
def test_two_backups_of_one_volume_in_the_same_second_get_two_ids_and_both_restore(
    archive_format: str, things: Things, volkeep: Volkeep, ledger: Ledger, tmp_path: Path
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(12 << 20))
    policy = {"app": {"volumes": [volume], "format": archive_format}}
    volkeep.workspace.write_config(policy)
    second = other_volkeep(tmp_path / "second", volkeep, policy, storages=same_storage(volkeep))
    second.env[LOCK_DIRECTORY] = str(tmp_path / "second" / "locks")
    both = [run.start("backup", "app", pause_at="helper's tar known") for run in (volkeep, second)]
    for backup in both:
        backup.wait_until_paused()
    time.sleep(1 - time.time() % 1 + 0.05)  # early in a second: both take the same start time
    for backup in both:
        backup.signal(signal.SIGCONT)

    results = [backup.wait() for backup in both]
    assert [result.returncode for result in results] == [0, 0], [r.stderr for r in results]
    ledger.claim({volume: ledger.tree(volume)})
    ids = sorted(archive.id for archive in check_the_promises(ledger, []))
    assert len(ids) == 2 and ids[1] == f"{ids[0]}-2"


def test_two_first_dedup_backups_of_one_policy_both_take_the_config_the_first_one_stored(
    things: Things, volkeep: Volkeep, ledger: Ledger, tmp_path: Path
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(2 << 20))
    policy = {"app": {"volumes": [volume], "format": "dedup"}}
    volkeep.workspace.write_config(policy)
    second = other_volkeep(tmp_path / "second", volkeep, policy, storages=same_storage(volkeep))
    second.env[LOCK_DIRECTORY] = str(tmp_path / "second" / "locks")
    # both found no config in the new chunk repository; the first stores its own
    both = [run.start("backup", "app", pause_at="chunk repository config read")
            for run in (volkeep, second)]  # fmt: skip
    for backup in both:
        backup.wait_until_paused()
    results = []
    for backup in both:
        backup.signal(signal.SIGCONT)
        results.append(backup.wait())

    assert [result.returncode for result in results] == [0, 0], [r.stderr for r in results]
    ledger.claim({volume: ledger.tree(volume)})
    assert len(check_the_promises(ledger, [])) == 2


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_host_web_never_touches_host_apps_upload_under_the_layout_before_host_names(
    storage: str, things: Things, volkeep: Volkeep, tmp_path: Path, request: pytest.FixtureRequest
):
    db = things.volume("db")
    files = things.volume("files")
    (mountpoint(things.api, db) / "table").write_bytes(os.urandom(1 << 20))
    (mountpoint(things.api, files) / "upload.bin").write_bytes(os.urandom(12 << 20))
    if storage == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        shared = {"shared": bucket.storage("fleet/")}
    else:
        shared = {"shared": {"type": "local", "path": str(tmp_path / "shared")}}
    # web's policy "app", volume db: before host names its directory was app/<db>/; host app's
    # policy named <db> writes under app/<db>/ too
    web = other_volkeep(tmp_path / "web", volkeep, {"app": {"volumes": [db], "storage": "shared"}},
                        storages=shared, daemon={"host": "web"})  # fmt: skip
    app = other_volkeep(tmp_path / "app", volkeep, {db: {"volumes": [files], "storage": "shared"}},
                        storages=shared, daemon={"host": "app"})  # fmt: skip
    point = "multipart upload begun" if storage == "s3" else "half of the archive written"
    writing = app.start("backup", db, pause_at=point)
    writing.wait_until_paused()
    in_flight = in_flight_uploads(storage, tmp_path / "shared", request)
    assert [name for name in in_flight if f"app/{db}/{files}/" in name], in_flight

    web.ok("backup", "app")
    web.ok("prune", "app")

    assert in_flight_uploads(storage, tmp_path / "shared", request) == in_flight
    writing.signal(signal.SIGCONT)
    assert writing.wait().returncode == 0
    for host, policy, volume in ((web, "app", db), (app, db, files)):
        ledger = Ledger(host, things, policy)
        ledger.claim({volume: ledger.tree(volume)})
        assert len(check_the_promises(ledger, [])) == 1


def in_flight_uploads(storage: str, root: Path, request: pytest.FixtureRequest) -> list[str]:
    """The uploads begun and not completed in the shared storage."""
    if storage == "local":
        return sorted(path.relative_to(root).as_posix() for path in root.rglob(".*.partial"))
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    answer = bucket.server.client().list_multipart_uploads(Bucket=bucket.name)
    return sorted(upload["Key"] for upload in answer.get("Uploads", []))
