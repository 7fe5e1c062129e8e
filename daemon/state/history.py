"""The state dir: run history in SQLite, schedule anchors, and the daemon's pid file.

- `operations`: the operations with their outcomes, for `volkeep status` and the metrics;
  written by `History.operation`, the recorder of each operation's events. Of each kind of
  operation of a volume, the newest KEEP_OPERATIONS are kept, and always the last that
  succeeded and the last that failed (what status and the metrics show): the table stays
  bounded however long the daemon runs, and is read by index, never scanned whole.
- `downtime`: the containers a backup stopped, and for how long.
- `schedules`: per scheduler job, when it last ran (or was first scheduled), so that a run
  missed while the daemon was down is caught up once at its next start.
- `daemon.pid` (locked by the running daemon) and `daemon.json` (its heartbeat: pid,
  activity, next runs), so that `volkeep status` knows whether a daemon runs.

Losing the state dir loses this history, never the ability to list, restore or drill:
the storage describes itself (SPEC §2).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from daemon import events
from daemon.errors import OperationError
from daemon.events import Event, Operation, OperationFailed, OperationFinished, OperationStarted
from daemon.state.locks import is_held

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
CREATE INDEX IF NOT EXISTS operations_by_outcome
    ON operations (kind, policy, volume, outcome, finished);
CREATE TABLE IF NOT EXISTS downtime (
    id INTEGER PRIMARY KEY,
    policy TEXT NOT NULL,
    volume TEXT NOT NULL,        -- the volume whose backup stopped the container
    container TEXT NOT NULL,     -- its name
    stopped TEXT NOT NULL,       -- ISO 8601, UTC
    started TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    job TEXT PRIMARY KEY,        -- scheduler job id, e.g. backup:app
    first_scheduled TEXT NOT NULL,
    last_run TEXT                -- start of the last run that finished, ISO 8601, UTC
);
"""
PID_FILE = "daemon.pid"
HEARTBEAT_FILE = "daemon.json"
KEEP_OPERATIONS = 100  # of each kind of operation of a volume, besides its last ok and failed

# Each (kind, policy, volume) once, found by seeking the index from one to the next (a
# loose index scan): as many steps as there are volumes, however many rows each has.
EACH_VOLUME = """
WITH RECURSIVE keys(id) AS (
    SELECT (SELECT id FROM operations ORDER BY kind, policy, volume LIMIT 1)
    UNION ALL
    SELECT COALESCE(
        (SELECT id FROM operations WHERE kind = this.kind AND policy = this.policy
            AND volume > this.volume ORDER BY kind, policy, volume LIMIT 1),
        (SELECT id FROM operations WHERE kind = this.kind AND policy > this.policy
            ORDER BY kind, policy, volume LIMIT 1),
        (SELECT id FROM operations WHERE kind > this.kind ORDER BY kind, policy, volume LIMIT 1)
    )
    FROM keys JOIN operations AS this ON this.id = keys.id
)
"""
# The last operation of one volume's kind that ended with `outcome` (by the index).
LAST_ENDED = """(SELECT {column} FROM operations WHERE kind = this.kind AND policy = this.policy
    AND volume = this.volume AND outcome = '{outcome}' ORDER BY finished DESC LIMIT 1)"""


@dataclass(frozen=True)
class Downtime:
    """A container volkeep stopped for a volume's backup, and for how long."""

    policy: str
    volume: str
    container: str
    stopped: datetime
    started: datetime

    @property
    def seconds(self) -> float:
        return (self.started - self.stopped).total_seconds()


@dataclass(frozen=True)
class OperationRecord:
    """One recorded operation; `outcome` is running, ok or failed."""

    kind: str
    policy: str
    volume: str
    archive: str | None
    started: datetime
    finished: datetime | None
    outcome: str
    bytes: int | None
    error: str | None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class Outcomes:
    """When a kind of operation of a volume last succeeded and last failed (None: never)."""

    last_success: datetime | None = None
    last_failure: datetime | None = None

    @property
    def failing(self) -> bool:
        """Whether its last finished operation failed."""
        if self.last_failure is None:
            return False
        return self.last_success is None or self.last_failure > self.last_success


