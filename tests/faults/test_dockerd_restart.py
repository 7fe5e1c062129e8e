"""The Docker engine restarts in the middle of a backup and of a restore (issue 13): the
command fails in one clear line, and succeeds once the engine is back; afterwards the four
promises hold.

volkeep pauses itself at the middle of the operation (tests/faults/killpoints.py) while the
engine restarts under it, then goes on. The engine restarted is one of the test's own: a
second dockerd with its own data root, exec root, socket, containerd namespace and bridge,
so that a restart disturbs no other test that uses the machine's engine at that moment
(`--bridge=none` is not an option: that dockerd would delete docker0, the machine engine's
bridge). Its service container has `--restart unless-stopped`, as a production one would.
Skip these with `-m 'not dockerd_restart'`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.faults.conftest import (
    Ledger,
    Listed,
    LogBook,
    Things,
    Volkeep,
    check_the_promises,
    one_clean_error,
)
from tests.support.daemon_process import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.dockerd_restart]


@dataclass
class PrivateEngine:
    """A dockerd of the test's own, under `root` (and a short exec root in /run, for the
    length of its unix sockets)."""

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    process: subprocess.Popen[bytes] | None = None

    @property
    def exec_root(self) -> Path:
        return Path(f"/run/vkf-{self.tag}")

    @property
    def socket(self) -> str:
        return f"unix:///run/vkf-{self.tag}.sock"

    @property
    def bridge(self) -> str:
        """A bridge of its own: with `--bridge=none` dockerd would delete docker0, the bridge
        of the machine's engine."""
        return f"vkf{self.tag}"

    def command(self) -> list[str]:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            pytest.skip("no dockerd binary to start a private engine with")
        return [
            dockerd,
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.exec_root}",
            f"--pidfile=/run/vkf-{self.tag}.pid",
            f"--host={self.socket}",
            f"--containerd-namespace=vkf-{self.tag}",
            f"--containerd-plugins-namespace=vkf-{self.tag}-plugins",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--shutdown-timeout=2",
        ]

    def start_holding(self, api: docker.APIClient, image: str) -> None:
        """Start the engine and load `image` into it from the test's engine (there is no
        registry to pull it from)."""
        self.start()
        self.api().load_image(b"".join(api.get_image(image)))

    def start(self) -> None:
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # as `setsid dockerd` starts the machine's engine
            )
        wait_until(self.answers, "the private engine answering", timeout=60)

    def answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            docker.APIClient(base_url=self.socket, timeout=5).ping()
        except (docker.errors.DockerException, OSError, Exception):
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def restart(self) -> None:
        """Stop the engine as `systemctl restart docker` does, and start it again."""
        self.stop()
        self.start()

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]

    def api(self) -> docker.APIClient:
        return docker.APIClient(base_url=self.socket, timeout=600)

    def create_bridge(self) -> None:
        subnet = f"10.213.{int(self.tag[:2], 16)}"
        for command in (
            ["ip", "link", "add", "name", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{subnet}.1/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot make a bridge for a private engine: {result.stderr}")

    def remove_everything(self) -> None:
        """After `stop`: unmount what dockerd left mounted, remove its exec root and bridge."""
        roots = (str(self.root), str(self.exec_root))
        with open("/proc/self/mountinfo") as mounts:
            points = [line.split()[4] for line in mounts]
        for point in sorted(points, reverse=True):
            if point.startswith(roots):
                subprocess.run(["umount", "-l", point], check=False)
        subprocess.run(["rm", "-rf", str(self.exec_root)], check=False)
        for leftover in (f"/run/vkf-{self.tag}.sock", f"/run/vkf-{self.tag}.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)


@pytest.fixture(scope="module")
def engine(
    api: docker.APIClient, helper_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateEngine]:
    engine = PrivateEngine(tmp_path_factory.mktemp("dockerd"))
    engine.create_bridge()
    try:
        engine.start_holding(api, helper_image)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            for container in engine.api().containers(all=True):
                engine.api().remove_container(container["Id"], force=True)
        engine.stop()
        engine.remove_everything()


@dataclass
class Scene:
    things: Things
    volkeep: Volkeep
    ledger: Ledger
    volume: str
    service: str


@contextlib.contextmanager
def scene_on(engine: PrivateEngine, workspace: Workspace, logbook: LogBook, image: str):
    """A volume of the private engine with a service (restart: unless-stopped) and an older
    archive of it, proven."""
    things = Things(engine.api())
    try:
        volume = things.volume("data")
        (mountpoint(things.api, volume) / "old.bin").write_bytes(os.urandom(12 << 20))
        service = things.service(image, volume, "service", restart="unless-stopped")
        volkeep = Volkeep(workspace, logbook, env={"DOCKER_HOST": engine.socket})
        ledger = Ledger(volkeep, things)
        workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})
        volkeep.ok("backup", "app")
        ledger.claim({volume: ledger.tree(volume)})
        ledger.prove_all()
        yield Scene(things, volkeep, ledger, volume, service)
    finally:
        with contextlib.suppress(Exception):
            things.remove_all()


@dataclass
class Interrupted:
    scene: Scene
    older: Listed  # the archive there was before
    failed: subprocess.CompletedProcess[str]
    target: str = ""  # of a restore


# where each format's backup is well into the helper's tar stream
HALFWAY = {"tar": "half of the archive written", "dedup": "first pack stored, no index yet"}


@pytest.fixture(scope="module", params=sorted(HALFWAY))
def backup_under_restart(
    request: pytest.FixtureRequest,
    engine: PrivateEngine,
    logbook: LogBook,
    helper_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Interrupted]:
    """A backup of each format (the service stopped for it) paused halfway through the
    helper's tar stream while the engine restarts, then let go on."""
    workspace = Workspace(tmp_path_factory.mktemp("backup"), helper_image, request.param)
    with scene_on(engine, workspace, logbook, helper_image) as scene:
        (older,) = scene.ledger.listed()
        # more than the engine and volkeep buffer: the helper's tar still runs at the restart
        (mountpoint(scene.things.api, scene.volume) / "new.bin").write_bytes(os.urandom(48 << 20))
        backup = scene.volkeep.start("backup", "app", pause_at=HALFWAY[request.param])
        backup.wait_until_paused()
        assert not scene.things.running(scene.service)  # volkeep stopped it for the backup
        engine.restart()
        backup.signal(signal.SIGCONT)
        yield Interrupted(scene, older, backup.wait())


@pytest.fixture(scope="module")
def restore_under_restart(
    engine: PrivateEngine,
    logbook: LogBook,
    helper_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Interrupted]:
    """A restore into a new volume, paused halfway through the extraction while the engine
    restarts, then let go on."""
    workspace = Workspace(tmp_path_factory.mktemp("restore"), helper_image, "tar")
    with scene_on(engine, workspace, logbook, helper_image) as scene:
        (older,) = scene.ledger.listed()
        target = scene.things.fresh_name("restored")
        restore = scene.volkeep.start(
            "restore", "app", "--volume", scene.volume, "--archive", older.id, "--to", target,
            pause_at="half of the archive extracted",
        )  # fmt: skip
        restore.wait_until_paused()
        engine.restart()
        restore.signal(signal.SIGCONT)
        yield Interrupted(scene, older, restore.wait(), target)


def test_dockerd_restarting_mid_backup_then_the_next_backup_succeeds(
    backup_under_restart: Interrupted,
):
    scene, older = backup_under_restart.scene, backup_under_restart.older
    assert one_clean_error(backup_under_restart.failed).startswith(f"volkeep: app/{scene.volume}: ")

    scene.volkeep.ok("backup", "app")

    scene.ledger.claim({scene.volume: scene.ledger.tree(scene.volume)})
    assert len(check_the_promises(scene.ledger, [scene.service], still_listed=[older])) == 2


def test_dockerd_restarting_mid_backup_fails_it_in_one_clear_line(
    backup_under_restart: Interrupted,
):
    line = one_clean_error(backup_under_restart.failed)
    assert not line.rstrip().endswith(":"), line
    assert "Docker engine" in line, line


def test_dockerd_restarting_mid_restore_then_the_same_restore_succeeds(
    restore_under_restart: Interrupted,
):
    scene, older = restore_under_restart.scene, restore_under_restart.older
    assert restore_under_restart.failed.returncode == 1

    wait_until(lambda: scene.things.running(scene.service), "the service back (unless-stopped)")
    scene.ledger.restores(older, restore_under_restart.target)
    check_the_promises(scene.ledger, [scene.service], still_listed=[older])


def test_dockerd_restarting_mid_restore_fails_it_in_one_clear_line(
    restore_under_restart: Interrupted,
):
    line = one_clean_error(restore_under_restart.failed)
    assert not line.rstrip().endswith(":"), line
    assert line.startswith(f"volkeep: app/{restore_under_restart.scene.volume}"), line
    assert "Docker engine" in line, line
