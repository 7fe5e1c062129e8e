"""The one atomic-publish step for a file on a local file system (SPEC promise 1)."""

from __future__ import annotations

import os
from pathlib import Path


def publish(temporary: Path, final: Path, *, exclusive: bool = False) -> None:
    """Given a temporary file already synced, move it into place as `final` and sync the
    directory. With `exclusive`, never replace an existing file: raise FileExistsError."""
    if exclusive:
        try:
            os.link(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
    else:
        os.replace(temporary, final)
    fsync_directory(final.parent)


def fsync_directory(directory: Path) -> None:
    """Sync a directory, so that a rename or a new entry in it survives a crash."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
