"""Throughput and peak RSS of volkeep's streaming age writer and reader against raw pyrage.

    python3 bench/encryption.py [--mib 512] [--runs 3] [--limit KIB ...]

Each case runs in a fresh subprocess (so its peak RSS is its own) over --mib MiB of random
bytes; the cases are interleaved, --runs rounds of all of them, because a shared 2-core
machine is noisy. Prints MiB/s of wall time (median and best of the rounds), MiB per
CPU-second of the process (all its threads: less sensitive to a busy neighbour, blind to
overlap), and the peak RSS:

- raw-encrypt / raw-decrypt: `pyrage.encrypt_io` / `decrypt_io` between in-memory buffers
  (BytesIO), the library's own speed with no streaming around it; raw-discard and
  raw-decrypt-discard: the same into a discarding writer (no growing output buffer);
- writer / reader: `encrypting_writer` fed 1 MiB pieces, writing into a discarding sink, and
  `decrypting_reader` reading a ciphertext file (page cache warm) in 1 MiB reads, at each
  queue limit given by --limit;
- sha256, writer+sha256: the writer with the pipeline's next stage, a SHA-256 of the
  stored bytes, as its sink (and that hash alone);
- zstd / zstd+writer: zstd level 3 (the default) over compressible data into SHA-256, alone
  and with the writer between them, as the backup pipeline chains them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyrage
from pyrage import x25519

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.archive import encryption
from daemon.archive.compression import Compressor, compressor
from daemon.config import keys
from daemon.config.model import Compression
from daemon.system.cpus import available_cpus

MIB = 1 << 20
POOL = 8 * MIB  # cycled: the input itself should not dominate the peak RSS


class Discard:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class Hashing(Discard):
    """The pipeline's next stage: SHA-256 of the stored bytes (hashlib lets go of the GIL)."""

    def __init__(self) -> None:
        super().__init__()
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha256.update(data)
        return super().write(data)


def pieces(total: int, compressible: bool = False) -> list[memoryview]:
    if compressible:
        words = b" ".join(b"%d volkeep-%x" % (index, index * 7919) for index in range(MIB // 8))
        pool = memoryview(words[:MIB] * (POOL // MIB))
    else:
        pool = memoryview(os.urandom(POOL))
    return [pool[offset % POOL : offset % POOL + MIB] for offset in range(0, total, MIB)]


def prepare(case: str, total: int, limit: int, workdir: Path) -> Callable[[], object]:
    """Given a case, set up its input and return the work to time."""
    identity = x25519.Identity.generate()
    recipient = keys.parse_recipient(str(identity.to_public()))
    natives = [recipient.native]
    if case in ("raw-encrypt", "raw-discard"):
        plain = io.BytesIO(os.urandom(POOL) * (total // POOL))
        output = io.BytesIO() if case == "raw-encrypt" else Discard()
        return lambda: pyrage.encrypt_io(plain, output, natives)
    if case in ("raw-decrypt", "raw-decrypt-discard"):
        sealed = io.BytesIO()
        pyrage.encrypt_io(io.BytesIO(os.urandom(POOL) * (total // POOL)), sealed, natives)
        sealed.seek(0)
        output = io.BytesIO() if case == "raw-decrypt" else Discard()
        return lambda: pyrage.decrypt_io(sealed, output, [identity])
    if case == "reader":
        identity_path = workdir / "identity.txt"
        identity_path.write_text(str(identity) + "\n")
        identity_path.chmod(0o600)
        ciphertext_path = workdir / "ciphertext.age"
        with ciphertext_path.open("wb") as file:
            writer = encryption.encrypting_writer(file, [recipient])
            for view in pieces(total):
                writer.write(view)
            writer.finish()
        with ciphertext_path.open("rb") as file:
            while file.read(MIB):  # warm the page cache
                pass
        return lambda: read_all(ciphertext_path, keys.load_identities(identity_path), limit)
    views = pieces(total, compressible=case.startswith("zstd"))
    sink = Hashing() if "sha256" in case or case.startswith("zstd") else Discard()
    if case == "sha256":
        return lambda: [sink.write(view) for view in views]
    if case == "zstd":
        return lambda: write_all(compressor(Compression("zstd"), sink, available_cpus()), views)
    writer = encryption.encrypting_writer(sink, [recipient], limit=limit)
    if case in ("writer", "writer+sha256"):
        return lambda: write_all(writer, views)
    if case == "zstd+writer":
        return lambda: write_all(
            compressor(Compression("zstd"), writer, available_cpus()), views, then=writer
        )
    raise SystemExit(f"unknown case {case}")


def write_all(
    writer: encryption.EncryptingWriter | Compressor,
    views: list[memoryview],
    then: encryption.EncryptingWriter | None = None,
) -> None:
    for view in views:
        writer.write(view)
    writer.finish()
    if then is not None:
        then.finish()


def read_all(path: Path, identities: keys.Identities, limit: int) -> None:
    with path.open("rb") as file:
        reader = encryption.decrypting_reader(file, identities, limit=limit)
        while reader.read(MIB):
            pass


def run_case(case: str, mib: int, limit: int, workdir: str) -> dict[str, float]:
    work = prepare(case, mib * MIB, limit, Path(workdir))
    start, cpu_start = time.perf_counter(), cpu_seconds()
    work()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mib_per_s": mib / seconds, "mib_per_cpu_s": mib / cpu, "peak_rss_mib": peak_mib}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, nargs="*", default=[256, 1024, 4096], help="KiB")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.case:
        result = run_case(
            arguments.case, arguments.mib, arguments.limit[0] << 10, arguments.workdir
        )
        print(json.dumps(result))
        return
    plan = [("raw-encrypt", 0), ("raw-discard", 0), ("raw-decrypt", 0)]
    plan += [("raw-decrypt-discard", 0), ("sha256", 0)]
    for limit in arguments.limit:
        plan += [("writer", limit), ("writer+sha256", limit), ("reader", limit)]
    plan += [("zstd", 1024), ("zstd+writer", 1024)]
    print(
        f"{arguments.mib} MiB, {os.cpu_count()} cores, {arguments.runs} rounds, cases interleaved"
    )
    results: dict[tuple[str, int], list[dict[str, float]]] = {step: [] for step in plan}
    with tempfile.TemporaryDirectory(prefix="volkeep-bench-") as workdir:
        for _ in range(arguments.runs):
            for case, limit in plan:
                command = [sys.executable, __file__, "--case", case, "--mib", str(arguments.mib)]
                command += ["--limit", str(limit or 1024), "--workdir", workdir]
                output = subprocess.run(command, check=True, capture_output=True, text=True)
                results[case, limit].append(json.loads(output.stdout))
    print(f"{'case':<20}{'limit KiB':>10}{'MiB/s median':>14}{'best':>6}", end="")
    print(f"{'MiB/CPU-s median':>18}{'peak RSS MiB':>14}")
    for (case, limit), runs in results.items():
        rates = [run["mib_per_s"] for run in runs]
        per_cpu = statistics.median(run["mib_per_cpu_s"] for run in runs)
        peak = max(run["peak_rss_mib"] for run in runs)
        shown = str(limit) if limit else "-"
        median, best = statistics.median(rates), max(rates)
        print(f"{case:<20}{shown:>10}{median:>14.0f}{best:>6.0f}{per_cpu:>18.0f}{peak:>14.0f}")


if __name__ == "__main__":
    main()
