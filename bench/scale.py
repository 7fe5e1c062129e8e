"""volkeep at scale: memory and manifest size as the number of files grows (issue 12).

    python3 bench/run.py --scale [--runs 1] [--image volkeep-helper:busybox] [--json PATH]
    python3 bench/scale.py [--runs 1] [--only 10k,100k,1m,4g] [--json PATH]

Builds (once, then reuses) volumes of 10,000, 100,000 and 1,000,000 small files (a
thousand to a directory, 200-700 bytes each, half text, half random) and one holding a
single 4 GiB file (random bytes). For each, medians of --runs with a warm page cache:

- volkeep backup, restore (into a fresh volume; the restored tree is checked against the
  source) and drill: seconds and peak RSS (the median of the runs' peaks); then one run
  each of list, list --files (to /dev/null), status and prune --dry-run: peak RSS;
- the manifest's bytes per object on disk (for the small-file volumes), the archive's size;
- restic (Debian's package) on the same volume: backup into a fresh local repository and
  restore into a fresh volume: seconds and peak RSS, and its repository's bytes per object,
  in all and in tree blobs (restic's equivalent of the manifest).

Targets: peak RSS under 150 MiB for every volkeep command at 1,000,000 files, and within
10% of the 10,000-file figure; the manifest at most 40 bytes per object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is no package: run.py

from run import (
    PREFIX,
    RESTIC_PASSWORD,
    RSS_LIMIT_MIB,
    WorkDirectory,
    build_volume,
    fill_small,
    mountpoint,
    read_files,
    restic_version,
    sync,
    timed,
    tree_summary,
    warm,
)

TARGET = PREFIX + "scale_target"
MANIFEST_LIMIT = 40  # bytes per object
RSS_DRIFT = 0.10  # at a million files, within 10% of the 10,000-file figure
PER_DIRECTORY = 1000


def small(count: int) -> Callable[[Path], None]:
    """`count` small files, a thousand to a directory (names d0000/f0000000.txt)."""
    return fill_small(count, PER_DIRECTORY, seed=count, digits=(4, 7))


def fill_big(root: Path) -> None:
    with open(root / "big.bin", "wb") as big:
        for _ in range(4096):
            big.write(os.urandom(1 << 20))


@dataclass(frozen=True)
class Volume:
    key: str
    name: str
    fill: Callable[[Path], None]


VOLUMES = {
    "10k": Volume("10k", PREFIX + "scale10k", small(10_000)),
    "100k": Volume("100k", PREFIX + "scale100k", small(100_000)),
    "1m": Volume("1m", PREFIX + "scale1m", small(1_000_000)),
    "4g": Volume("4g", PREFIX + "scale4g", fill_big),
}


class Scale(WorkDirectory):
    """One work directory: a config of every scale volume, a local repository, a state dir,
    and a restic repository per volume."""

    def __init__(self, api: docker.APIClient, image: str, runs: int, work: Path) -> None:
        super().__init__(api, image, runs, work)
        self.env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD}

    def write_config(self, volumes: list[Volume]) -> None:
        policy = {
            "storage": "local",
            "helper_image": self.image,
            "volumes": [volume.name for volume in volumes],
        }
        self.config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "storage": {"local": {"type": "local", "path": str(self.repo)}},
                    "policies": {"scale": policy},
                },
                indent=1,
            )
        )

    def restic(self, volume: Volume, *args: str) -> list[str]:
        repository = self.work / f"restic-{volume.key}"
        cache = self.work / "restic-cache"
        return ["restic", "--repo", str(repository), "--cache-dir", str(cache), "--quiet", *args]

    def target_mountpoint(self) -> Path:
        """The restore target's mountpoint (created with the same name each time)."""
        with contextlib.suppress(docker.errors.NotFound):
            return mountpoint(self.api, TARGET)
        return Path(self.api.create_volume(TARGET)["Mountpoint"])

    def fresh_target(self, create: bool = False) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_volume(TARGET, force=True)
        sync()
        if create:
            self.api.create_volume(TARGET)

    def median(
        self,
        label: str,
        prepare: Callable[[], None],
        command: list[str],
        check: Callable[[], None] | None = None,
        cwd: Path | None = None,
    ) -> tuple[float, float]:
        """Run the command --runs times; print and return the medians of its seconds and of
        its peak RSS in MiB (a run's peak varies by some 10% with the threads' timing)."""
        times, peaks = [], []
        for _ in range(self.runs):
            prepare()
            seconds, rss = timed(command, env=self.env, cwd=cwd)
            if check is not None:
                check()
            times.append(seconds)
            peaks.append(rss / 1024)
        result, peak = statistics.median(times), statistics.median(peaks)
        runs = ", ".join(f"{t:.1f} s {p:.1f} MiB" for t, p in zip(times, peaks, strict=True))
        print(f"  {label:<34} {result:8.1f} s {peak:7.1f} MiB  (runs: {runs})", flush=True)
        return result, peak

    def once(self, label: str, command: list[str]) -> float:
        """Run the command once, its output to /dev/null; print and return its peak RSS MiB."""
        seconds, rss = timed(command)
        print(f"  {label:<34} {seconds:8.1f} s {rss / 1024:7.1f} MiB", flush=True)
        return rss / 1024

    def measure(self, volume: Volume) -> dict[str, float]:
        root = mountpoint(self.api, volume.name)
        expected = tree_summary(root)
        objects = expected[1] + expected[2] + 1  # files, directories, the root

        def check_target() -> None:
            found = tree_summary(mountpoint(self.api, TARGET))
            if found != expected:
                raise SystemExit(f"restored {found} of {volume.name}, the source has {expected}")

        def warm_archive() -> None:
            read_files(self.archive_files(volume))

        print(f"\n{volume.name}: {expected[1]:,} files, {expected[0] / 1e6:,.0f} MB", flush=True)
        results: dict[str, float] = {"objects": objects, "bytes": expected[0]}
        results["backup"], results["backup_rss"] = self.median(
            "volkeep backup",
            lambda: warm(root),
            self.volkeep("backup", "scale", "--volume", volume.name),
        )
        files = self.archive_files(volume)
        manifest = next(path for path in files if path.name.endswith(".manifest.json"))
        archive = next(path for path in files if ".tar" in path.name)
        results["manifest_per_object"] = manifest.stat().st_size / objects
        results["archive_bytes"] = archive.stat().st_size

        def restore_prepare() -> None:
            self.fresh_target()
            warm_archive()

        results["restore"], results["restore_rss"] = self.median(
            "volkeep restore (fresh volume)",
            restore_prepare,
            self.volkeep("restore", "scale", "--volume", volume.name, "--to", TARGET),
            check=check_target,
        )
        self.fresh_target()

        def drill_prepare() -> None:
            sync()
            warm_archive()

        results["drill"], results["drill_rss"] = self.median(
            "volkeep drill",
            drill_prepare,
            self.volkeep("drill", "scale", "--volume", volume.name, "--archive", "latest"),
        )
        results["list_rss"] = self.once("volkeep list", self.volkeep("list", "scale"))
        results["list_files_rss"] = self.once(
            "volkeep list --files",
            self.volkeep("list", "scale", "--volume", volume.name, "--files"),
        )
        results["status_rss"] = self.once("volkeep status", self.volkeep("status"))
        results["prune_rss"] = self.once(
            "volkeep prune --dry-run", self.volkeep("prune", "scale", "--dry-run")
        )
        results |= self.versus_restic(volume, root, objects, check_target)
        return results

    def archive_files(self, volume: Volume) -> list[Path]:
        """The files of the volume's newest archive (archive, manifest, drill record)."""
        pattern = f"*/scale/{volume.name}/{volume.name}-*.manifest.json"
        manifests = sorted(self.repo.glob(pattern))
        if not manifests:
            raise SystemExit(f"no archive of {volume.name} in {self.repo}")
        stem = manifests[-1].name.removesuffix(".manifest.json")
        return sorted(manifests[-1].parent.glob(f"{stem}.*"))

    def versus_restic(
        self, volume: Volume, root: Path, objects: int, check_target: Callable[[], None]
    ) -> dict[str, float]:
        repository = self.work / f"restic-{volume.key}"

        def fresh_repository() -> None:
            shutil.rmtree(repository, ignore_errors=True)
            subprocess.run(self.restic(volume, "init"), env=self.env, check=True,
                           capture_output=True)  # fmt: skip
            sync()
            warm(root)

        def restore_prepare() -> None:
            self.fresh_target(create=True)
            read_files([path for path in repository.rglob("*") if path.is_file()])

        backup, backup_rss = self.median(
            "restic backup (fresh repository)",
            fresh_repository,
            self.restic(volume, "backup", "--host", "vkbench", "."),
            cwd=root,
        )
        restore, restore_rss = self.median(
            "restic restore (fresh volume)",
            restore_prepare,
            self.restic(volume, "restore", "latest", "--target", str(self.target_mountpoint())),
            check=check_target,
        )
        self.fresh_target()
        size = sum(path.stat().st_size for path in repository.rglob("*") if path.is_file())
        trees = self.restic_tree_bytes(volume)
        shutil.rmtree(repository, ignore_errors=True)
        return {
            "restic_backup": backup, "restic_backup_rss": backup_rss,
            "restic_restore": restore, "restic_restore_rss": restore_rss,
            "restic_per_object": size / objects, "restic_trees_per_object": trees / objects,
        }  # fmt: skip

    def restic_tree_bytes(self, volume: Volume) -> int:
        """The bytes of the repository's tree blobs (its listing of every object)."""

        def output(*args: str) -> str:
            done = subprocess.run(
                self.restic(volume, *args), env=self.env, check=True, capture_output=True, text=True
            )
            return done.stdout

        total = 0
        for index in output("list", "index").split():
            for pack in json.loads(output("cat", "index", index)).get("packs", []):
                total += sum(blob["length"] for blob in pack["blobs"] if blob["type"] == "tree")
        return total


