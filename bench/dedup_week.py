"""Deduplicated backups against one-file archives and restic: one command, side by side.

    python3 bench/dedup_week.py [--days 2] [--scale 1.0] [--keep 2] [--image IMAGE]

Builds a fresh mixed volume (small files half random, half text, logs, a random blob and a
database-like file of 4 KiB pages; about 90 MB at --scale 1), then, in the same run and
interleaved:

- first backup: volkeep with `format: tar` (today's full archive), volkeep with
  `format: dedup`, and `restic backup` (Debian's restic) into a fresh repository, each into
  its own local storage;
- repeat backup of unchanged data, the three again;
- `--days` "1 % days" (100 bytes edited in place in 1 % of the small files, 0.5 % added and
  0.5 % removed, 0.5 % of the database's pages rewritten, a new 1 MiB media file), each
  followed by the three backups.

Prints seconds and peak RSS of each backup, and the bytes each day added to each storage
(everything under the storage's directory, manifests and indexes included); then what
each storage holds once only the last `--keep` backups are kept: volkeep's prune and
garbage collection (the 24-hour margin set to 0 for the bench, prune run twice: condemn,
then free) against `restic forget --prune`. Uses the
timing launcher of bench/run.py (peak RSS of the command itself).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import docker
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import fill_mixed, mountpoint, restic_version, timed
from tests.support import manifests

VOLUME = "vkbench_dedup_week"
PAGE = 4096
RESTIC_PASSWORD = "vkbench"


def fill(root: Path, scale: float) -> None:
    fill_mixed(
        root,
        small_files=int(3_000 * scale),
        logs=2,
        log_mib=(int(10 * scale) or 1, int(15 * scale) or 1),
        blobs=1,
        blob_mib=int(30 * scale) or 1,
    )
    (root / "db").mkdir()
    (root / "db" / "pages.db").write_bytes(os.urandom(int(16 * scale) * (1 << 20) or PAGE))


def one_percent_day(root: Path, day: int) -> None:
    """Edit 1 % of the small files in place, add and remove 0.5 %, rewrite 0.5 % of the
    database's pages, add a new media file."""
    rng = random.Random(day)
    small = sorted((root / "small").rglob("*.dat"))
    for path in rng.sample(small, max(1, len(small) // 100)):
        with open(path, "r+b") as file:
            size = path.stat().st_size
            file.seek(rng.randrange(max(1, size - 100)))
            file.write(os.urandom(100))
    for path in rng.sample(small, max(1, len(small) // 200)):
        path.unlink()
    for index in range(max(1, len(small) // 200)):
        (root / "small" / f"added-{day}-{index}.dat").write_bytes(
            os.urandom(rng.randint(1_000, 30_000))
        )
    database = root / "db" / "pages.db"
    pages = database.stat().st_size // PAGE
    with open(database, "r+b") as file:
        for page in rng.sample(range(pages), max(1, pages // 200)):
            file.seek(page * PAGE)
            file.write(os.urandom(PAGE))
    (root / "media").mkdir(exist_ok=True)
    (root / "media" / f"day-{day}.mp4").write_bytes(os.urandom(1 << 20))


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", type=int, default=2, help="backups kept at the end")
    parser.add_argument("--image", default="volkeep-helper:busybox")
    options = parser.parse_args()
    api = docker.APIClient()
    work = Path(tempfile.mkdtemp(prefix="vkbench-dedup-"))
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_volume(VOLUME, force=True)
    api.create_volume(VOLUME)
    try:
        root = mountpoint(api, VOLUME)
        fill(root, options.scale)
        size = directory_bytes(root)
        print(f"volume: {size / 1e6:.1f} MB, {sum(1 for _ in root.rglob('*'))} objects", flush=True)
        storages = {name: work / name for name in ("tar", "dedup")}
        config = work / "volkeep.yaml"
        document: dict[str, Any] = {
            "version": 1,
            "storage": {
                name: {"type": "local", "path": str(path)} for name, path in storages.items()
            },
            "policies": {
                name: {
                    "volumes": [VOLUME],
                    "storage": name,
                    "helper_image": options.image,
                    "format": name,
                }
                for name in storages
            },
        }
        config.write_text(yaml.safe_dump(document))
        restic_repo = work / "restic"
        environment = dict(os.environ, RESTIC_PASSWORD=RESTIC_PASSWORD)
        restic = ["restic", "--repo", str(restic_repo), "--cache-dir", str(work / "restic-cache")]
        subprocess.run([*restic, "init"], env=environment, check=True, capture_output=True)

        def volkeep(policy: str) -> list[str]:
            return [
                sys.executable, "-m", "daemon", "--config", str(config),
                "--state-dir", str(work / "state"), "backup", policy,
            ]  # fmt: skip

        commands = {
            "volkeep format: tar": (volkeep("tar"), None, storages["tar"]),
            "volkeep format: dedup": (volkeep("dedup"), None, storages["dedup"]),
            restic_version(): ([*restic, "backup", "--host", "bench", "."], root, restic_repo),
        }
        rows: list[tuple[str, str, float, int, int]] = []

        def round_of(label: str) -> None:
            for name, (command, cwd, storage) in commands.items():
                before = directory_bytes(storage) if storage.exists() else 0
                seconds, rss = timed(command, env=environment, cwd=cwd)
                added = directory_bytes(storage) - before
                rows.append((label, name, seconds, rss, added))
                print(f"  {label:16} {name:24} {seconds:7.2f} s {rss / 1024:6.0f} MiB  "
                      f"+{added / 1e6:8.2f} MB{files_read(storage)}", flush=True)  # fmt: skip

        def files_read(storage: Path) -> str:
            """What the newest deduplicated archive read through the helper (manifest
            `files`), or nothing for other storages."""
            newest = max(storage.rglob("*.manifest.json"), default=None, key=lambda p: p.name)
            if newest is None or storage != storages["dedup"]:
                return ""
            files = manifests.summary(newest).get("files") or {}
            return (
                f"  (read {files.get('read', '?')} objects, "
                f"{files.get('read_bytes', 0) / 1e6:.1f} MB; took {files.get('reused', 0)})"
            )

        round_of("first backup")
        round_of("repeat, unchanged")
        for day in range(1, options.days + 1):
            one_percent_day(root, day)
            round_of(f"1 % day {day}")
        print("\ntotal stored after the run:")
        for name, (_, _, storage) in commands.items():
            print(f"  {name:24} {directory_bytes(storage) / 1e6:8.2f} MB")
        # Retention, then garbage collection: each keeps the last --keep backups. volkeep's
        # margin (24 h) is set to 0 here, and prune run twice (condemn, then free), to show
        # what a repository comes to a margin after its prune.
        for policy in document["policies"].values():
            policy["retention"] = {"keep_last": options.keep}
        config.write_text(yaml.safe_dump(document))
        collecting = dict(environment, VOLKEEP_GC_MARGIN="0")
        for policy in storages:
            for _ in range(2):
                subprocess.run(
                    [*volkeep("dedup")[:-2], "prune", policy],
                    env=collecting, check=True, capture_output=True,
                )  # fmt: skip
        forget = [*restic, "forget", "--keep-last", str(options.keep), "--prune"]
        subprocess.run(forget, env=environment, check=True, capture_output=True)
        print(f"\nstored after keeping the last {options.keep} (volkeep prune and garbage "
              "collection, restic forget --prune):")  # fmt: skip
        for name, (_, _, storage) in commands.items():
            print(f"  {name:24} {directory_bytes(storage) / 1e6:8.2f} MB")
        first = {name: seconds for label, name, seconds, _, _ in rows if label == "first backup"}
        days = [row for row in rows if row[0].startswith("1 % day")]
        per_day = {
            name: sum(added for _, n, _, _, added in days if n == name) / max(1, options.days)
            for name in commands
        }
        tar, dedup, anchor = list(commands)
        print(f"\nfirst backup, dedup / tar: {first[dedup] / first[tar]:.2f}x (target <= 1.1x)")
        print(f"bytes added per 1 % day, dedup / restic: {per_day[dedup] / per_day[anchor]:.2f}x "
              f"(target <= 0.5x); tar adds {per_day[tar] / 1e6:.1f} MB a day")  # fmt: skip
        repeat = {name: s for label, name, s, _, _ in rows if label == "repeat, unchanged"}
        print(f"repeat backup of unchanged data, dedup / restic: "
              f"{repeat[dedup] / repeat[anchor]:.2f}x (target <= 1x)")  # fmt: skip
    finally:
        api.remove_volume(VOLUME, force=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
