"""Consistent backups of live services (issue 6), as an operator's sessions: a service writes
into its volume; volkeep stops it for the tar, runs hooks around the backup, and never leaves
it stopped — not on failure, not on SIGTERM, not after its own kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from daemon.state.history import History
from tests.e2e.conftest import Workspace, mountpoint

# A database-like writer: appends numbered lines; on SIGTERM it finishes its line and exits.
# Its counter starts at 1 whenever it (re)starts, which shows where a restart happened.
WRITER = 'trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo "$i $(date)" >> /data/log; sleep 0.1; done'  # noqa: E501
IDLE = 'trap "exit 0" TERM; while true; do sleep 0.1; done'


def start_service(
    api: docker.APIClient,
    image: str,
    volume: str,
    name: str,
    command: str = IDLE,
    labels: dict[str, str] | None = None,
) -> str:
    """Run a container of `command` with the volume at /data, named after the volume (so
    the `volumes` fixture removes it); return its id."""
    container = api.create_container(
        image,
        ["sh", "-c", command],
        name=f"{volume}_{name}",
        labels=labels or {},
        # no network: a service here needs none, and the tests must not depend on docker0
        host_config=api.create_host_config(
            binds={volume: {"bind": "/data", "mode": "rw"}},
            log_config={"type": "none"},
            network_mode="none",
        ),
    )
    api.start(container["Id"])
    return str(container["Id"])


def state(api: docker.APIClient, container: str) -> dict[str, object]:
    return dict(api.inspect_container(container)["State"])


def wait_for_lines(path: Path, count: int) -> None:
    deadline = time.monotonic() + 20
    while (
        not path.exists() or path.read_text().count("\n") < count
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.read_text().count("\n") >= count, "the writer does not write"


def archived_files(workspace: Workspace, policy: str, volume: str) -> dict[str, bytes]:
    """Return the regular files of the volume's newest archive, as `volkeep export` writes
    its tar (whatever the archive's format), read with tarfile."""
    exported = workspace.root / f"{volume}.tar"
    result = workspace.run("export", policy, "--volume", volume, "-o", str(exported))
    assert result.returncode == 0, result.stderr
    with tarfile.open(exported, mode="r|") as tar:
        return {
            member.name.removeprefix("./"): tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar
            if member.isfile()
        }


def events(stderr: str) -> list[dict[str, object]]:
    """Given volkeep's JSON log, return its lines as dicts."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def journals_left(workspace: Workspace) -> list[Path]:
    return list((workspace.state_dir / "stopped").glob("*.json"))


def stored_archives(workspace: Workspace) -> list[Path]:
    return [path for path in workspace.storage.rglob("*") if path.is_file()]


@pytest.fixture
def read_only_storage(workspace: Workspace):
    workspace.storage.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(workspace.storage)], check=True
    )
    yield workspace.storage
    subprocess.run(["umount", str(workspace.storage)], check=True)


def test_writer_is_stopped_for_the_tar_and_runs_again_with_its_downtime_recorded(
    api, volumes, workspace, helper_image
):
    volume = volumes("db")
    writer = start_service(api, helper_image, volume, "writer", WRITER)
    log_file = mountpoint(api, volume) / "log"
    wait_for_lines(log_file, 5)
    first_start = state(api, writer)["StartedAt"]
    workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})

    backup = workspace.run("backup", "app")

    assert backup.returncode == 0, backup.stderr
    assert state(api, writer)["Running"] is True
    assert state(api, writer)["StartedAt"] != first_start
    archived = archived_files(workspace, "app", volume)["log"]
    assert archived.endswith(b"\n")
    numbers = [int(line.split(b" ", 1)[0]) for line in archived.splitlines()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 5
    # the archive holds every line of the stopped writer and none of the restarted one: in
    # the live log, the line after the archived ones is the restarted writer's first
    wait_for_lines(log_file, len(numbers) + 1)
    live = log_file.read_bytes()
    assert live.startswith(archived)
    assert live[len(archived) :].split(b" ", 1)[0] == b"1"
    (downtime,) = History(workspace.state_dir).downtimes("app", volume)
    assert downtime.container == f"{volume}_writer"
    assert 0 < downtime.seconds < 30
    logged = [e for e in events(backup.stderr) if e["event"] == "container started again"]
    assert [(e["container"], e["policy"], e["volume"]) for e in logged] == [
        (f"{volume}_writer", "app", volume)
    ]
    assert logged[0]["downtime_seconds"] == round(downtime.seconds, 2)
    assert journals_left(workspace) == []
    print(f"\nwriter downtime: {downtime.seconds:.2f} s")


def test_a_failed_backup_starts_the_writer_again_and_runs_the_after_hooks(
    api, volumes, workspace, helper_image, read_only_storage, tmp_path
):
    volume = volumes("db")
    writer = start_service(api, helper_image, volume, "writer", WRITER)
    first_start = state(api, writer)["StartedAt"]
    marker = tmp_path / "after-hook-ran"
    workspace.write_config(
        {
            "app": {
                "volumes": [volume],
                "stop_containers": True,
                "hooks": {"after": [{"run": ["touch", str(marker)]}]},
            }
        }
    )

    backup = workspace.run("backup", "app")

    assert backup.returncode == 1
    assert "in storage 'local'" in backup.stderr
    assert "Read-only file system" in backup.stderr
    assert "Traceback" not in backup.stderr
    assert state(api, writer)["Running"] is True
    assert state(api, writer)["StartedAt"] != first_start, "it was never stopped"
    assert [d.container for d in History(workspace.state_dir).downtimes("app", volume)] == [
        f"{volume}_writer"
    ]
    assert marker.exists()
    assert journals_left(workspace) == []


def test_a_failing_before_hook_aborts_the_backup_with_a_clear_error(
    api, volumes, workspace, helper_image, tmp_path
):
    volume = volumes("db")
    writer = start_service(api, helper_image, volume, "writer", WRITER)
    first_start = state(api, writer)["StartedAt"]
    marker = tmp_path / "after-hook-ran"
    workspace.write_config(
        {
            "app": {
                "volumes": [volume],
                "stop_containers": True,
                "hooks": {
                    "before": [
                        {"run": ["sh", "-c", "echo pg_dump: connection refused >&2; exit 3"]}
                    ],
                    "after": [{"run": ["touch", str(marker)]}],
                },
            }
        }
    )

    backup = workspace.run("backup", "app")

    assert backup.returncode == 1
    (failed,) = [e for e in events(backup.stderr) if e["event"] == "backup failed"]
    assert (failed["policy"], failed["volume"]) == ("app", volume)
    assert failed["error"] == (
        "before hook 1 (run: sh -c …) failed: "
        "exit status 3: pg_dump: connection refused; the volume was not backed up"
    )
    assert backup.stderr.splitlines()[-1] == f"volkeep: app/{volume}: {failed['error']}"
    output = [e for e in events(backup.stderr) if e["event"] == "hook output"]
    assert [(e["line"], e["stream"], e["policy"], e["volume"]) for e in output] == [
        ("pg_dump: connection refused", "stderr", "app", volume)
    ]
    assert stored_archives(workspace) == []
    assert state(api, writer)["Running"] is True
    assert state(api, writer)["StartedAt"] == first_start  # hooks run before anything stops
    assert marker.exists()


def interrupt_while_stopped(
    api: docker.APIClient, volumes: Callable[..., str], workspace: Workspace, image: str, sig: int
) -> tuple[str, str, subprocess.Popen[str]]:
    """Start a backup that keeps the writer stopped for a few seconds (a 256 MiB sparse file
    to read) and send `sig` to volkeep while the writer is down; return the volume, the
    writer and the ended process."""
    volume = volumes("big")
    writer = start_service(api, image, volume, "writer", WRITER)
    with open(mountpoint(api, volume) / "sparse", "wb") as sparse:
        sparse.truncate(256 << 20)
    workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})
    process = subprocess.Popen(
        workspace.command("backup", "app"), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while state(api, writer)["Running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state(api, writer)["Running"] is False, "the backup never stopped the writer"
    assert process.poll() is None, "the backup ended before the writer was caught stopped"
    os.kill(process.pid, sig)
    process.wait(timeout=30)
    return volume, writer, process


def test_after_kill_9_the_next_volkeep_command_starts_the_writer_again(
    api, volumes, workspace, helper_image
):
    volume, writer, process = interrupt_while_stopped(
        api, volumes, workspace, helper_image, signal.SIGKILL
    )
    assert process.returncode == -signal.SIGKILL
    assert state(api, writer)["Running"] is False
    assert [path.name for path in journals_left(workspace)] == [f"{volume}.json"]

    listing = workspace.run("list", "app")  # a command that otherwise never needs the engine

    assert listing.returncode == 0, listing.stderr
    assert state(api, writer)["Running"] is True
    assert journals_left(workspace) == []
    (downtime,) = History(workspace.state_dir).downtimes("app", volume)
    assert downtime.container == f"{volume}_writer" and downtime.seconds > 0
    died = [e for e in events(listing.stderr) if e["event"].startswith("a volkeep process died")]
    assert [e["containers"] for e in died] == [f"{volume}_writer"]
    # the dead backup's helper container is gone too
    assert api.containers(all=True, filters={"label": f"volkeep.volume={volume}"}) == []


def test_sigterm_starts_the_writer_again_before_volkeep_exits(
    api, volumes, workspace, helper_image
):
    volume, writer, process = interrupt_while_stopped(
        api, volumes, workspace, helper_image, signal.SIGTERM
    )

    assert process.returncode == 128 + signal.SIGTERM
    assert process.stderr is not None and "volkeep: terminated" in process.stderr.read()
    assert state(api, writer)["Running"] is True
    assert journals_left(workspace) == []
    assert len(History(workspace.state_dir).downtimes("app", volume)) == 1


def test_labels_opt_containers_in_and_out_of_stopping(api, volumes, workspace, helper_image):
    volume = volumes("shared")
    label = "volkeep.stop-during-backup"
    ids = {
        "opted_in": start_service(api, helper_image, volume, "opted_in", labels={label: "true"}),
        "opted_out": start_service(api, helper_image, volume, "opted_out", labels={label: "false"}),
        "unlabelled": start_service(api, helper_image, volume, "unlabelled"),
    }

    def stopped_by(policy_flag: bool) -> set[str]:
        starts = {name: state(api, c)["StartedAt"] for name, c in ids.items()}
        workspace.write_config({"app": {"volumes": [volume], "stop_containers": policy_flag}})
        summary = workspace.run("validate")
        backup = workspace.run("backup", "app")
        assert backup.returncode == 0, backup.stderr
        assert all(state(api, c)["Running"] for c in ids.values())
        restarted = {name for name, c in ids.items() if state(api, c)["StartedAt"] != starts[name]}
        shown = f"stops during the backup of {volume}: " + ", ".join(
            f"{volume}_{name}" for name in sorted(restarted)
        )
        assert shown in summary.stdout, summary.stdout
        return restarted

    assert stopped_by(policy_flag=False) == {"opted_in"}
    assert stopped_by(policy_flag=True) == {"opted_in", "unlabelled"}


def test_containers_that_were_not_running_stay_as_they_were(api, volumes, workspace, helper_image):
    volume = volumes("idle")
    exited = start_service(api, helper_image, volume, "exited")
    api.stop(exited, timeout=5)
    created = api.create_container(
        helper_image,
        ["true"],
        name=f"{volume}_created",
        host_config=api.create_host_config(binds={volume: {"bind": "/data", "mode": "rw"}}),
    )["Id"]
    before = {c: state(api, c) for c in (exited, created)}
    workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})

    backup = workspace.run("backup", "app")

    assert backup.returncode == 0, backup.stderr
    assert {c: state(api, c) for c in (exited, created)} == before
    assert History(workspace.state_dir).downtimes("app", volume) == []


def test_a_compose_project_is_selected_and_stopped_in_dependency_order(
    api, volumes, workspace, helper_image
):
    project = volumes("shop")  # a unique name; also a volume, which the project does not label
    data = volumes("shop_data", labels={"com.docker.compose.project": project})

    def service(name: str, depends_on: str = "") -> dict[str, str]:
        labels = {"com.docker.compose.project": project, "com.docker.compose.service": name}
        return labels | ({"com.docker.compose.depends_on": depends_on} if depends_on else {})

    # created in the "wrong" order on purpose: names alone would stop db first
    start_service(api, helper_image, data, "db", labels=service("db"))
    start_service(api, helper_image, data, "web", labels=service("web", "db:service_started:false"))
    workspace.write_config(
        {"shop": {"match": {"compose_project": project}, "stop_containers": True}}
    )

    summary = workspace.run("validate")
    backup = workspace.run("backup", "shop")

    assert f"volumes now: {data}\n" in summary.stdout, summary.stdout
    assert backup.returncode == 0, backup.stderr
    log = events(backup.stderr)
    stops = [e["container"] for e in log if e["event"] == "container stopped"]
    starts = [e["container"] for e in log if e["event"] == "container started again"]
    assert stops == [f"{data}_web", f"{data}_db"]
    assert starts == [f"{data}_db", f"{data}_web"]
    assert [path.parent.name for path in workspace.storage.glob("*/shop/*/*.manifest.json")] == [
        data
    ]


def test_before_hooks_run_in_the_container_as_the_user_asked_and_the_dump_is_archived(
    api, volumes, workspace, helper_image
):
    volume = volumes("db")
    other = volumes("uploads")
    start_service(api, helper_image, volume, "writer", WRITER)
    dump = ["sh", "-c", "echo 'COPY accounts FROM stdin;' > /data/dump.sql; echo dumped"]
    workspace.write_config(
        {
            "app": {
                "volumes": [volume, other],
                "stop_containers": True,
                "volume_hooks": {
                    volume: {
                        "before": [
                            {"exec": {"container": f"{volume}_writer", "command": dump}},
                            {
                                "exec": {
                                    "container": f"{volume}_writer",
                                    "command": ["id", "-u"],
                                    "user": "1234",
                                }
                            },
                        ]
                    }
                },
            }
        }
    )

    backup = workspace.run("backup", "app")

    assert backup.returncode == 0, backup.stderr
    assert archived_files(workspace, "app", volume)["dump.sql"] == b"COPY accounts FROM stdin;\n"
    assert "dump.sql" not in archived_files(workspace, "app", other)
    output = [e for e in events(backup.stderr) if e["event"] == "hook output"]
    assert [(e["line"], e["volume"], e["hook"]) for e in output] == [
        ("dumped", volume, "before hook 1"),
        ("1234", volume, "before hook 2"),
    ]


def test_a_failing_after_hook_is_reported_and_the_archive_kept(api, volumes, workspace):
    volume = volumes("data")
    workspace.write_config({"app": {"volumes": [volume], "hooks": {"after": [{"run": ["false"]}]}}})

    backup = workspace.run("backup", "app")

    assert backup.returncode == 1
    (failed,) = [e for e in events(backup.stderr) if e["event"] == "backup failed"]
    assert failed["error"] == "the backup is done, but after hook 1 (run: false): exit status 1"
    assert len(list(workspace.archive_dir("app", volume).glob("*.manifest.json"))) == 1


@pytest.mark.parametrize("where", ["exec", "run"])
def test_a_hook_that_runs_too_long_is_killed(api, volumes, workspace, helper_image, where):
    volume = volumes("slow")
    service = start_service(api, helper_image, volume, "service")
    command = ["sleep", "37"]
    hook = (
        {"exec": {"container": f"{volume}_service", "command": command, "timeout": "1s"}}
        if where == "exec"
        else {"run": {"command": command, "timeout": "1s"}}
    )
    workspace.write_config({"app": {"volumes": [volume], "hooks": {"before": [hook]}}})
    began = time.monotonic()

    backup = workspace.run("backup", "app")

    assert backup.returncode == 1
    assert "before hook 1" in backup.stderr and "timed out after 1s" in backup.stderr
    assert time.monotonic() - began < 20
    if where == "exec":
        processes = api.top(service)["Processes"] or []
        assert not [p for p in processes if "sleep 37" in " ".join(p)]
    else:
        found = subprocess.run(["pgrep", "-f", "^sleep 37$"], capture_output=True)
        assert found.returncode == 1, found.stdout


def test_an_exec_hook_into_a_container_that_is_not_running_fails_clearly(
    api, volumes, workspace, helper_image
):
    volume = volumes("db")
    service = start_service(api, helper_image, volume, "db")
    api.stop(service, timeout=5)
    hook = {"exec": {"container": f"{volume}_db", "command": ["true"]}}
    workspace.write_config({"app": {"volumes": [volume], "hooks": {"before": [hook]}}})

    backup = workspace.run("backup", "app")

    assert backup.returncode == 1
    (failed,) = [e for e in events(backup.stderr) if e["event"] == "backup failed"]
    assert failed["error"] == (
        f"before hook 1 (exec in {volume}_db: true) failed: container '{volume}_db' is not "
        "running; the volume was not backed up"
    )
    assert stored_archives(workspace) == []


def test_a_running_helper_is_held_to_a_read_only_root_and_pids_and_memory_limits(
    api, volumes, helper_image
):
    from daemon.engine.helpers import WRITE_CAPABILITIES, Mount, helper_container

    volume = volumes("hardened")
    mounts = [Mount(volume, "/dst", read_only=False)]
    command = ["sh", "-c", "touch /dst/volume-is-writable; touch /root-is-writable; sleep 30"]
    with helper_container(
        api, helper_image, command, mounts, capabilities=WRITE_CAPABILITIES
    ) as helper:
        api.start(helper)
        deadline = time.monotonic() + 10
        while not (mountpoint(api, volume) / "volume-is-writable").exists():
            assert time.monotonic() < deadline, "the helper never wrote into its volume"
            time.sleep(0.05)
        running = api.inspect_container(helper)
        api.kill(helper)
    assert running["State"]["Running"] is True
    host = running["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 256 << 20
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["LogConfig"]["Type"] == "none"
    assert [m.get("ReadOnly", False) for m in host["Mounts"]] == [False]
    assert api.containers(all=True, filters={"label": f"volkeep.volume={volume}"}) == []


def test_restore_and_backup_helpers_do_their_work_with_a_read_only_root(api, volumes, helper_image):
    """What the helpers of a restore (archive endpoint, chown, chmod, touch, find, rm) and of
    a backup (tar) do, each in a helper whose root file system is read-only."""
    import io

    from daemon.engine.helpers import WRITE_CAPABILITIES, Mount, helper_container, run_helper
    from daemon.engine.tarflavour import detect_flavour, volume_tar

    volume = volumes("work")
    mounts = [Mount(volume, "/dst", read_only=False)]
    content = io.BytesIO()
    with tarfile.open(fileobj=content, mode="w") as tar:
        directory = tarfile.TarInfo("./etc")
        directory.type, directory.mode, directory.uid = tarfile.DIRTYPE, 0o750, 1234
        tar.addfile(directory)
        member = tarfile.TarInfo("./etc/app.conf")
        member.size, member.uid = 6, 1234
        tar.addfile(member, io.BytesIO(b"debug\n"))
    with helper_container(api, helper_image, ["true"], mounts) as helper:
        assert api.put_archive(helper, "/dst", content.getvalue())
    root = mountpoint(api, volume)
    assert (root / "etc" / "app.conf").read_bytes() == b"debug\n"
    assert (root / "etc").stat().st_uid == 1234

    fix_root = 'chown 1234:1234 /dst && chmod 750 /dst && touch -m -d "@1700000000" /dst'
    code, _, stderr = run_helper(
        api, helper_image, ["sh", "-c", fix_root], mounts, capabilities=WRITE_CAPABILITIES
    )
    assert code == 0, stderr
    assert (root.stat().st_uid, root.stat().st_mode & 0o777) == (1234, 0o750)
    assert int(root.stat().st_mtime) == 1700000000

    listing = ["find", "/dst", "-mindepth", "1"]
    code, found, stderr = run_helper(api, helper_image, listing, [Mount(volume, "/dst")])
    assert code == 0, stderr
    assert sorted(found.decode().split()) == ["/dst/etc", "/dst/etc/app.conf"]

    archived = b"".join(volume_tar(api, helper_image, detect_flavour(api, helper_image), volume))
    with tarfile.open(fileobj=io.BytesIO(archived)) as tar:
        assert "etc/app.conf" in [name.removeprefix("./") for name in tar.getnames()]

    empty = [*listing, "-maxdepth", "1", "-exec", "rm", "-rf", "{}", "+"]
    code, _, stderr = run_helper(api, helper_image, empty, mounts, capabilities=WRITE_CAPABILITIES)
    assert code == 0, stderr
    assert list(root.iterdir()) == []

    code, _, stderr = run_helper(api, helper_image, ["touch", "/new-file"], mounts)
    assert code != 0 and "Read-only file system" in stderr


def test_stopping_aborts_an_extraction_into_a_helper_at_once_and_removes_the_helper(
    api, volumes, helper_image
):
    """The engine holds a helper's lock while its archive endpoint extracts: killing or
    removing the helper would wait for the whole upload. kill_helpers aborts it from our side."""
    import threading

    from daemon.engine.helpers import Mount, helper_container, kill_helpers, put_archive
    from daemon.errors import OperationError

    volume = volumes("extracting")

    def slow_archive():  # 30 s to send a member announced at 64 MiB
        member = tarfile.TarInfo("big")
        member.size = 64 << 20
        yield member.tobuf()
        for _ in range(600):
            time.sleep(0.05)
            yield bytes(64 << 10)

    uploading = threading.Event()
    outcome: dict[str, str] = {}

    def extract() -> None:
        mounts = [Mount(volume, "/dst", read_only=False)]
        try:
            with helper_container(api, helper_image, ["true"], mounts) as helper:
                uploading.set()
                put_archive(api, helper, "/dst", slow_archive())
        except OperationError as error:
            outcome["error"] = error.message

    extraction = threading.Thread(target=extract)
    extraction.start()
    assert uploading.wait(10)
    time.sleep(1)  # the engine is extracting
    began = time.monotonic()
    assert kill_helpers(api) == 1
    assert time.monotonic() - began < 1, "kill_helpers waited for the engine"
    extraction.join(10)
    assert not extraction.is_alive() and time.monotonic() - began < 5
    assert "was cancelled: volkeep is stopping" in outcome["error"]
    assert api.containers(all=True, filters={"label": f"volkeep.volume={volume}"}) == []


# A service that ignores SIGTERM: only the SIGKILL after the stop timeout ends it.
DEAF = "trap '' TERM; while true; do sleep 1; done"


def test_containers_that_ignore_sigterm_are_stopped_together_and_named(
    api, volumes, workspace, helper_image
):
    volume = volumes("deaf")
    ids = [start_service(api, helper_image, volume, name, DEAF) for name in ("one", "two")]
    workspace.write_config(
        {"app": {"volumes": [volume], "stop_containers": True, "stop_timeout": "3s"}}
    )

    backup = workspace.run("backup", "app")

    assert backup.returncode == 0, backup.stderr
    assert all(state(api, container)["Running"] for container in ids)
    downtimes = History(workspace.state_dir).downtimes("app", volume)
    assert sorted(d.container for d in downtimes) == [f"{volume}_one", f"{volume}_two"]
    # each stop took the whole timeout; one after the other, the second would have begun
    # when the first ended, 3 s later
    first, second = sorted(d.stopped for d in downtimes)
    assert (second - first).total_seconds() < 1.5
    log = events(backup.stderr)
    killed = [
        e for e in log if e["event"] == "container did not stop within its stop timeout; killed"
    ]
    assert sorted(e["container"] for e in killed) == [f"{volume}_one", f"{volume}_two"]
    assert all(e["stop_timeout_seconds"] == 3 and e["level"] == "warning" for e in killed)
    assert not [e for e in log if e["event"] == "the Docker engine is slow to answer"]
