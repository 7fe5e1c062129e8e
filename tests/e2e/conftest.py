"""End-to-end fixtures: the real Docker engine, real volumes, volkeep as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from tests.support.tree import differences, snapshot

ROOT = Path(__file__).resolve().parents[2]
HELPER_IMAGE = os.environ.get("VOLKEEP_TEST_HELPER_IMAGE", "volkeep-helper:busybox")


@pytest.fixture(scope="session")
def api() -> docker.APIClient:
    try:
        client = docker.APIClient(timeout=600)
        client.ping()
    except Exception as error:  # the suite cannot prove anything without an engine
        pytest.exit(f"end-to-end tests need a running Docker engine: {error}", returncode=3)
    return client


@pytest.fixture(scope="session")
def helper_image(api: docker.APIClient) -> str:
    try:
        api.inspect_image(HELPER_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([ROOT / "scripts" / "build-helper-image.sh", HELPER_IMAGE], check=True)
    return HELPER_IMAGE


@pytest.fixture
def volumes(api: docker.APIClient) -> Iterator[Callable[..., str]]:
    """A factory of uniquely named volumes, all removed after the test."""
    prefix = f"vkt_{uuid.uuid4().hex[:8]}_"

    def create(name: str, labels: dict[str, str] | None = None) -> str:
        full = prefix + name
        api.create_volume(full, labels=labels or {})
        return full

    yield create
    for container in api.containers(all=True, filters={"name": prefix}):
        api.remove_container(container["Id"], force=True)
    for volume in api.volumes().get("Volumes") or []:
        if volume["Name"].startswith(prefix):
            # a helper of a volkeep the test killed may still hold it (the next volkeep
            # command would remove it; there is none after the test)
            for user in api.containers(all=True, filters={"volume": volume["Name"]}):
                api.remove_container(user["Id"], force=True)
            api.remove_volume(volume["Name"], force=True)


@pytest.fixture
def postgres_image(api: docker.APIClient, helper_image: str) -> Iterator[str]:
    """The helper image, tagged as a postgres image (no image can be pulled here)."""
    repository = f"vkt-{uuid.uuid4().hex[:8]}/postgres"
    api.tag(helper_image, repository, "16")
    image = f"{repository}:16"
    yield image
    # by the reference they were created with: an "ancestor" filter would also match every
    # container of the helper image (the same image id)
    for container in api.containers(all=True):
        if container["Image"] == image:
            api.remove_container(container["Id"], force=True)
    api.remove_image(image)  # only the tag: the helper image keeps its own


def mountpoint(api: docker.APIClient, volume: str) -> Path:
    return Path(api.inspect_volume(volume)["Mountpoint"])


def assert_restores_whole(api: docker.APIClient, workspace: Workspace, source: str) -> None:
    """Restore the newest archive of `source` (policy "app") into a new volume and assert
    that the restored tree equals the source, object for object; remove it after."""
    target = source + "_restored"
    try:
        restore = workspace.run("restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 0, restore.stderr
        assert (
            differences(snapshot(mountpoint(api, source)), snapshot(mountpoint(api, target))) == []
        )
    finally:
        api.remove_volume(target, force=True)


@dataclass
class Workspace:
    """A config file, a state dir and a storage dir, and volkeep run as a subprocess."""

    root: Path
    helper_image: str
    # the format of the policies that do not say (None: volkeep's default); tests of the
    # one-file archive say tar with the marker `archive_format("tar")`
    archive_format: str | None = None

    @property
    def config(self) -> Path:
        return self.root / "volkeep.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def storage(self) -> Path:
        return self.root / "repo"

    def archive_dir(self, policy: str, volume: str, host: str | None = None) -> Path:
        """The directory of a volume's archives in the local storage (SPEC §4)."""
        return self.storage / (host or socket.gethostname()) / policy / volume

    def write_config(
        self,
        policies: dict[str, dict[str, object]],
        storages: dict[str, dict[str, object]] | None = None,
        **top: object,
    ) -> Path:
        """Write a policy file with a local storage named "local" (and `storages`)."""
        defaults: dict[str, object] = {"storage": "local", "helper_image": self.helper_image}
        if self.archive_format is not None:
            defaults["format"] = self.archive_format
        document: dict[str, object] = {
            "version": 1,
            "storage": {"local": {"type": "local", "path": str(self.storage)}, **(storages or {})},
            "policies": {name: {**defaults, **policy} for name, policy in policies.items()},
            **top,
        }
        self.config.write_text(yaml.safe_dump(document))
        return self.config

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "daemon",
            "--config", str(self.config),
            "--state-dir", str(self.state_dir),
            "--log-format", "json",
            *args,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )


@pytest.fixture
def workspace(request: pytest.FixtureRequest, tmp_path: Path, helper_image: str) -> Workspace:
    return Workspace(tmp_path, helper_image, archive_format_of(request.node))


def archive_format_of(node: pytest.Item) -> str | None:
    """Given a test, return the format its `archive_format` marker names (None: none)."""
    marker = node.get_closest_marker("archive_format")
    return str(marker.args[0]) if marker is not None else None


# S3: one real SeaweedFS for the session (SPEC §6), a fresh bucket for each test
from tests.support.seaweed import S3Bucket, SeaweedServer  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.kill()  # its data is thrown away with the temporary directory


@pytest.fixture
def s3_bucket(s3_server: SeaweedServer, tmp_path: Path) -> Iterator[S3Bucket]:
    """A new bucket, its credentials file, and `storage()` for a policy file's entry."""
    if not s3_server.running:  # a test that killed the server and failed before restarting
        s3_server.kill()
        s3_server.start()
    name = s3_server.create_bucket(f"vkt-{uuid.uuid4().hex[:12]}")
    credentials = s3_server.credentials_file(tmp_path / "s3.credentials")
    yield S3Bucket(s3_server, name, credentials)
    if s3_server.running:
        s3_server.delete_bucket(name)
