"""Reading a deduplicated archive back against `restic restore`: one command, side by side.

    python3 bench/dedup_restore.py [--volumes mixed,small200k] [--runs 3]
                                   [--cases restore,to-dir,restic,drill]
                                   [--image volkeep-helper:busybox] [--json PATH]

For each volume (bench/run.py's: `mixed`, about 970 MB of small files, logs and random
blobs; `small200k`, 200,000 files of 200-700 bytes; built once and reused), backs it up
once with volkeep (`format: dedup`, a local storage) and once with Debian's restic into a
fresh repository, then, --runs rounds interleaved (each round starting one case later),
each after `sync`:

- `volkeep restore --to` a fresh volume (dockerd extracts the tar volkeep rebuilds);
- `volkeep restore --to-dir` into a fresh directory (volkeep extracts, no Docker);
- `restic restore latest --target` the fresh volume's mountpoint;
- `volkeep drill` (restore into a scratch volume, then read it back and compare).

`--cases` runs only those (restic's always: the others are told against it).

Prints, per case, the median wall seconds, the CPU seconds of the command and its children
(user + sys, RUSAGE_CHILDREN: not dockerd's extraction) and the peak RSS of the command
itself, then each volkeep case's wall time over restic's (target: <= 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    MIXED,
    SMALL200K,
    build_volume,
    fill_mixed,
    fill_small200k,
    mountpoint,
    restic_version,
    sync,
    timed,
)

RESTIC_PASSWORD = "vkbench"
FILLS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "mixed": (MIXED, fill_mixed),
    "small200k": (SMALL200K, fill_small200k),
}
TARGET = "vkbench_restore_target"
CASES = ("restore", "to-dir", "restic", "drill")  # as --cases names them, in case order


def measured(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run a command; return its wall seconds, CPU seconds (user + sys of it and what it
    waited for) and peak RSS in KiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, rss = timed(command, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", default="mixed,small200k")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="of: " + ", ".join(CASES))
    parser.add_argument("--image", default="volkeep-helper:busybox")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    api = docker.APIClient(timeout=900)  # removing a volume of 200,000 files takes minutes
    work = Path(tempfile.mkdtemp(prefix="vkbench-restore-"))
    environment = dict(os.environ, RESTIC_PASSWORD=RESTIC_PASSWORD)
    anchor = restic_version()
    report: dict[str, dict[str, Any]] = {}
    try:
        for name in options.volumes.split(","):
            volume, fill = FILLS[name]
            build_volume(api, volume, fill)
            report[name] = one_volume(api, work / name, volume, options, environment, anchor)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(TARGET, force=True)
        shutil.rmtree(work, ignore_errors=True)
    if options.json:
        options.json.write_text(json.dumps(report, indent=1))
    return 0


def one_volume(
    api: docker.APIClient,
    work: Path,
    volume: str,
    options: argparse.Namespace,
    environment: dict[str, str],
    anchor: str,
) -> dict[str, Any]:
    work.mkdir(parents=True)
    storage, state, config = work / "dedup", work / "state", work / "volkeep.yaml"
    document = {
        "version": 1,
        "storage": {"dedup": {"type": "local", "path": str(storage)}},
        "policies": {
            "dedup": {
                "volumes": [volume],
                "storage": "dedup",
                "helper_image": options.image,
                "format": "dedup",
            }
        },
    }
    config.write_text(yaml.safe_dump(document))
    volkeep = [sys.executable, "-m", "daemon", "--config", str(config), "--state-dir", str(state)]
    restic = ["restic", "--repo", str(work / "restic"), "--cache-dir", str(work / "cache")]
    source = mountpoint(api, volume)
    print(f"{volume}: backing up once with volkeep (dedup) and {anchor} ...", flush=True)
    subprocess.run([*volkeep, "backup", "dedup"], env=environment, check=True)
    subprocess.run([*restic, "init"], env=environment, check=True, capture_output=True)
    subprocess.run(
        [*restic, "backup", "--host", "bench", "."],
        cwd=source, env=environment, check=True, capture_output=True,
    )  # fmt: skip
    to_dir = work / "restored"

    def fresh_target() -> Path:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(TARGET, force=True)
        shutil.rmtree(to_dir, ignore_errors=True)
        api.create_volume(TARGET)
        sync()
        return mountpoint(api, TARGET)

    restore = [*volkeep, "restore", "dedup", "--volume", volume]
    cases: dict[str, Callable[[Path], list[str]]] = {
        "volkeep restore": lambda _: [*restore, "--to", TARGET],
        "volkeep restore --to-dir": lambda _: [*restore, "--to-dir", str(to_dir)],
        f"{anchor} restore": lambda target: [
            *restic,
            "restore",
            "latest",
            "--target",
            str(target),
        ],
        "volkeep drill": lambda _: [*volkeep, "drill", "dedup", "--volume", volume],
    }
    chosen = {*options.cases.split(","), "restic"}
    cases = {
        case: cases[case] for word, case in zip(CASES, list(cases), strict=True) if word in chosen
    }
    samples: dict[str, list[tuple[float, float, int]]] = {case: [] for case in cases}
    names = list(cases)
    for run in range(options.runs):
        for case in names[run % len(names) :] + names[: run % len(names)]:
            target = fresh_target()
            sample = measured(cases[case](target), environment)
            samples[case].append(sample)
            print(f"  run {run + 1} {case:28} {sample[0]:7.2f} s wall {sample[1]:7.2f} s CPU "
                  f"{sample[2] / 1024:6.0f} MiB", flush=True)  # fmt: skip
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_volume(TARGET, force=True)
    shutil.rmtree(to_dir, ignore_errors=True)
    medians = {
        case: {
            "seconds": statistics.median(s[0] for s in runs),
            "cpu_seconds": statistics.median(s[1] for s in runs),
            "peak_rss_mib": max(s[2] for s in runs) / 1024,
        }
        for case, runs in samples.items()
    }
    print(f"\n{volume}, medians of {options.runs} runs:")
    baseline = medians[f"{anchor} restore"]["seconds"]
    for case, row in medians.items():
        ratio = "" if case.startswith("restic") else f"  {row['seconds'] / baseline:.2f}x restic"
        print(f"  {case:28} {row['seconds']:7.2f} s wall {row['cpu_seconds']:7.2f} s CPU "
              f"{row['peak_rss_mib']:6.0f} MiB{ratio}", flush=True)  # fmt: skip
    print("  (target: restore and drill <= 1x restic restore; peak RSS < 150 MiB)\n")
    return medians


if __name__ == "__main__":
    sys.exit(main())
