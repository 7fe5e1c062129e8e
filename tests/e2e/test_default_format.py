"""The format of a policy that does not say (docs/format-dedup.md, "Choosing the format"):
deduplicated, unless it encrypts without the identity file a deduplicated backup needs;
then one tar file, which `validate` says. A policy that asks for `format: dedup` where it
cannot work is refused with the config, before any backup.
"""

from __future__ import annotations

import re

import docker
import pytest
from pyrage import x25519

from tests.e2e.conftest import Workspace, mountpoint

pytestmark = pytest.mark.e2e


def archive_files(workspace: Workspace, volume: str) -> list[str]:
    """The names of the volume's files in the local storage, without the volume's prefix."""
    directory = workspace.archive_dir("app", volume)
    if not directory.exists():
        return []
    return sorted(re.sub(r"^.*-\d{8}T\d{6}Z(-\d+)?", "", path.name) for path in directory.iterdir())


def test_a_policy_that_does_not_say_its_format_deduplicates(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume = volumes("plain")
    (mountpoint(api, volume) / "file").write_text("data\n")
    workspace.write_config({"app": {"volumes": [volume]}})

    backup = workspace.run("backup", "app")

    assert backup.returncode == 0, backup.stderr
    assert archive_files(workspace, volume) == [".manifest.json", ".recipe.zst"]
    chunks = workspace.archive_dir("app", volume).parent / "_chunks"
    assert (chunks / "config").is_file() and any((chunks / "packs").rglob("*"))


def test_an_encrypted_policy_without_the_identity_that_does_not_say_writes_one_tar_file(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume = volumes("sealed")
    (mountpoint(api, volume) / "file").write_text("data\n")
    public = str(x25519.Identity.generate().to_public())
    workspace.write_config(
        {"app": {"volumes": [volume], "encryption": {"age": {"recipients": [public]}}}}
    )

    validated = workspace.run("validate")
    backup = workspace.run("backup", "app")

    assert validated.returncode == 0, validated.stderr
    [note] = [line for line in validated.stdout.splitlines() if "note:" in line]
    assert "policy app" in note and "format: tar" in note and "identity_file" in note
    assert backup.returncode == 0, backup.stderr
    assert archive_files(workspace, volume) == [".manifest.json", ".tar.zst.age"]


def test_format_dedup_encrypted_without_the_identity_is_refused_with_the_config(
    api: docker.APIClient, volumes, workspace: Workspace
) -> None:
    volume = volumes("sealed")
    (mountpoint(api, volume) / "file").write_text("data\n")
    public = str(x25519.Identity.generate().to_public())
    age = {"age": {"recipients": [public]}}
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup", "encryption": age}})

    validated = workspace.run("validate")
    backup = workspace.run("backup", "app")

    for refused in (validated, backup):
        assert refused.returncode == 2, refused.stdout + refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert re.search(r"volkeep\.yaml:\d+", line), line
        assert "policies.app.format" in line and "encryption.age.identity_file" in line
    assert archive_files(workspace, volume) == []