class _Recorder:
    """Writes one operation's events to the history: a row when it starts, its outcome
    when it ends."""

    def __init__(self, history: History) -> None:
        self._history = history
        self._row: int | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, OperationStarted):
            self._row = self._history.record_started(event)
        elif isinstance(event, OperationFinished | OperationFailed) and self._row is not None:
            self._history.record_ended(self._row, event)


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
        """Run the operation of the block, announced on the event stream
        (`events.operation`), with this history as its recorder: started now, then its
        outcome and error. Raise sqlite3.Error if the history cannot be written."""
        with events.operation(kind, policy, volume, recorder=_Recorder(self)) as operation:
            yield operation

    def record_started(self, started: OperationStarted) -> int:
        """Record an operation as running; return its row."""
        with closing(self._connect()) as connection, connection:
            row = connection.execute(
                "INSERT INTO operations (kind, policy, volume, started, outcome) "
                "VALUES (?, ?, ?, ?, 'running')",
                (started.kind, started.policy, started.volume, started.at.isoformat()),
            ).lastrowid
        assert row is not None
        return row

    def record_ended(self, row: int, ended: OperationFinished | OperationFailed) -> None:
        """Record the outcome of the operation of `row`, and forget the oldest operations of
        its kind and volume beyond those kept (`trim`)."""
        error = ended.error if isinstance(ended, OperationFailed) else None
        with closing(self._connect()) as connection, connection:
            _trim(connection, row)
            connection.execute(
                "UPDATE operations SET finished = ?, outcome = ?, archive = ?, bytes = ?, "
                "error = ? WHERE id = ?",
                (
                    ended.at.isoformat(),
                    "ok" if error is None else "failed",
                    ended.archive,
                    ended.bytes,
                    error,
                    row,
                ),
            )

    def record_downtime(self, downtime: Downtime) -> None:
        """Record that a container was stopped for a backup and started again."""
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT INTO downtime (policy, volume, container, stopped, started, seconds) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    downtime.policy,
                    downtime.volume,
                    downtime.container,
                    downtime.stopped.isoformat(),
                    downtime.started.isoformat(),
                    downtime.seconds,
                ),
            )

    def downtimes(self, policy: str, volume: str) -> list[Downtime]:
        """Given a policy and volume, return the downtimes recorded for its backups, oldest
        first."""
        with closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT container, stopped, started FROM downtime "
                "WHERE policy = ? AND volume = ? ORDER BY id",
                (policy, volume),
            ).fetchall()
        return [
            Downtime(
                policy,
                volume,
                name,
                datetime.fromisoformat(stopped),
                datetime.fromisoformat(started),
            )
            for name, stopped, started in rows
        ]

    def trim(self) -> None:
        """Forget, for each kind of operation of each volume, the operations older than the
        newest KEEP_OPERATIONS, except its last success and its last failure."""
        with closing(self._connect()) as connection, connection:
            rows = connection.execute(
                f"{EACH_VOLUME} SELECT id FROM keys WHERE id IS NOT NULL"
            ).fetchall()
            for (row,) in rows:
                _trim(connection, row)

    def last_operations(self, kind: str) -> dict[tuple[str, str], OperationRecord]:
        """Given an operation kind, return the latest operation of that kind per
        (policy, volume)."""
        with closing(self._connect()) as connection:
            rows = connection.execute(
                f"{EACH_VOLUME} SELECT latest.kind, latest.policy, latest.volume, "
                "latest.archive, latest.started, latest.finished, latest.outcome, "
                "latest.bytes, latest.error FROM keys JOIN operations AS this "
                "ON this.id = keys.id JOIN operations AS latest ON latest.id = (SELECT id "
                "FROM operations WHERE policy = this.policy AND volume = this.volume "
                "AND kind = this.kind ORDER BY started DESC, id DESC LIMIT 1) "
                "WHERE this.kind = ?",
                (kind,),
            ).fetchall()
        records = {}
        for kind_, policy, volume, archive, started, finished, outcome, size, error in rows:
            records[(policy, volume)] = OperationRecord(
                kind_, policy, volume, archive, datetime.fromisoformat(started),
                _time(finished), outcome, size, error,
            )  # fmt: skip
        return records

    def outcomes(self) -> dict[tuple[str, str, str], Outcomes]:
        """Return, by (kind, policy, volume), when its operations last succeeded and failed."""
        last_success = LAST_ENDED.format(column="finished", outcome="ok")
        last_failure = LAST_ENDED.format(column="finished", outcome="failed")
        with closing(self._connect()) as connection:
            rows = connection.execute(
                f"{EACH_VOLUME} SELECT this.kind, this.policy, this.volume, {last_success}, "
                f"{last_failure} FROM keys JOIN operations AS this ON this.id = keys.id"
            ).fetchall()
        return {
            (kind, policy, volume): Outcomes(_time(succeeded), _time(failed))
            for kind, policy, volume, succeeded, failed in rows
            if succeeded or failed
        }

    def schedule_anchor(self, job: str, now: datetime) -> datetime:
        """Given a scheduler job id, return the time its schedule counts from: the start of
        its last finished run, else when it was first scheduled (recorded as `now` the
        first time a job is seen)."""
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT OR IGNORE INTO schedules (job, first_scheduled) VALUES (?, ?)",
                (job, now.isoformat()),
            )
            first, last = connection.execute(
                "SELECT first_scheduled, last_run FROM schedules WHERE job = ?", (job,)
            ).fetchone()
        return datetime.fromisoformat(last or first)

    def schedule_anchors(self) -> dict[str, datetime]:
        """Return, by job id, the time each job's schedule counts from (`schedule_anchor`),
        for the jobs ever scheduled; record nothing."""
        with closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT job, COALESCE(last_run, first_scheduled) FROM schedules"
            ).fetchall()
        return {job: datetime.fromisoformat(anchor) for job, anchor in rows}

    def record_run(self, job: str, started: datetime) -> None:
        """Record that a run of the scheduler job that started at `started` has finished."""
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT INTO schedules (job, first_scheduled, last_run) VALUES (?, ?, ?) "
                "ON CONFLICT (job) DO UPDATE SET last_run = excluded.last_run",
                (job, started.isoformat(), started.isoformat()),
            )


