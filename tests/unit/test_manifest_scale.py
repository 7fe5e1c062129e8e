"""A million entries through the manifest writer and reader in bounded memory, at no more
than 40 bytes an object on disk (issue 12)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from daemon.archive.manifest import Manifest, ManifestWriter, read_entries
from daemon.archive.tarstream import Member

MILLION = 1_000_000
MOMENT = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
# Held, a million entries would take 300 MB and more; streamed, the writer's buffers, the
# zstd contexts and the reader's pieces are a few MB.
GROWTH_LIMIT = 32 << 20


def small_files(count: int) -> Iterator[Member]:
    """A volume of `count` small files, a thousand to a directory, each its own content."""
    yield Member(".", "dir", 0o755, 0, 0, 0, 1_700_000_000)
    for index in range(count):
        if index % 1000 == 0:
            yield Member(f"d{index // 1000:04}", "dir", 0o755, 999, 999, 0, 1_700_000_000)
        content = f"small file {index}\n".encode()
        yield Member(
            f"d{index // 1000:04}/file{index:07}.txt",
            "file",
            0o644,
            999,
            999,
            len(content),
            1_700_000_000 + index // 20_000,
            sha256=hashlib.sha256(content).hexdigest(),
        )


def summary() -> Manifest:
    return Manifest(
        id="20261128T030000Z",
        policy="app",
        volume="files",
        started=MOMENT,
        finished=MOMENT,
        archive_file="files-20261128T030000Z.tar.zst",
        size=1,
        sha256="ab" * 32,
        compression="zstd",
        compression_level=3,
        tar_flavour="busybox",
        tar_size=1,
        host="host",
    )


def round_trip(directory: Path) -> dict[str, int]:
    """Write a million entries' manifest into `directory` and read it back; return the
    counts, the file's size and the memory taken (the peak RSS above what it was before)."""
    path = directory / "files.manifest.json"
    before = _rss("VmRSS")
    with ManifestWriter(directory) as writer:
        for member in small_files(MILLION):
            writer.add(member)
        writer.finish()
        with open(path, "wb") as stored:
            for chunk in writer.chunks(summary()):
                stored.write(chunk)
    with open(path, "rb") as stored:
        count = Manifest.read(stored).entry_count
    with open(path, "rb") as stored:
        pairs = zip(read_entries(stored), small_files(MILLION), strict=True)
        matching = sum(read_back == written for read_back, written in pairs)
    return {
        "count": count,
        "matching": matching,
        "size": path.stat().st_size,
        "growth": _rss("VmHWM") - before,
    }


def _rss(field: str) -> int:
    """The process's resident memory now (VmRSS) or at its peak (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_million_entries_round_trip_in_bounded_memory_at_40_bytes_each(tmp_path: Path) -> None:
    # In a process of its own, so that its peak RSS is the round trip's.
    script = (
        "import json, sys; from pathlib import Path; "
        "from tests.unit.test_manifest_scale import round_trip; "
        "print(json.dumps(round_trip(Path(sys.argv[1]))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(run.stdout)

    objects = MILLION + MILLION // 1000 + 1
    assert result["count"] == result["matching"] == objects
    assert result["growth"] < GROWTH_LIMIT, f"grew by {result['growth'] / 2**20:.1f} MiB"
    assert result["size"] / objects <= 40
