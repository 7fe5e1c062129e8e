"""Bad input, as a new operator types it: the right exit code, one line naming the thing at
fault, never an internal error or a Python repr; and `list` never hides an archive."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
import yaml

from tests.e2e.conftest import Workspace, mountpoint

pytestmark = pytest.mark.e2e

PYTHON_REPR = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Interrupt)\(|Traceback|internal error")


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("volkeep:")]
    assert len(lines) == 1, stderr
    assert not PYTHON_REPR.search(stderr), stderr
    return lines[0]


@pytest.fixture
def configured(api, volumes, workspace: Workspace) -> tuple[Workspace, str]:
    source = volumes("operator")
    (mountpoint(api, source) / "file").write_text("content")
    workspace.write_config({"app": {"volumes": [source]}})
    return workspace, source


def bad_inputs(workspace: Workspace, source: str) -> dict[str, tuple[list[str], int, str]]:
    """Each case: the arguments, the exit code, a word the one line must hold."""
    a_file = workspace.root / "a-file"
    a_file.write_text("not a directory")
    return {
        "state dir is a file": (["--state-dir", str(a_file), "backup", "app"], 2, str(a_file)),
        "state dir under a file": (
            ["--state-dir", str(a_file / "state"), "backup", "app"],
            2,
            str(a_file),
        ),
        "unknown policy": (["backup", "nope"], 2, "nope"),
        "volume with a slash": (["restore", "app", "--volume", "a/b"], 2, "a/b"),
        "volume that climbs": (["drill", "app", "--volume", ".."], 2, ".."),
        "target with a slash": (["restore", "app", "--volume", source, "--to", "../x"], 2, "../x"),
        "unknown storage": (["list", "app", "--storage", "elsewhere"], 2, "elsewhere"),
        "unknown archive": (["restore", "app", "--volume", source, "--archive", "2020"], 1, "2020"),
        "volume the policy does not cover": (
            ["backup", "app", "--volume", "other_vol"],
            2,
            "other_vol",
        ),
        "files without a volume": (["list", "app", "--files"], 2, "--volume"),
        "restore of a volume the policy does not cover": (
            ["restore", "app", "--volume", "other_vol"],
            2,
            "other_vol",
        ),
        "path outside the volume": (
            ["restore", "app", "--volume", source, "--path", "../etc/passwd"],
            2,
            "'../etc/passwd' must stay inside the volume",
        ),
        "files outside the volume": (
            ["list", "app", "--volume", source, "--files", "/etc"],
            2,
            "'/etc' must stay inside the volume",
        ),
    }


def test_bad_command_lines_are_one_line_with_the_right_exit_code(configured):
    workspace, source = configured
    for case, (arguments, code, named) in bad_inputs(workspace, source).items():
        result = workspace.run(*arguments)
        assert result.returncode == code, (case, result.stderr)
        assert named in one_line(result.stderr), case


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"volumes": ["v" * 300]}, "invalid volume name"),
        ({"volumes": ["ok_vol"], "helper_image": "x" * 10_000}, "invalid image reference"),
        ({"volumes": ["ok_vol"], "storage": ["local", "local"]}, "listed twice"),
    ],
)
def test_configs_that_cannot_run_fail_validate(workspace, policy, named):
    workspace.write_config({"app": policy})
    result = workspace.run("validate")
    assert result.returncode == 2
    assert named in result.stderr and "volkeep.yaml:" in result.stderr
    assert not PYTHON_REPR.search(result.stderr)


def test_a_policy_name_too_long_for_the_file_system_fails_validate(workspace):
    workspace.config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "storage": {"local": {"type": "local", "path": str(workspace.storage)}},
                "policies": {"p" * 300: {"volumes": ["ok_vol"], "storage": "local"}},
            }
        )
    )
    result = workspace.run("validate")
    assert result.returncode == 2 and "invalid policy name" in result.stderr


@pytest.mark.archive_format("tar")
def test_list_shows_a_corrupt_manifest_and_a_missing_archive_file(configured):
    workspace, source = configured
    for _ in range(3):
        assert workspace.run("backup", "app").returncode == 0
    directory = workspace.archive_dir("app", source)
    manifests = sorted(directory.glob("*.manifest.json"))
    assert len(manifests) >= 2, "ids are whole seconds: take more time between backups"
    manifests[0].write_text("{ not json")
    # ids made in the same second differ by a suffix: the archive is named by the whole id
    gone = directory / manifests[1].name.replace(".manifest.json", ".tar.zst")
    gone.unlink()

    table = workspace.run("list", "app")
    listed = json.loads(workspace.run("list", "app", "--json").stdout)

    assert table.returncode == 0
    assert "UNREADABLE" in table.stdout and "FILE MISSING" in table.stdout
    assert table.stderr.count("volkeep: warning:") == 2
    states = sorted(entry["state"] for entry in listed)
    assert states.count("UNREADABLE") == 1 and states.count("FILE MISSING") == 1
    assert not PYTHON_REPR.search(table.stdout + table.stderr)


def test_validate_catches_a_missing_helper_image_and_a_storage_that_is_a_file(workspace):
    a_file = workspace.root / "storage-file"
    a_file.write_text("not a directory")
    workspace.write_config({"app": {"volumes": ["ok_vol"], "helper_image": "vkt-absent:1"}})
    missing = workspace.run("validate")
    assert missing.returncode == 2
    assert "vkt-absent:1" in missing.stderr and "volkeep.yaml:" in missing.stderr

    workspace.write_config(
        {"app": {"volumes": ["ok_vol"], "storage": "elsewhere"}},
        storages={"elsewhere": {"type": "local", "path": str(a_file / "repo")}},
    )
    blocked = workspace.run("validate")
    assert blocked.returncode == 2
    assert f"{a_file} is not a directory" in blocked.stderr
    assert not PYTHON_REPR.search(missing.stderr + blocked.stderr)


def test_a_running_database_backed_up_live_is_warned_of_in_validate_and_backup(
    api, volumes, workspace: Workspace, postgres_image: str
):
    source = volumes("pgdata")
    (mountpoint(api, source) / "PG_VERSION").write_text("16\n")
    server = source + "_server"  # removed with the test's volumes
    api.create_container(
        postgres_image,
        command=["sleep", "600"],
        name=server,
        host_config=api.create_host_config(binds={source: {"bind": "/data", "mode": "rw"}}),
    )
    api.start(server)
    workspace.write_config({"app": {"volumes": [source]}})

    validated = workspace.run("validate")
    backed_up = workspace.run("backup", "app")

    assert validated.returncode == 0, validated.stderr
    [warning] = [line for line in validated.stdout.splitlines() if "warning:" in line]
    assert source in warning and server in warning and postgres_image in warning
    assert "stop_containers: true" in warning and "before hook" in warning
    assert backed_up.returncode == 0, backed_up.stderr
    [logged] = [
        record
        for record in map(json.loads, backed_up.stderr.splitlines())
        if record["level"] == "warning" and "database" in record["event"]
    ]
    assert (logged["volume"], logged["container"], logged["image"]) == (
        source,
        server,
        postgres_image,
    )
    assert "stop_containers: true" in logged["advice"]

    workspace.write_config({"app": {"volumes": [source], "stop_containers": True}})
    stopped = workspace.run("validate")
    assert stopped.returncode == 0, stopped.stderr
    assert "warning:" not in stopped.stdout
    assert f"stops during the backup of {source}: {server}" in stopped.stdout


def test_list_files_into_a_reader_that_leaves_early_ends_quietly(api, configured):
    workspace, source = configured
    root = mountpoint(api, source)
    for index in range(3000):  # far more than a pipe holds
        (root / f"file-{index:05}.txt").write_text("x")
    assert workspace.run("backup", "app").returncode == 0

    reader = subprocess.Popen(
        workspace.command("list", "app", "--volume", source, "--files"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = reader.stdout.readline()  # as `| head -1` does: one line, then gone
    reader.stdout.close()
    errors = reader.stderr.read()
    code = reader.wait(timeout=60)

    assert first.split()[0] in ("dir", "file")
    assert code == 128 + signal.SIGPIPE, errors
    assert "volkeep:" not in errors and not PYTHON_REPR.search(errors), errors


def test_a_failed_backup_off_a_terminal_is_told_in_one_line(workspace: Workspace):
    workspace.write_config({"app": {"volumes": ["vkt_never_created"]}})

    result = workspace.run("backup", "app")

    assert result.returncode == 1
    assert result.stdout == ""
    text = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert text == ["volkeep: app/vkt_never_created: no such Docker volume"], result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [r["event"] for r in records if r["level"] == "error"] == ["backup failed"]


def test_volumes_removed_from_the_config_leave_status_unless_archives_remain(
    api, volumes, workspace: Workspace
):
    kept, other = volumes("kept"), volumes("other")
    (mountpoint(api, kept) / "file").write_text("content")
    workspace.write_config({"app": {"volumes": [kept, "vkt_never_created"]}})
    assert workspace.run("backup", "app").returncode == 1  # the missing volume failed

    workspace.write_config({"app": {"volumes": [other]}})
    result = workspace.run("status", "--json")

    assert result.returncode == 0, result.stderr
    shown = {
        volume["name"]: volume["in_config"]
        for volume in json.loads(result.stdout)["policies"][0]["volumes"]
    }
    assert shown == {kept: False, other: True}
    text = workspace.run("status").stdout
    assert "vkt_never_created" not in text
    [row] = [line for line in text.splitlines() if kept in line]
    assert "removed from the config" in row and "FAILED" not in row
