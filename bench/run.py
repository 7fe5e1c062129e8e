"""volkeep's benchmark: backup, restore and drill against the baselines of issue 2.

    python3 bench/run.py [--runs 3] [--image volkeep-helper:busybox] [--skip-naive]

Builds (once, then reuses) a ~1 GiB mixed volume, a ~100 MiB volume and a 10,000-tiny-file
volume, then times with a warm page cache, medians of --runs: volkeep backup and restore,
the naive peer approach (busybox `tar -czf` through `docker run`, and its restore), the
container stream limit (`tar -cf` with log driver none), the container write limit
(`tar -xf` through `docker run -i`), and the raw host limit. Prints MB/s, the ratios the
targets are stated in, the compression ratio and volkeep's peak RSS per volume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

PREFIX = "vkbench_"
MIXED, MEDIUM, TINY = PREFIX + "mixed", PREFIX + "medium", PREFIX + "tiny"
TARGET = PREFIX + "target"
MB = 1e6


def mountpoint(api: docker.APIClient, volume: str) -> Path:
    return Path(api.inspect_volume(volume)["Mountpoint"])


def compressible(size: int, seed: int) -> bytes:
    words = [f"line {seed} {index} of some log text, status=ok\n".encode() for index in range(64)]
    block = b"".join(random.Random(seed).choices(words, k=4096))
    return (block * (size // len(block) + 1))[:size]


def build_volume(api: docker.APIClient, name: str, fill: Callable[[Path], None]) -> None:
    try:
        if (mountpoint(api, name) / ".complete").exists():
            return
        api.remove_volume(name, force=True)
    except docker.errors.NotFound:
        pass
    api.create_volume(name)
    root = mountpoint(api, name)
    print(f"building {name} ...", flush=True)
    fill(root)
    (root / ".complete").write_text("")


def fill_mixed(
    root: Path, small_files: int = 20_000, logs: int = 10, log_mib: tuple[int, int] = (10, 50),
    blobs: int = 4, blob_mib: int = 100,
) -> None:  # fmt: skip
    rng = random.Random(1)
    for index in range(small_files):
        directory = root / "small" / f"{index // 500:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1_000, 30_000)
        data = os.urandom(size) if index % 2 else compressible(size, index)
        (directory / f"file{index:05d}.dat").write_bytes(data)
    (root / "logs").mkdir()
    for index in range(logs):
        size = rng.randint(*log_mib) * (1 << 20)
        (root / "logs" / f"big{index}.log").write_bytes(compressible(size, index))
    (root / "blobs").mkdir()
    for index in range(blobs):
        with open(root / "blobs" / f"blob{index}.bin", "wb") as blob:
            for _ in range(blob_mib):
                blob.write(os.urandom(1 << 20))


def fill_medium(root: Path) -> None:
    """The same mix, about a tenth: ~100 MB."""
    fill_mixed(root, small_files=2_000, logs=2, log_mib=(15, 25), blobs=1, blob_mib=30)


def fill_tiny(root: Path) -> None:
    for index in range(10_000):
        directory = root / f"{index // 1000}"
        directory.mkdir(exist_ok=True)
        (directory / f"t{index}").write_bytes(f"tiny file {index}\n".encode())


def volume_bytes(root: Path) -> int:
    return sum(path.lstat().st_size for path in root.rglob("*") if path.is_file())


def warm(root: Path) -> None:
    """Read the volume into the page cache (the VM evicts pages idle for ~60 s)."""
    subprocess.run(raw_tar(root), check=True)


def raw_tar(root: Path) -> list[str]:
    """The raw host limit: host tar of the volume's directory, piped to nothing."""
    return ["sh", "-c", 'tar -cf - -C "$1" . | cat > /dev/null', "raw-tar", str(root)]


