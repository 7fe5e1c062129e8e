"""The recovery script's time (scripts/volkeep-rebuild-tar.sh), wall and CPU, on a tar of
small files stored as a backup stores it, for each recipe version:

    python3 bench/rebuild_script.py [COUNT]      (default 2,000 files)
"""

from __future__ import annotations

import hashlib
import io
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.archive.chunkconfig import ChunkConfig
from tests.e2e.test_rebuild_script import VERSIONS, rebuild
from tests.support.dedup import store_tar


def small_files_tar(count: int) -> bytes:
    """A tar of `count` small files of different contents (about 100 bytes each)."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for number in range(count):
            data = hashlib.shake_256(b"small %d" % number).hexdigest(50).encode()
            info = tarfile.TarInfo(f"./small/{number:06}.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return stream.getvalue()


def time_the_script(count: int) -> None:
    """Print the script's time, wall and CPU (its processes'), on a tar of `count` small
    files, for each recipe version (docs/format-dedup.md, "Recovery without volkeep")."""

    def cpu() -> float:
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return used.ru_utime + used.ru_stime

    tar = small_files_tar(count)
    for version in VERSIONS:
        with tempfile.TemporaryDirectory() as scratch:
            chunks, recipe = Path(scratch) / "chunks", Path(scratch) / "archive.recipe"
            output = Path(scratch) / "out.tar"
            store_tar(tar, chunks, recipe, ChunkConfig.new(), version=version)
            began, began_cpu = time.monotonic(), cpu()
            result = rebuild(chunks, recipe, output)
            took, took_cpu = time.monotonic() - began, cpu() - began_cpu
            assert result.returncode == 0 and output.read_bytes() == tar, result.stderr
            each = took / count * 1000
            print(
                f"version {version}: {count} files, {took:.1f} s ({each:.1f} ms a file), "
                f"{took_cpu:.1f} s of CPU"
            )


if __name__ == "__main__":
    time_the_script(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