def _trim(connection: sqlite3.Connection, row: int) -> None:
    """Given a row of the operations, forget the operations of its kind and volume that
    started before the newest KEEP_OPERATIONS, except the last that succeeded and the last
    that failed."""
    last_success = LAST_ENDED.format(column="id", outcome="ok")
    last_failure = LAST_ENDED.format(column="id", outcome="failed")
    connection.execute(
        "DELETE FROM operations WHERE id IN (SELECT old.id FROM operations AS this "
        "JOIN operations AS old ON old.policy = this.policy AND old.volume = this.volume "
        "AND old.kind = this.kind WHERE this.id = :row AND old.started < (SELECT started "
        "FROM operations WHERE policy = this.policy AND volume = this.volume "
        "AND kind = this.kind ORDER BY started DESC LIMIT 1 OFFSET :keep - 1) "
        f"AND old.id IS NOT {last_success} AND old.id IS NOT {last_failure})",  # NULL: none
        {"row": row, "keep": KEEP_OPERATIONS},
    )


@dataclass(frozen=True)
class Heartbeat:
    """What the running daemon says about itself in `daemon.json`."""

    pid: int
    started: datetime
    beat: datetime
    activity: str
    next_runs: dict[str, datetime | None] = field(default_factory=dict)  # by job id

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "started": self.started.isoformat(),
            "beat": self.beat.isoformat(),
            "activity": self.activity,
            "next_runs": {
                job: when.isoformat() if when else None for job, when in self.next_runs.items()
            },
        }


def write_heartbeat(state_dir: Path, heartbeat: Heartbeat) -> None:
    """Replace `daemon.json` atomically with the heartbeat (no fsync: it is rewritten often
    and worthless after a crash)."""
    temporary = state_dir / f".{HEARTBEAT_FILE}.partial"
    temporary.write_text(json.dumps(heartbeat.to_json(), indent=1))
    os.replace(temporary, state_dir / HEARTBEAT_FILE)


def read_heartbeat(state_dir: Path) -> Heartbeat | None:
    """Return the last heartbeat a daemon wrote, or None if none was ever written (or it
    is unreadable)."""
    try:
        document = json.loads((state_dir / HEARTBEAT_FILE).read_text())
        return Heartbeat(
            pid=int(document["pid"]),
            started=datetime.fromisoformat(document["started"]),
            beat=datetime.fromisoformat(document["beat"]),
            activity=str(document["activity"]),
            next_runs={
                job: _time(when) for job, when in dict(document.get("next_runs", {})).items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def daemon_pid_file(state_dir: Path) -> Iterator[None]:
    """Hold `daemon.pid`, locked and holding this process's pid, for the block.

    Raise OperationError naming the other daemon's pid if one already runs on this state dir.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(state_dir / PID_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OperationError(
                f"another volkeep daemon (pid {other}) already runs with state dir {state_dir}"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


def daemon_running(state_dir: Path) -> bool:
    """Say whether a daemon holds the state dir's pid file right now."""
    return is_held(state_dir / PID_FILE)
