"""Which machine this is: the id a host marker records (docs/fleet.md).

The source, first found: `$VOLKEEP_MACHINE_ID` (a container, whose image has no machine id
of its own, or a test that plays a second machine), `/etc/machine-id` (systemd's), else a
random id kept in the state dir (`machine-id`, made at first use). The marker records not
that id but one derived from it (HMAC-SHA256 keyed by it, of volkeep's own message): the
machine id is confidential (machine-id(5)), the derived one says nothing of it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

MACHINE_ID_FILE = Path("/etc/machine-id")
STATE_FILE = "machine-id"
ENVIRONMENT = "VOLKEEP_MACHINE_ID"
_PURPOSE = b"volkeep host marker"


def machine_id(state_dir: Path) -> str:
    """Given the state dir, return this machine's id as markers record it: 32 lowercase hex
    digits. Raise OSError if no source is set and the state dir cannot keep one."""
    raw = os.environ.get(ENVIRONMENT, "").strip() or _file_text(MACHINE_ID_FILE)
    if not raw:
        raw = _kept_in(state_dir / STATE_FILE)
    return hmac.new(raw.encode(), _PURPOSE, hashlib.sha256).hexdigest()[:32]


def _file_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _kept_in(path: Path) -> str:
    """Return the id kept in `path`, writing a new random one first if there is none."""
    kept = _file_text(path)
    if kept:
        return kept
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_text(secrets.token_hex(16) + "\n")
    draft.chmod(0o600)
    try:
        os.link(draft, path)  # whole or not at all: another process may make it first
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return _file_text(path)
