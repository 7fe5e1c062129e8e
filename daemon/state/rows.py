"""Rows inserted into SQLite many to a statement."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import chain, islice

PARAMETERS = 999  # what SQLite allows in one statement at least


def insert_rows(
    db: sqlite3.Connection, insert: str, width: int, rows: Iterable[Sequence[object]]
) -> None:
    """Insert rows of `width` values with `insert` (the statement up to its VALUES, as
    "INSERT INTO table (columns)"), as many to a statement as SQLite allows: `executemany`
    steps once per row, and each step lets the other threads take the GIL, which the
    backup's thread then waits for."""
    per_statement = PARAMETERS // width
    pending = iter(rows)
    while part := list(islice(pending, per_statement)):
        values = ", ".join([f"({', '.join('?' * width)})"] * len(part))
        db.execute(f"{insert} VALUES {values}", list(chain(*part)))
