"""Run history: every operation with its outcome, in SQLite in the state dir.

Losing the state dir loses this history, never the ability to list, restore or drill:
the storage describes itself (SPEC §2).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from daemon.errors import VolkeepError

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,          -- backup, restore, drill, prune
    policy TEXT NOT NULL,
    volume TEXT NOT NULL,
    archive TEXT,
    started TEXT NOT NULL,       -- ISO 8601, UTC
    finished TEXT,
    outcome TEXT NOT NULL,       -- running, ok, failed
    bytes INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS operations_by_volume ON operations (policy, volume, kind, started);
"""


@dataclass
class Operation:
    """What an action fills in while it runs."""

    archive: str | None = None
    bytes: int | None = None


class History:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / "history.sqlite"

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.executescript(SCHEMA)
        return connection

    @contextmanager
    def operation(self, kind: str, policy: str, volume: str) -> Iterator[Operation]:
        """Record the operation run in the block: started now, then its outcome and error."""
        operation = Operation()
        with closing(self._connect()) as connection, connection:
            row = connection.execute(
                "INSERT INTO operations (kind, policy, volume, started, outcome) "
                "VALUES (?, ?, ?, ?, 'running')",
                (kind, policy, volume, datetime.now(UTC).isoformat()),
            ).lastrowid
        outcome, error = "failed", None
        try:
            yield operation
            outcome = "ok"
        except VolkeepError as failure:
            error = str(failure)
            raise
        except BaseException as failure:
            error = f"interrupted: {failure!r}"
            raise
        finally:
            with closing(self._connect()) as connection, connection:
                connection.execute(
                    "UPDATE operations SET finished = ?, outcome = ?, archive = ?, bytes = ?, "
                    "error = ? WHERE id = ?",
                    (
                        datetime.now(UTC).isoformat(),
                        outcome,
                        operation.archive,
                        operation.bytes,
                        error,
                        row,
                    ),
                )
