"""The state dir (run history, locks, stop journals, the daemon's pid): checked once, at the
start of a command, so that a bad one is one line naming the path and the fix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from daemon.errors import UsageError

# Commands that write the state dir; the others (validate, list, status) only read it, and
# work without one.
WRITERS = frozenset({"run", "backup", "restore", "drill", "prune"})


def check_state_dir(path: Path, *, write: bool) -> None:
    """Given the state dir and whether the command writes it, create it if it writes and it
    is missing, then make sure it is a directory this process can use.

    Raise UsageError naming the path, what is wrong and what to do about it.
    """
    fix = "choose another with --state-dir or $VOLKEEP_STATE_DIR"
    try:
        if write:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif not path.exists():
            return
        if not path.is_dir():
            raise UsageError(f"state dir {path} is not a directory; {fix}")
        if write:
            with tempfile.TemporaryFile(dir=path):
                pass
        elif not os.access(path, os.R_OK | os.X_OK):
            raise UsageError(f"state dir {path} is not readable; run as root or {fix}")
    except FileExistsError:
        raise UsageError(f"state dir {path} is not a directory; {fix}") from None
    except NotADirectoryError:
        raise UsageError(
            f"state dir {path} cannot be created: a part of its path is a file; {fix}"
        ) from None
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise UsageError(
            f"state dir {path} is not writable ({reason}); run as root or {fix}"
        ) from None
