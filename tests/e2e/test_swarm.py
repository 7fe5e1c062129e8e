"""Docker Swarm (issue 21, item 8): the containers of a Swarm service are not stopped for a
backup (Swarm would replace them) but their service scaled to 0 and back, crash-safely; a
service volkeep cannot scale is refused in one line; and deploy/swarm/stack.yml runs volkeep,
from the image scripts/build-volkeep-image.sh builds with no registry, as a global service
that backs up its node's volumes.

The swarm is a single node on loopback, on a private engine (`docker swarm init` would turn
the machine's engine into a manager for every other test). Skip with `-m 'not swarm'`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from docker.types import ContainerSpec, Mount, ServiceMode, TaskTemplate
from pyrage import x25519

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.faults.test_dockerd_restart import PrivateEngine
from tests.support.daemon_process import wait_until
from tests.support.seaweed import S3Bucket
from tests.support.tree import differences, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

VOLKEEP_IMAGE = "volkeep:test"
SECOND = 1_000_000_000  # nanoseconds
STACK_LABEL = "com.docker.stack.namespace"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def swarm(
    api: docker.APIClient, helper_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateEngine]:
    """A private engine, the manager of a single-node swarm on loopback, holding the helper
    image (there is no registry)."""
    engine = PrivateEngine(tmp_path_factory.mktemp("swarm"))
    engine.create_bridge()
    try:
        engine.start_holding(api, helper_image)
        private = engine.api()
        address = f"127.0.0.1:{free_port()}"
        private.init_swarm(advertise_addr=address, listen_addr=address)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            engine.api().leave_swarm(force=True)
            for container in engine.api().containers(all=True):
                engine.api().remove_container(container["Id"], force=True)
        engine.stop()
        engine.remove_everything()
        # the bridge of the swarm's gateway, which the private engine made on the machine
        subprocess.run(["ip", "link", "delete", "docker_gwbridge"], capture_output=True)


def fresh(name: str) -> str:
    return f"vkt_{uuid.uuid4().hex[:8]}_{name}"


def volume_with_files(private: docker.APIClient, name: str, size: int = 48 << 20) -> str:
    """A new volume of the private engine with a few small files and more random data than
    the engine and volkeep buffer: the helper's tar still runs when the archive has its
    first half of a kill point's worth (tests.faults.killpoints.HALF)."""
    volume = fresh(name)
    private.create_volume(volume)
    root = mountpoint(private, volume)
    (root / "big.bin").write_bytes(os.urandom(size))
    (root / "notes").mkdir()
    (root / "notes" / "today.txt").write_text("the service writes here\n")
    return volume


def start_service(private: docker.APIClient, volume: str, mode: ServiceMode, expected: int) -> str:
    """Create a service (the helper image sleeping) that mounts the volume; wait until
    `expected` of its containers run; return its name."""
    name = fresh("service").replace("_", "-")
    task = TaskTemplate(
        ContainerSpec(
            "volkeep-helper:busybox",
            ["sleep", "3600"],
            mounts=[Mount("/data", volume, type="volume")],
            stop_grace_period=SECOND,  # sleep as PID 1 ignores SIGTERM: killed after 1 s
        )
    )
    private.create_service(task, name=name, mode=mode)
    wait_until(lambda: len(running(private, name)) == expected, f"{expected} tasks of {name}")
    return name


def running(private: docker.APIClient, service: str) -> list[str]:
    """Return the ids of the service's containers that run on the engine."""
    found = private.containers(filters={"label": f"com.docker.swarm.service.name={service}"})
    return [container["Id"] for container in found]


def replicas(private: docker.APIClient, service: str) -> int:
    count: int = private.inspect_service(service)["Spec"]["Mode"]["Replicated"]["Replicas"]
    return count


def volkeep(
    workspace: Workspace,
    engine: PrivateEngine,
    *args: str,
    kill_point: str | None = None,
    pause: bool = False,
) -> subprocess.Popen[str]:
    """Start volkeep against the private engine; with `kill_point`, through
    tests.faults.killpoints, which kills it there (with `pause`, stops it there)."""
    command = workspace.command(*args)
    environment = {**os.environ, "DOCKER_HOST": engine.socket}
    if kill_point is not None:
        command[2] = "tests.faults.killpoints"  # instead of `-m daemon`
        environment["VOLKEEP_TEST_KILL_POINT"] = kill_point
    if pause:
        environment["VOLKEEP_TEST_POINT_ACTION"] = "pause"
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environment,
    )


