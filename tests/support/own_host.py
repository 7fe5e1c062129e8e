"""volkeep as a process of a host of its own (`on_a_host_of_its_own`): what it leaves
behind when it dies is a leftover to the volkeep processes of that host alone.

Every volkeep process removes the helpers and scratch volumes of dead volkeep processes of
its host, whoever started them (daemon.engine.leftovers): on a machine where other suites
run volkeep against the same engine, one of theirs may remove a test's leftover before the
test looks at it, or before the volkeep the test runs gets to it. Under another host name
(a UTS namespace of its own, `unshare --uts`) the others take its leftovers for another
host's, which they never touch (daemon.system.owner); the test's own volkeep commands run
under the same name and remove them. Its storage path stays the machine's when the policy
file pins `daemon.host` (`pinned_host`).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence


def own_host_name() -> str:
    """Return a host name of this test alone."""
    return f"vkt-{uuid.uuid4().hex[:12]}"


def on_a_host_of_its_own(host: str, command: Sequence[str]) -> list[str]:
    """Given a host name and a command, return the argv that runs the command with that
    host name (the host name and the command are arguments, never part of the script)."""
    script = 'hostname "$1" && shift && exec "$@"'
    return ["unshare", "--uts", "sh", "-c", script, "sh", host, *command]


def pinned_host() -> dict[str, str]:
    """Return the policy file's `daemon` section that keeps the storage path of this
    machine's host name whatever the host name volkeep runs under."""
    return {"host": socket.gethostname()}
