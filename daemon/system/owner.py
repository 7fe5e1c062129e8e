"""Which process owns a helper container or scratch volume, and whether it still lives.

Labels carry `host:pid:start-time`; a leftover is something whose owner is gone. The start
time guards against a reused pid; the host keeps volkeep from touching what another host
sharing the engine is doing.
"""

from __future__ import annotations

import os
import socket
from functools import cache


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[19].decode()  # field 22 of stat: start time in clock ticks after boot


@cache
def this_process() -> str:
    """Return this process's owner label value."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _running_here(owner: str) -> bool | None:
    """Given an owner label value, say whether that process runs now; None if it cannot be
    told (another host's, or an unreadable label)."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return _start_time(int(pid)) == start


def owner_is_alive(owner: str) -> bool:
    """Given an owner label value, say whether that process certainly still runs."""
    return _running_here(owner) is True


def owner_is_gone(owner: str) -> bool:
    """Given an owner label value, say whether that process has certainly ended.

    Owners on other hosts, or unreadable labels, are never considered gone.
    """
    return _running_here(owner) is False