def run_scale(image: str, runs: int, only: list[str], json_path: Path | None) -> int:
    """Build the volumes, measure each, print the table and the targets; return 0, or 1 if
    a target is missed."""
    api = docker.APIClient(timeout=3600)
    volumes = [VOLUMES[key] for key in only]
    for volume in volumes:
        build_volume(api, volume.name, volume.fill)
    work = Path(tempfile.mkdtemp(prefix="volkeep-scale-", dir="/var/tmp"))
    scale = Scale(api, image, runs, work)
    print(f"volkeep at scale, against {restic_version()}; medians of {runs}", flush=True)
    report: dict[str, dict[str, float]] = {}
    try:
        scale.write_config(volumes)
        for volume in volumes:
            report[volume.key] = scale.measure(volume)
    finally:
        scale.fresh_target()
        shutil.rmtree(work, ignore_errors=True)
    missed = summarize(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1))
    return 1 if missed else 0


COMMANDS = ("backup", "restore", "drill", "list", "list_files", "status", "prune")


def summarize(report: dict[str, dict[str, float]]) -> bool:
    """Print the table and the targets; return whether one was missed."""
    print("\n== volkeep: seconds; peak RSS MiB; manifest bytes per object, archive MB")
    print(f"  {'volume':<6} {'objects':>9} {'backup':>7} {'restore':>8} {'drill':>7}  "
          + " ".join(f"{command.replace('_', ' '):>10}" for command in COMMANDS)
          + f"  {'manifest':>8} {'archive':>8}")  # fmt: skip
    for key, row in report.items():
        rss = " ".join(f"{row[f'{command}_rss']:10.1f}" for command in COMMANDS)
        print(f"  {key:<6} {row['objects']:9,.0f} {row['backup']:7.1f} {row['restore']:8.1f}"
              f" {row['drill']:7.1f}  {rss}  {row['manifest_per_object']:8.1f}"
              f" {row['archive_bytes'] / 1e6:8.1f}")  # fmt: skip
    print("\n== restic: seconds and peak RSS MiB; repository and tree bytes per object")
    for key, row in report.items():
        print(f"  {key:<6} backup {row['restic_backup']:7.1f} s {row['restic_backup_rss']:7.1f}"
              f" MiB  restore {row['restic_restore']:7.1f} s {row['restic_restore_rss']:7.1f} MiB"
              f"  {row['restic_per_object']:8.1f} B/object, trees"
              f" {row['restic_trees_per_object']:6.1f}")  # fmt: skip
    missed = False
    print("\n== targets")
    for key, row in report.items():
        if row["objects"] < 1000:  # the summary alone, a kilobyte: no measure of the entries
            continue
        ok = row["manifest_per_object"] <= MANIFEST_LIMIT
        missed |= not ok
        print(f"  {key:<6} manifest {row['manifest_per_object']:5.1f} B/object"
              f" (target <= {MANIFEST_LIMIT})  {'ok' if ok else 'MISSED'}")  # fmt: skip
    if "1m" in report:
        big, base = report["1m"], report.get("10k")
        for command in COMMANDS:
            peak = big[f"{command}_rss"]
            ok = peak < RSS_LIMIT_MIB
            line = f"  1m     {command:<10} peak RSS {peak:6.1f} MiB (target < {RSS_LIMIT_MIB})"
            if base is not None:
                drift = peak / base[f"{command}_rss"] - 1
                ok = ok and drift <= RSS_DRIFT
                line += f", {drift:+.0%} of the 10k figure (target <= +{RSS_DRIFT:.0%})"
            missed |= not ok
            print(f"{line}  {'ok' if ok else 'MISSED'}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--image", default="volkeep-helper:busybox")
    parser.add_argument(
        "--only", type=lambda text: [part for part in text.split(",") if part],
        default=list(VOLUMES), metavar="VOLUMES", help=f"of {','.join(VOLUMES)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    unknown = [key for key in args.only if key not in VOLUMES]
    if unknown:
        parser.error(f"unknown volume {', '.join(unknown)}: choose from {', '.join(VOLUMES)}")
    return run_scale(args.image, args.runs, args.only, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
