"""What a one-shot command's start imports: a repeat backup of unchanged data takes about a
second, and the imports of modules it never uses were a tenth of it (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the libraries and modules of other commands, or of the daemon, that `volkeep backup` must
# not import at its start
NOT_AT_START = (
    "boto3",
    "botocore",
    "apprise",
    "prometheus_client",
    "jsonschema",
    "apscheduler.schedulers",
    "daemon.service",
    "daemon.observe",
    "daemon.actions.drill",
    "daemon.actions.restore",
    "daemon.actions.restore_host",
    "daemon.actions.export",
    "daemon.actions.listing",
    "daemon.actions.status",
    "daemon.actions.validate",
    "daemon.actions.collect",
    "daemon.actions.hostname",
    "daemon.actions.fleetdrill",
    "daemon.repository.verify",
    "daemon.config.json_schema",
    "shtab",
    "argparse_manpage",
    "rich",  # structlog's console tracebacks, when installed: not a dependency of volkeep
)


def modules_imported_by(statement: str) -> set[str]:
    """Given an import statement, return the modules a fresh interpreter holds after it
    (not those it keeps out: None in sys.modules)."""
    program = (
        f"import json, sys; {statement}; "
        "print(json.dumps([name for name, module in sys.modules.items() if module]))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(json.loads(shown.stdout))


def test_the_command_line_imports_no_other_commands_modules_at_start() -> None:
    imported = modules_imported_by("import daemon.cli.main")
    assert "daemon.actions.backup" in imported
    unwanted = sorted(
        name
        for name in imported
        if any(name == prefix or name.startswith(prefix + ".") for prefix in NOT_AT_START)
    )
    assert unwanted == []
