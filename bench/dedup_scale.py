"""Memory of deduplicated backups at scale: peak RSS of every command at a million files and
as unique data grows, extrapolated to 1 TiB.

    python3 bench/dedup_scale.py [--files 1m] [--gigabytes 1,2,4] [--skip 'C1; C2'] [--image IMAGE]

With `format: dedup` on a local storage, a fresh repository for each data set, runs once
each and prints seconds and the peak RSS of the command itself (the timing launcher of
bench/run.py):

- first backup; a repeat of unchanged data (files taken from the previous archive); a
  repeat that reads every file (`full_read_every: 0`: every chunk looked up and found);
- restore into a fresh volume and `restore --to-dir` into a fresh directory on the host (each
  restored tree checked against the source); drill of the latest archive; `list --files` and
  `export` (both to /dev/null);
- prune and garbage collection: `keep_last: 1`, the 24-hour margin set to 0 for the bench,
  prune run twice (condemn, then free); the larger peak of the two.

Data sets: bench/scale.py's volume of 1,000,000 small files (`--files 1m`, built once and
reused; `--files ''` skips it; or 10k, 100k, or `tiny200k`: 200,000 files of 12-17
bytes), and a volume of unique random data in 64 MiB files grown
to each of `--gigabytes` GiB in turn (rebuilt for each run). Then, per command, the growth
of its peak RSS per GiB of unique data (least squares over the sizes) and the peak that
line gives at 1 TiB, beside the spread of the peaks (a run's peak varies by a few MiB with
its threads' timing; a slope smaller than that is noise, not growth). The target: under
150 MiB for every command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is no package: run.py

from run import PREFIX, RSS_LIMIT_MIB, build_volume, mountpoint, sync, timed, tree_summary
from scale import VOLUMES as SCALE_VOLUMES
from scale import Volume

# named by the run, so that two runs side by side keep to their own volumes
UNIQUE = PREFIX + f"dedupscale{os.getpid()}_unique"
TARGET = PREFIX + f"dedupscale{os.getpid()}_target"
FILE_MIB = 64
GIB = 1 << 30
TIB_IN_GIB = 1024


def fill_tiny(count: int) -> Callable[[Path], None]:
    """`count` files of 12-17 bytes ("tiny file N" and a newline), a thousand to a directory: a
    chunk each, whose zstd frames are some 25 bytes, so that a pack holds the most."""

    def fill(root: Path) -> None:
        for index in range(count):
            directory = root / f"d{index // 1000:04d}"
            if index % 1000 == 0:
                directory.mkdir()
            (directory / f"t{index:07d}").write_bytes(f"tiny file {index}\n".encode())

    return fill


FILE_VOLUMES = {
    **SCALE_VOLUMES,
    "tiny200k": Volume("tiny200k", PREFIX + "tiny200k", fill_tiny(200_000)),
}
COMMANDS = (  # in the order they run: those that read the most first
    "backup, first",
    "backup, repeat",
    "restore",
    "drill",
    "restore --to-dir",
    "export",
    "list --files",
    "backup, full read",
    "prune + gc",
)


class DataSet:
    """One volume measured with a fresh repository in a work directory of its own."""

    def __init__(
        self, api: docker.APIClient, image: str, volume: str, skip: frozenset[str]
    ) -> None:
        self.api = api
        self.skip = skip
        self.image = image
        self.volume = volume
        self.work = Path(tempfile.mkdtemp(prefix="vkbench-dedupscale-", dir="/var/tmp"))
        self.config = self.work / "volkeep.json"

    def write_config(self, **policy: object) -> None:
        document = {
            "version": 1,
            "storage": {"local": {"type": "local", "path": str(self.work / "repo")}},
            "policies": {
                "scale": {
                    "storage": "local",
                    "helper_image": self.image,
                    "volumes": [self.volume],
                    "format": "dedup",
                    **policy,
                }
            },
        }
        self.config.write_text(json.dumps(document, indent=1))

    def volkeep(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "daemon", "--config", str(self.config),
            "--state-dir", str(self.work / "state"), "--log-format", "json", *args,
        ]  # fmt: skip

    def fresh_target(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_volume(TARGET, force=True)
        sync()

    def measure(self) -> dict[str, tuple[float, float]]:
        """Run every command once; return {command: (seconds, peak RSS MiB)}."""
        root = mountpoint(self.api, self.volume)
        expected = tree_summary(root)
        print(f"\n{self.volume}: {expected[1]:,} files, {expected[0] / 1e6:,.0f} MB", flush=True)
        results: dict[str, tuple[float, float]] = {}

        def run(label: str, command: list[str], environment: dict[str, str] | None = None) -> bool:
            if label in self.skip:
                return False
            seconds, rss = timed(command, env=environment)
            previous = results.get(label, (0.0, 0.0))
            results[label] = (previous[0] + seconds, max(previous[1], rss / 1024))
            print(f"  {label:<20} {seconds:8.1f} s {rss / 1024:7.1f} MiB", flush=True)
            return True

        try:
            self.write_config()
            run("backup, first", self.volkeep("backup", "scale"))
            run("backup, repeat", self.volkeep("backup", "scale"))
            self.fresh_target()
            restore = self.volkeep("restore", "scale", "--volume", self.volume)
            if run("restore", [*restore, "--to", TARGET]):
                found = tree_summary(mountpoint(self.api, TARGET))
                if found != expected:
                    raise SystemExit(f"restored {found} of {self.volume}, source {expected}")
                self.fresh_target()
            run("drill", self.volkeep("drill", "scale", "--volume", self.volume,
                                      "--archive", "latest"))  # fmt: skip
            directory = self.work / "restored"
            if run("restore --to-dir", [*restore, "--to-dir", str(directory)]):
                found = tree_summary(directory)
                shutil.rmtree(directory)
                if found != expected:
                    raise SystemExit(f"restored {found} of {self.volume} into a directory, the "
                                     f"source has {expected}")  # fmt: skip
            run("export", self.volkeep("export", "scale", "--volume", self.volume))
            run("list --files",
                self.volkeep("list", "scale", "--volume", self.volume, "--files"))  # fmt: skip
            self.write_config(full_read_every="0s")
            run("backup, full read", self.volkeep("backup", "scale"))
            self.write_config(retention={"keep_last": 1})
            collecting = {**os.environ, "VOLKEEP_GC_MARGIN": "0"}
            for _ in range(2):
                run("prune + gc", self.volkeep("prune", "scale"), collecting)
            stored = sum(p.stat().st_size for p in (self.work / "repo").rglob("*") if p.is_file())
            print(f"  repository at the end: {stored / 1e6:,.0f} MB", flush=True)
        finally:
            self.fresh_target()
            shutil.rmtree(self.work, ignore_errors=True)
        return results


def grow_unique(api: docker.APIClient, gigabytes: float) -> None:
    """Grow the unique-data volume (created if missing) to `gigabytes` GiB of random bytes
    in 64 MiB files."""
    if UNIQUE not in {volume["Name"] for volume in api.volumes()["Volumes"] or []}:
        api.create_volume(UNIQUE)
    root = mountpoint(api, UNIQUE)
    wanted = int(gigabytes * GIB) // (FILE_MIB << 20)
    present = len(list(root.glob("u*.bin")))
    print(f"growing {UNIQUE} to {gigabytes} GiB ...", flush=True)
    for index in range(present, wanted):
        with open(root / f"u{index:05d}.bin", "wb") as file:
            for _ in range(FILE_MIB):
                file.write(os.urandom(1 << 20))
    sync()


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Given (x, y) points, return the least-squares line's slope and intercept."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return slope, mean_y - slope * mean_x


def summarize(report: dict[str, dict[str, tuple[float, float]]], sizes: list[float]) -> bool:
    """Print the table, the growth per GiB and the targets; return whether one was missed."""
    print("\n== peak RSS MiB (seconds)")
    print(f"  {'data set':<12} " + " ".join(f"{command:>18}" for command in COMMANDS))
    for key, row in report.items():
        cells = [f"{row[c][1]:.1f} ({row[c][0]:.0f} s)" if c in row else "-" for c in COMMANDS]
        print(f"  {key:<12} " + " ".join(f"{cell:>18}" for cell in cells))
    missed = False
    print(f"\n== targets: peak RSS < {RSS_LIMIT_MIB} MiB")
    for key, row in report.items():
        worst = max(row, key=lambda command: row[command][1])
        ok = row[worst][1] < RSS_LIMIT_MIB
        missed |= not ok
        print(f"  {key:<12} highest: {worst} {row[worst][1]:.1f} MiB  {'ok' if ok else 'MISSED'}")
    unique = [(size, report[f"{size:g} GiB"]) for size in sizes]
    if len(unique) >= 2:
        # A run's peak varies by some MiB with the threads' timing: a slope over a few GiB
        # carried to 1 TiB multiplies that noise, so the spread is printed beside it.
        print("\n== growth with unique data: MiB per GiB (least squares), the line at 1 TiB, "
              "and the spread of the peaks measured")  # fmt: skip
        for command in (command for command in COMMANDS if command in unique[0][1]):
            peaks = [(size, row[command][1]) for size, row in unique]
            slope, intercept = fit(peaks)
            spread = max(peak for _, peak in peaks) - min(peak for _, peak in peaks)
            print(f"  {command:<20} {slope:+7.2f} MiB/GiB -> {intercept + slope * TIB_IN_GIB:8.1f}"
                  f" MiB at 1 TiB (peaks within {spread:.1f} MiB)")  # fmt: skip
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--files", default="1m", help=f"a files volume: {', '.join(FILE_VOLUMES)} (default 1m)"
    )
    parser.add_argument(
        "--gigabytes", type=lambda text: [float(part) for part in text.split(",") if part],
        default=[1, 2, 4], help="sizes of unique data, GiB (default 1,2,4)",
    )  # fmt: skip
    parser.add_argument("--image", default="volkeep-helper:busybox")
    parser.add_argument(
        "--skip", type=lambda text: frozenset(part.strip() for part in text.split(";")),
        default=frozenset(), help=f"commands not run, separated by ';' ({'; '.join(COMMANDS)})",
    )  # fmt: skip
    args = parser.parse_args()
    api = docker.APIClient(timeout=3600)
    report: dict[str, dict[str, tuple[float, float]]] = {}
    sets: list[tuple[str, Callable[[], str]]] = []
    if args.files:
        volume = FILE_VOLUMES[args.files]

        def files_volume() -> str:
            build_volume(api, volume.name, volume.fill)
            return volume.name

        sets.append((f"{args.files} files", files_volume))
    for size in sorted(args.gigabytes):

        def unique_volume(size: float = size) -> str:
            grow_unique(api, size)
            return UNIQUE

        sets.append((f"{size:g} GiB", unique_volume))
    try:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(UNIQUE, force=True)
        for key, prepare in sets:
            report[key] = DataSet(api, args.image, prepare(), args.skip).measure()
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(UNIQUE, force=True)
    missed = summarize(report, sorted(args.gigabytes))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
