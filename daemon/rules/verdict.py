"""Drill records: written beside the archive in the storage, so every host sees them."""

from __future__ import annotations

import builtins
import json
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime

from daemon import __version__


@dataclass(frozen=True)
class DrillRecord:
    policy: str
    volume: str
    archive: str
    passed: bool
    finished: datetime
    duration: float  # seconds for the whole drill
    # of which the restore (check, then extract into the scratch volume), as `volkeep
    # restore` would take: the real RTO; 0 if the drill failed before restoring
    restore_seconds: float
    bytes: int  # tar bytes restored
    reason: str | None = None  # why it failed
    differences: list[str] = field(default_factory=list)  # the first differences found
    difference_count: int = 0
    host: str = field(default_factory=socket.gethostname)
    tool_version: str = __version__

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    @property
    def restore_rate(self) -> float | None:
        """Tar bytes restored per second, or None if nothing was restored."""
        return self.bytes / self.restore_seconds if self.restore_seconds else None

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        document["finished"] = self.finished.isoformat()
        document["verdict"] = self.verdict
        document["restore_rate"] = self.restore_rate
        return document

    def to_bytes(self) -> builtins.bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: builtins.bytes) -> DrillRecord:
        """Given a record as `to_bytes` wrote it, return it. Raise ValueError."""
        try:
            document = json.loads(raw)
            document.pop("verdict", None)
            document.pop("restore_rate", None)
            document["finished"] = datetime.fromisoformat(document["finished"])
            return cls(**document)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"unreadable drill record: {error}") from None