def finished(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=300)
    assert "Traceback" not in stderr, stderr
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(
    workspace: Workspace, engine: PrivateEngine, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run volkeep against the private engine until it ends."""
    return finished(volkeep(workspace, engine, *args))


def paused(process: subprocess.Popen[str]) -> bool:
    """Say whether the process stopped itself (SIGSTOP): state T in /proc."""
    assert process.poll() is None, process.communicate()
    return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def journal(workspace: Workspace, volume: str) -> dict[str, object] | None:
    path = workspace.state_dir / "stopped" / f"{volume}.json"
    return json.loads(path.read_text()) if path.exists() else None


# "half of the archive written" is a kill point of the one-file archive's write
@pytest.mark.archive_format("tar")
def test_a_swarm_service_is_scaled_to_zero_for_its_volumes_backup_and_back_after(
    swarm: PrivateEngine, workspace: Workspace
):
    private = swarm.api()
    volume = volume_with_files(private, "data")
    service = start_service(private, volume, ServiceMode("replicated", 2), expected=2)
    workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})

    validate = run(workspace, swarm, "validate")
    assert validate.returncode == 0, validate.stderr
    assert (
        f"scales Swarm service {service} (2 replicas) to 0 during the backup of {volume}"
        in validate.stdout
    )

    halfway = "half of the archive written"
    backup = volkeep(workspace, swarm, "backup", "app", kill_point=halfway, pause=True)
    wait_until(lambda: paused(backup), "the backup paused halfway through the archive")
    during = (replicas(private, service), running(private, service))
    backup.send_signal(signal.SIGCONT)
    done = finished(backup)

    assert done.returncode == 0, done.stderr
    assert during == (0, [])  # scaled to 0, none of its containers on the volume
    assert replicas(private, service) == 2
    wait_until(lambda: len(running(private, service)) == 2, "the service's tasks back")
    assert journal(workspace, volume) is None
    target = f"{volume}_restored"
    restore = run(workspace, swarm, "restore", "app", "--volume", volume, "--to", target)
    assert restore.returncode == 0, restore.stderr
    restored = snapshot(mountpoint(private, target))
    assert differences(snapshot(mountpoint(private, volume)), restored) == []


# "half of the archive written" is a kill point of the one-file archive's write
@pytest.mark.archive_format("tar")
def test_a_service_scaled_to_zero_by_a_volkeep_that_died_is_scaled_back_at_the_next_start(
    swarm: PrivateEngine, workspace: Workspace
):
    private = swarm.api()
    volume = volume_with_files(private, "crash")
    service = start_service(private, volume, ServiceMode("replicated", 3), expected=3)
    workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})

    killed = finished(
        volkeep(workspace, swarm, "backup", "app", kill_point="half of the archive written")
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert replicas(private, service) == 0
    left = journal(workspace, volume)
    assert left is not None
    assert [(s["name"], s["replicas"]) for s in left["services"]] == [(service, 3)]  # type: ignore[attr-defined]
    listing = run(workspace, swarm, "list", "app")  # any command starts them again first
    assert listing.returncode == 0, listing.stderr
    assert replicas(private, service) == 3
    assert journal(workspace, volume) is None
    wait_until(lambda: len(running(private, service)) == 3, "the service's tasks back")


def test_a_global_service_on_the_volume_refuses_its_backup_in_one_line_and_keeps_running(
    swarm: PrivateEngine, workspace: Workspace
):
    private = swarm.api()
    volume = volume_with_files(private, "global")
    service = start_service(private, volume, ServiceMode("global"), expected=1)
    before = running(private, service)
    workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})
    refusal = (
        f"belongs to the global Swarm service {service}, which volkeep cannot scale to 0 "
        "(only a replicated service can be)"
    )

    validate = run(workspace, swarm, "validate")
    backup = run(workspace, swarm, "backup", "app")

    assert validate.returncode == 0, validate.stderr
    assert f"warning: the backup of {volume} is refused: container " in validate.stdout
    assert refusal in validate.stdout
    assert backup.returncode == 1
    last = backup.stderr.splitlines()[-1]
    assert last.startswith(f"volkeep: app/{volume}: container ") and refusal in last, last
    assert running(private, service) == before  # the same container, never stopped
    assert journal(workspace, volume) is None
    listing = run(workspace, swarm, "list", "app", "--json")
    assert json.loads(listing.stdout) == []


@pytest.fixture(scope="session")
def volkeep_image(api: docker.APIClient) -> str:
    """volkeep's image, built as an operator without a registry builds it (kept between
    sessions: the script builds only when volkeep's sources changed)."""
    subprocess.run([ROOT / "scripts" / "build-volkeep-image.sh", VOLKEEP_IMAGE], check=True)
    return VOLKEEP_IMAGE


def test_the_swarm_stack_runs_volkeep_on_the_node_and_backs_up_its_volumes(
    swarm: PrivateEngine,
    api: docker.APIClient,
    volkeep_image: str,
    s3_bucket: S3Bucket,
    workspace: Workspace,
    tmp_path: Path,
):
    private = swarm.api()
    private.load_image(b"".join(api.get_image(volkeep_image)))
    volume = volume_with_files(private, "stacked", size=1 << 20)
    identity = x25519.Identity.generate()
    files = tmp_path / "deploy"
    files.mkdir()
    (files / "age-identity.txt").write_text(f"{identity}\n")
    offsite = s3_bucket.storage()
    policy = {
        "volumes": [volume],
        "schedule": "@every 5s",
        "drill": {"schedule": "@every 5s"},  # needs the identity: the age-identity secret
        "helper_image": "volkeep-helper:busybox",
        "encryption": {
            "age": {
                "recipients": [str(identity.to_public())],
                "identity_file": "/run/secrets/age-identity.txt",
            }
        },
    }
    document = {
        "version": 1,
        "storage": {
            "local": {"type": "local", "path": "/var/backups/volkeep"},
            "offsite": {**offsite, "credentials_file": "/run/secrets/s3.credentials"},
        },
        "policies": {"app": {**policy, "storage": ["local", "offsite"]}},
    }
    (files / "volkeep.yaml").write_text(yaml.safe_dump(document))
    state = tmp_path / "state"
    storage = tmp_path / "backups"
    state.mkdir()
    storage.mkdir()
    stack = fresh("stack").replace("_", "-")
    suffix = stack.split("-")[1]
    environment = {
        **os.environ,
        "DOCKER_HOST": swarm.socket,
        "VOLKEEP_IMAGE": volkeep_image,
        "VOLKEEP_STATE_DIR": str(state),
        "VOLKEEP_STORAGE_DIR": str(storage),
        "VOLKEEP_DOCKER_SOCKET": swarm.socket.removeprefix("unix://"),
        "VOLKEEP_POLICY_FILE": str(files / "volkeep.yaml"),
        "VOLKEEP_POLICY_NAME": f"volkeep-policy-{suffix}",
        "VOLKEEP_S3_CREDENTIALS": str(s3_bucket.credentials_file),
        "VOLKEEP_S3_CREDENTIALS_NAME": f"volkeep-s3-{suffix}",
        "VOLKEEP_AGE_IDENTITY": str(files / "age-identity.txt"),
        "VOLKEEP_AGE_IDENTITY_NAME": f"volkeep-age-{suffix}",
    }
    deploy = ["docker", "stack", "deploy", "-c", str(ROOT / "deploy/swarm/stack.yml"), stack]
    # the same storages and key seen from the machine, to list and restore what the node wrote
    (workspace.root / "identity.txt").write_text(f"{identity}\n")
    policy["encryption"]["age"]["identity_file"] = str(workspace.root / "identity.txt")  # type: ignore[index]
    workspace.write_config(
        {"app": {**policy, "storage": ["local", "offsite"]}},
        storages={"local": {"type": "local", "path": str(storage)}, "offsite": offsite},
    )
    try:
        subprocess.run(deploy, env=environment, check=True, capture_output=True, text=True)

        seen: list[set[tuple[str, str]]] = []

        def drilled_and_in_both() -> bool:
            """Say whether archives of the volume are in both storages, and the node drilled
            one (from the first storage, the drill's default)."""
            listing = run(workspace, swarm, "list", "app", "--json")
            archives = json.loads(listing.stdout) if listing.returncode == 0 else []
            seen.append({(a["storage"], a["drill"]["verdict"]) for a in archives})
            storages = {storage for storage, _ in seen[-1]}
            return storages == {"local", "offsite"} and ("local", "passed") in seen[-1]

        with contextlib.suppress(AssertionError):
            wait_until(drilled_and_in_both, "an archive drilled", timeout=120)
        tasks = private.containers(filters={"label": f"{STACK_LABEL}={stack}"})
        assert len(tasks) == 1  # one task: the node's
        said = private.logs(tasks[0]["Id"], tail=30).decode(errors="replace")
        assert drilled_and_in_both(), f"{seen[-1]}\nthe task's log:\n{said}"
        assert "identity file is readable by others" not in said  # the secret's mode
        target = f"{volume}_restored"
        restore = run(workspace, swarm, "restore", "app", "--volume", volume, "--to", target)
        assert restore.returncode == 0, restore.stderr
        restored = snapshot(mountpoint(private, target))
        assert differences(snapshot(mountpoint(private, volume)), restored) == []
    finally:
        subprocess.run(["docker", "stack", "rm", stack], env=environment, capture_output=True)
        wait_until(
            lambda: not private.containers(filters={"label": f"{STACK_LABEL}={stack}"}),
            "the stack's task stopped",
        )
