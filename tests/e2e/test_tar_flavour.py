"""Which tar a helper image has (daemon/engine/tarflavour.py, docs/internals.md "The
helper's tar") end to end: `tar --version` runs once per image id and is remembered in the
state dir, so a later backup starts no container for it; a tag pointed at another image is
asked again.

Containers are counted from the engine's own events, by the image reference they were
created with (a tag of this test alone).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import docker
import pytest

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.e2e.test_dedup import backup, export, manifest_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def helper_tag(api: docker.APIClient, helper_image: str) -> Iterator[str]:
    """A tag of this test alone, on the busybox helper image to begin with."""
    repository = f"vkt-{uuid.uuid4().hex[:8]}/helper"
    api.tag(helper_image, repository, "1")
    tag = f"{repository}:1"
    yield tag
    for container in api.containers(all=True):
        if container["Image"] == tag:
            api.remove_container(container["Id"], force=True)
    api.remove_image(tag)  # only the tag: the images keep their own


def containers_created(api: docker.APIClient, image: str, since: float) -> int:
    """The containers the engine created from `image` (that reference) since then."""
    events = api.events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "image": image},
        decode=True,
    )
    return sum(1 for event in events if event["Actor"]["Attributes"].get("image") == image)


def written(api: docker.APIClient, volume: str) -> None:
    """Write the volume's one file, then let its second pass: a file whose ctime is in the
    second its backup lists it is "racy" and read again by the next backup, which would
    start the tar helper's container beside the listing's."""
    (mountpoint(api, volume) / "file.txt").write_text("the same\n")
    time.sleep(1.1)


def test_a_repeat_backup_starts_no_container_to_ask_the_helper_image_for_its_tar(
    api: docker.APIClient, volumes, workspace: Workspace, helper_tag: str
) -> None:
    volume = volumes("remembered")
    written(api, volume)
    workspace.helper_image = helper_tag
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    began = time.time()
    backup(workspace)
    first = containers_created(api, helper_tag, began)
    time.sleep(1.1)  # the events' clock is in seconds
    began = time.time()
    second = backup(workspace)

    assert first == 2  # `tar --version`, then the listing and tar
    assert containers_created(api, helper_tag, began) == 1  # the listing alone
    assert manifest_of(workspace, volume, second)["tar"]["flavour"] == "busybox"


def test_a_helper_tag_pointed_at_another_image_is_asked_for_its_tar_again(
    api: docker.APIClient, volumes, workspace: Workspace, helper_tag: str
) -> None:
    volume = volumes("repointed")
    (mountpoint(api, volume) / "file.txt").write_text("the same\n")
    workspace.helper_image = helper_tag
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    first = backup(workspace)
    subprocess.run([ROOT / "scripts" / "build-helper-image.sh", "--gnu-tar"], check=True)
    api.tag("volkeep-helper:gnutar", *helper_tag.split(":"), force=True)
    second = backup(workspace)

    before, after = (manifest_of(workspace, volume, archive) for archive in (first, second))
    assert before["tar"]["flavour"] == "busybox"
    assert after["tar"]["flavour"] == "gnu"
    assert after["files"]["reused"] == 0  # another image: every file read again


def test_a_deduplicated_backup_through_a_gnu_tar_image_is_written_by_gnu_tar(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    # the image's sh is busybox's, whose `exec tar` would run its own tar applet
    subprocess.run([ROOT / "scripts" / "build-helper-image.sh", "--gnu-tar"], check=True)
    volume = volumes("gnu")
    (mountpoint(api, volume) / "file.txt").write_text("read by GNU tar\n")
    workspace.helper_image = "volkeep-helper:gnutar"
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    first = backup(workspace)
    second = backup(workspace)

    for archive in (first, second):
        summary = manifest_of(workspace, volume, archive)
        assert summary["tar"]["flavour"] == "gnu"
        assert summary["files"]["read"] == summary["entries"]["count"] == 2
        tar = export(workspace, volume, archive)
        assert summary["tar"]["sha256"] is None and b"read by GNU tar\n" in tar
        assert b"ustar\x00" in tar and b"PaxHeader" in tar  # POSIX format: GNU tar's


def test_a_damaged_record_of_tar_versions_is_asked_again_and_written_anew(
    api: docker.APIClient, volumes, workspace: Workspace, helper_tag: str
) -> None:
    volume = volumes("damaged")
    written(api, volume)
    workspace.helper_image = helper_tag
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}})
    backup(workspace)
    record = workspace.state_dir / "tar-versions.json"
    image_id = api.inspect_image(helper_tag)["Id"]
    assert "busybox" in json.loads(record.read_text())["images"][image_id]
    record.write_text('{"version": 1, "images": {')  # cut short
    time.sleep(1.1)  # the events' clock is in seconds
    began = time.time()
    second = backup(workspace)

    assert containers_created(api, helper_tag, began) == 2  # `tar --version`, the listing
    assert manifest_of(workspace, volume, second)["tar"]["flavour"] == "busybox"
    assert "busybox" in json.loads(record.read_text())["images"][image_id]
