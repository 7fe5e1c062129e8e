"""Drill verdicts: what a drill's end says of the archive, and the record of it.

A drill has three outcomes (SPEC promise 12), decided by `drill_outcome` alone:

- passed: the archive restored and every object came back as its manifest says;
- failed: the archive itself is at fault (an ArchiveFault: damaged, unsafe, not what its
  manifest says, or the restored tree differs);
- not run: anything else ended the drill (the engine, a storage, a missing key, volkeep
  itself). That is no verdict: nothing is recorded beside the archive, and the verdict
  it had before stands.

A verdict is recorded beside the archive (`DrillRecord`, `<volume>-<id>.drill.json`) and
belongs to the archive, not to the copy: `archive_verdict` picks, for a copy of the archive
in any storage, the verdict that counts among the records found in every storage.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import json
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime

from daemon import __version__
from daemon.errors import ArchiveFault


class Outcome(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not run"


def drill_outcome(ended_by: BaseException | None) -> Outcome:
    """Given what ended a drill before it passed (None: nothing, every object compared
    equal), return its outcome: a failed verdict only for a fault of the archive itself;
    anything else is "not run", which records nothing."""
    if ended_by is None:
        return Outcome.PASSED
    if isinstance(ended_by, ArchiveFault):
        return Outcome.FAILED
    return Outcome.NOT_RUN


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
    # the SHA-256 of the stored bytes judged, as the manifest records it; None in records
    # written before it was recorded (they count by the archive id alone)
    archive_sha256: str | None = None

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
        """Given a record as `to_bytes` wrote it (this version, an earlier or a later one),
        return it; fields this version does not know are skipped. Raise ValueError."""
        try:
            document = json.loads(raw)
            known = {each.name for each in dataclasses.fields(cls)}
            fields = {name: value for name, value in document.items() if name in known}
            fields["finished"] = datetime.fromisoformat(fields["finished"])
            return cls(**fields)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"unreadable drill record: {error}") from None


def archive_verdict(records: Iterable[DrillRecord], sha256: str) -> DrillRecord | None:
    """Given the drill records found for one archive id in the storages of its policy, and
    the SHA-256 of the stored bytes of one copy (its manifest's), return the verdict that
    counts for that copy: the newest record that judged the same bytes (a record without
    a digest counts by the id alone), or None if there is none."""
    same = (record for record in records if record.archive_sha256 in (None, sha256))
    return max(same, key=lambda record: record.finished, default=None)