# A small launcher measures the peak RSS of the command: a child forked straight from this
# (large) process would count this process's pages until it execs.
PEAK_RSS = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def timed(
    command: list[str], *, stdin: Path | None = None, stdout: Path | None = None
) -> tuple[float, int]:
    """Run a command; return (seconds, peak RSS in KiB of the command itself)."""
    with (
        open(stdin or os.devnull, "rb") as stdin_file,
        open(stdout or os.devnull, "wb") as stdout_file,
        tempfile.TemporaryFile() as stderr_file,
        tempfile.NamedTemporaryFile("r") as rss_file,
    ):
        launcher = [sys.executable, "-c", PEAK_RSS, rss_file.name, *command]
        started = time.perf_counter()
        code = subprocess.call(launcher, stdin=stdin_file, stdout=stdout_file, stderr=stderr_file)
        elapsed = time.perf_counter() - started
        if code != 0:
            stderr_file.seek(0)
            error = stderr_file.read().decode(errors="replace")
            raise SystemExit(f"failed: {command}\n{error[-2000:]}")
        return elapsed, int(rss_file.read())


class Bench:
    def __init__(self, api: docker.APIClient, image: str, runs: int, work: Path) -> None:
        self.api = api
        self.image = image
        self.runs = runs
        self.work = work
        self.repo = work / "repo"
        self.config = work / "volkeep.yaml"
        self.state = work / "state"

    def volkeep(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "daemon", "--config", str(self.config),
            "--state-dir", str(self.state), "--log-format", "json", *args,
        ]  # fmt: skip

    def write_config(self) -> None:
        policy = {"storage": "local", "helper_image": self.image, "volumes": [MIXED, MEDIUM, TINY]}
        self.config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "storage": {"local": {"type": "local", "path": str(self.repo)}},
                    "policies": {"bench": policy},
                }
            )
        )

    def fresh_target(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_volume(TARGET, force=True)
        subprocess.run(["sync"], check=True)

    def median(self, label: str, prepare: Callable[[], None], command: Callable[[], list[str]],
               **kwargs: object) -> tuple[float, int]:  # fmt: skip
        times, peak = [], 0
        for _ in range(self.runs):
            prepare()
            seconds, rss = timed(command(), **kwargs)  # type: ignore[arg-type]
            times.append(seconds)
            peak = max(peak, rss)
        result = statistics.median(times)
        print(f"  {label:<44} {result:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})",
              flush=True)  # fmt: skip
        return result, peak

    def backup_and_restore(self, volume: str) -> dict[str, float]:
        root = mountpoint(self.api, volume)
        shutil.rmtree(self.repo / "bench" / volume, ignore_errors=True)
        backup, backup_rss = self.median(
            "volkeep backup", lambda: warm(root), lambda: self.volkeep("backup", "bench",
                                                                        "--volume", volume)
        )  # fmt: skip
        restore, restore_rss = self.median(
            "volkeep restore (fresh volume)",
            self.fresh_target,
            lambda: self.volkeep("restore", "bench", "--volume", volume, "--to", TARGET),
        )
        drill, drill_rss = self.median(
            "volkeep drill (check, restore, read back, compare)",
            lambda: subprocess.run(["sync"], check=True),
            lambda: self.volkeep("drill", "bench", "--volume", volume, "--archive", "latest"),
        )
        stored = [p for p in (self.repo / "bench" / volume).glob("*.tar.zst")]
        archive_size = statistics.median(p.stat().st_size for p in stored)
        return {
            "backup": backup,
            "restore": restore,
            "drill": drill,
            "backup_rss_mib": backup_rss / 1024,
            "restore_rss_mib": restore_rss / 1024,
            "drill_rss_mib": drill_rss / 1024,
            "archive_size": archive_size,
        }

    def baselines(self, volume: str, skip_naive: bool) -> dict[str, float]:
        root = mountpoint(self.api, volume)
        plain = self.work / "plain.tar"
        gz = self.work / "naive.tar.gz"
        results: dict[str, float] = {}
        results["raw_host"], _ = self.median(
            "raw host: tar -cf - | cat > /dev/null",
            lambda: warm(root),
            lambda: raw_tar(root),
        )
        results["stream_limit"], _ = self.median(
            "container stream limit (log driver none)",
            lambda: warm(root),
            lambda: ["docker", "run", "--rm", "--log-driver", "none", "--network", "none",
                     "-v", f"{volume}:/src:ro", self.image, "tar", "-cf", "-", "-C", "/src", "."],
        )  # fmt: skip
        timed(["docker", "run", "--rm", "--log-driver", "none", "-v", f"{volume}:/src:ro",
               self.image, "tar", "-cf", "-", "-C", "/src", "."], stdout=plain)  # fmt: skip
        results["write_limit"], _ = self.median(
            "container write limit: docker run -i tar -xf",
            self.fresh_target,
            lambda: ["docker", "run", "-i", "--rm", "--log-driver", "none", "-v",
                     f"{TARGET}:/dst", self.image, "tar", "-xf", "-", "-C", "/dst"],
            stdin=plain,
        )  # fmt: skip
        if not skip_naive:
            results["naive_backup"], _ = self.median(
                "naive peer backup: docker run tar -czf",
                lambda: warm(root),
                lambda: ["docker", "run", "--rm", "-v", f"{volume}:/src:ro", self.image,
                         "tar", "-czf", "-", "-C", "/src", "."],
                stdout=gz,
            )  # fmt: skip
            results["naive_restore"], _ = self.median(
                "naive peer restore: docker run -i tar -xzf",
                self.fresh_target,
                lambda: ["docker", "run", "-i", "--rm", "-v", f"{TARGET}:/dst", self.image,
                         "tar", "-xzf", "-", "-C", "/dst"],
                stdin=gz,
            )  # fmt: skip
            results["naive_size"] = gz.stat().st_size
        plain.unlink()
        gz.unlink(missing_ok=True)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default="volkeep-helper:busybox")
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow gzip peer")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    api = docker.APIClient(timeout=600)
    build_volume(api, MIXED, fill_mixed)
    build_volume(api, MEDIUM, fill_medium)
    build_volume(api, TINY, fill_tiny)
    work = Path(tempfile.mkdtemp(prefix="volkeep-bench-", dir="/var/tmp"))
    bench = Bench(api, args.image, args.runs, work)
    bench.write_config()
    report: dict[str, dict[str, float]] = {}
    try:
        for volume in (MIXED, MEDIUM, TINY):
            size = volume_bytes(mountpoint(api, volume))
            print(f"\n{volume}: {size / MB:.0f} MB", flush=True)
            results = bench.backup_and_restore(volume)
            if volume == MIXED:
                results |= bench.baselines(volume, args.skip_naive)
            results["bytes"] = size
            report[volume] = results
    finally:
        bench.fresh_target()
        shutil.rmtree(work, ignore_errors=True)
    summarize(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def summarize(report: dict[str, dict[str, float]]) -> None:
    mixed = report[MIXED]
    rate = lambda seconds: mixed["bytes"] / seconds / MB  # noqa: E731
    print("\n== mixed volume, MB/s (median)")
    for key in ("raw_host", "stream_limit", "backup", "naive_backup", "write_limit", "restore",
                "naive_restore", "drill"):  # fmt: skip
        if key in mixed:
            print(f"  {key:<14} {rate(mixed[key]):8.1f} MB/s  {mixed[key]:7.2f} s")
    print("\n== targets")
    if "naive_backup" in mixed:
        speedup = mixed["naive_backup"] / mixed["backup"]
        print(f"  backup vs naive gzip helper:   {speedup:5.1f}x faster   (target >= 8x)")
    print(f"  backup / container stream limit: {mixed['backup'] / mixed['stream_limit']:5.2f}"
          "          (target <= 2.0)")  # fmt: skip
    print(f"  restore / container write limit: {mixed['restore'] / mixed['write_limit']:5.2f}"
          "          (target <= 1.3)")  # fmt: skip
    print(f"  compression ratio (zstd):        {mixed['bytes'] / mixed['archive_size']:5.2f}")
    if "naive_size" in mixed:
        print(f"  compression ratio (naive gzip):  {mixed['bytes'] / mixed['naive_size']:5.2f}")
    print("\n== per volume: seconds, and peak RSS of volkeep in MiB (target < 150, flat)")
    print(f"  {'volume':<16} {'size':>8} {'backup':>7} {'restore':>8} {'drill':>6}"
          f" {'RSS backup':>11} {'restore':>8} {'drill':>6}")  # fmt: skip
    for volume, results in report.items():
        print(f"  {volume:<16} {results['bytes'] / MB:5.0f} MB {results['backup']:7.2f}"
              f" {results['restore']:8.2f} {results['drill']:6.2f}"
              f" {results['backup_rss_mib']:11.1f} {results['restore_rss_mib']:8.1f}"
              f" {results['drill_rss_mib']:6.1f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
