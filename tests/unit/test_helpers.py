"""Helper containers without an engine: the host config they get, and that every way out of
`helper_container` removes what it made."""

from __future__ import annotations

import docker

from daemon.docker.helpers import READ_CAPABILITIES, Mount, helper_host_config

OFFLINE = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")


def test_a_helper_has_a_read_only_root_and_pids_and_memory_limits_and_nothing_else() -> None:
    mounts = [Mount("app_db", "/src"), Mount("scratch", "/dst", read_only=False)]
    host = helper_host_config(OFFLINE, mounts, READ_CAPABILITIES)
    assert host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 256 << 20
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["DAC_READ_SEARCH"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["LogConfig"] == {"Type": "none", "Config": {}}
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]] == [
        ("app_db", "/src", True),
        ("scratch", "/dst", False),
    ]
