"""volkeep whose drills meet a scratch volume one byte off: `python -m
tests.support.scratch_edit PATH ARGS...` runs `volkeep ARGS`; each time a drill has restored
an archive into its scratch volume (a real volume of the real engine), the middle byte of
PATH in it is inverted, its size and mtime kept, before the drill reads the volume back
(test-only; volkeep's own code knows nothing of it)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import docker

import daemon.actions.drill
from daemon.cli.main import main


def invert_one_byte(path: str) -> None:
    original = daemon.actions.drill.extract_into

    @functools.wraps(original)
    def wrapper(api: docker.APIClient, archive: Any, image: str, target: str, *rest: Any) -> None:
        original(api, archive, image, target, *rest)
        edited = Path(api.inspect_volume(target)["Mountpoint"]) / path
        status = edited.stat()
        with open(edited, "r+b") as file:
            file.seek(status.st_size // 2)
            byte = file.read(1)
            file.seek(status.st_size // 2)
            file.write(bytes([byte[0] ^ 0xFF]))
        os.utime(edited, ns=(status.st_atime_ns, status.st_mtime_ns))

    daemon.actions.drill.extract_into = wrapper  # type: ignore[assignment]


if __name__ == "__main__":
    invert_one_byte(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
