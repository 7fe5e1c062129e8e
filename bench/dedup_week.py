"""A week of deduplicated backups against one-file archives and restic: one command, side by
side, on local storage and on S3.

    python3 bench/dedup_week.py [--days 7] [--scale 1.0] [--volume mixed|files200k|both]
                                [--no-s3] [--keep 2] [--image IMAGE]

For each volume asked for, builds it fresh:

- `mixed`: small files (half random, half text), logs, a random blob and a database-like
  file of 4 KiB pages; about 90 MB at --scale 1 (--scale 10 is the 0.92 GB mixed volume of
  bench/run.py);
- `files200k`: bench/run.py's 200,000 small files of 200-700 bytes, 500 to a directory
  (--scale does not apply);

then, in the same run and interleaved, with six peers: volkeep `format: tar` (today's full
archive), volkeep `format: dedup` and `restic backup` (Debian's restic), each into a local
storage of its own, and the same three each into a bucket of its own on a SeaweedFS on
loopback (unless --no-s3):

- first backup; repeat backup of unchanged data;
- `--days` "1 % days" (100 bytes edited in place in 1 % of the small files, 0.5 % added
  and 0.5 % removed, 0.5 % of the database's pages rewritten when the volume has one, a
  new 1 MiB media file), each followed by the six backups.

Prints, for every command (backups, prunes, restic forget): seconds and peak RSS of the
command itself (the timing launcher of bench/run.py; each command starts after a `sync`,
so that the writes of the one before, such as the tar archive's gigabyte, are not flushed
on its time); for every backup the bytes it added
to its storage (everything under a local storage's directory; every object in a bucket),
and for the S3 peers the bytes SeaweedFS received in request bodies for that bucket (its
`SeaweedFS_s3_bucket_traffic_received_bytes_total` counter) and the requests it answered.
Then each peer's storage day by day, the ratios the targets are stated in, and what each
storage holds once only the last `--keep` backups are kept: volkeep's prune and garbage
collection (the 24-hour margin set to 0 for the bench, prune run twice: condemn, then
free) against `restic forget --prune`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import fill_mixed, fill_small200k, mountpoint, restic_version, timed
from tests.support import manifests
from tests.support.seaweed import SeaweedServer, free_ports

PREFIX = "vkbench_week_"
PAGE = 4096
RESTIC_PASSWORD = "vkbench"
MB = 1e6
RECEIVED = re.compile(
    r'^SeaweedFS_s3_bucket_traffic_received_bytes_total\{bucket="([^"]+)"\} (\S+)$'
)
REQUESTS = re.compile(r'^SeaweedFS_s3_request_total\{bucket="([^"]+)",[^}]*\} (\S+)$')


def fill_mixed_scaled(root: Path, scale: float) -> None:
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


@dataclass(frozen=True)
class Volume:
    """A benchmark volume: how to fill it, which of its files a day edits, where and how
    large the files a day adds are."""

    key: str
    fill: Callable[[Path, float], None]
    small: str  # glob of the small files under the root
    added: str  # directory of the added files
    added_size: tuple[int, int]


VOLUMES = {
    "mixed": Volume("mixed", fill_mixed_scaled, "small/*/*.dat", "small/added", (1_000, 30_000)),
    "files200k": Volume(
        "files200k", lambda root, _scale: fill_small200k(root), "d*/*.txt", "added", (200, 700)
    ),
}


def one_percent_day(volume: Volume, root: Path, day: int) -> None:
    """Edit 100 bytes in place in 1 % of the small files, add and remove 0.5 %, rewrite
    0.5 % of the database's pages (if the volume has one), add a new 1 MiB media file."""
    rng = random.Random(day)
    small = sorted(root.glob(volume.small))
    for path in rng.sample(small, max(1, len(small) // 100)):
        with open(path, "r+b") as file:
            size = path.stat().st_size
            file.seek(rng.randrange(max(1, size - 100)))
            file.write(os.urandom(100))
    for path in rng.sample(small, max(1, len(small) // 200)):
        path.unlink()
    added = root / volume.added
    added.mkdir(parents=True, exist_ok=True)
    for index in range(max(1, len(small) // 200)):
        (added / f"added-{day}-{index}.dat").write_bytes(
            os.urandom(rng.randint(*volume.added_size))
        )
    database = root / "db" / "pages.db"
    if database.exists():
        pages = database.stat().st_size // PAGE
        with open(database, "r+b") as file:
            for page in rng.sample(range(pages), max(1, pages // 200)):
                file.seek(page * PAGE)
                file.write(os.urandom(PAGE))
    (root / "media").mkdir(exist_ok=True)
    (root / "media" / f"day-{day}.mp4").write_bytes(os.urandom(1 << 20))


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def object_count(root: Path) -> int:
    return sum(1 for _ in root.rglob("*"))


class MeteredSeaweed(SeaweedServer):
    """The tests' SeaweedFS with its Prometheus metrics served on a port of its own."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.metrics_port = free_ports(1)[0]

    def command(self) -> list[str]:
        return [*super().command(), f"-metricsPort={self.metrics_port}"]

    def counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """Return, per bucket, the bytes received in request bodies and the requests
        answered so far."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        received: dict[str, int] = {}
        requests: dict[str, int] = {}
        for line in text.splitlines():
            if match := RECEIVED.match(line):
                received[match[1]] = int(float(match[2]))
            elif match := REQUESTS.match(line):
                requests[match[1]] = requests.get(match[1], 0) + int(float(match[2]))
        return received, requests

    def bucket_bytes(self, bucket: str) -> int:
        total = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            total += sum(item["Size"] for item in page.get("Contents", []))
        return total


@dataclass
class Peer:
    """One way of keeping the volume: its backup command and how to read its storage."""

    name: str
    command: list[str]
    cwd: Path | None
    stored: Callable[[], int]
    bucket: str | None = None  # an S3 peer's bucket
    local_storage: Path | None = None  # a volkeep dedup peer's local storage
    prune: list[list[str]] = field(default_factory=list)
    prune_label: str = "prune"


@dataclass
class Row:
    label: str
    peer: str
    seconds: float
    rss_kib: int
    added: int
    stored: int
    uploaded: int | None
    requests: int | None


def run_volume(
    api: docker.APIClient,
    volume: Volume,
    options: argparse.Namespace,
    seaweed: MeteredSeaweed | None,
) -> dict[str, Any]:
    """Build the volume fresh, run the week on it and return what the summary needs."""
    name = PREFIX + volume.key
    work = Path(tempfile.mkdtemp(prefix=f"vkbench-week-{volume.key}-", dir="/var/tmp"))
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_volume(name, force=True)
    api.create_volume(name)
    buckets: list[str] = []
    try:
        root = mountpoint(api, name)
        print(f"\n== {volume.key}: building {name} ...", flush=True)
        volume.fill(root, options.scale)
        size = directory_bytes(root)
        objects = object_count(root)
        print(f"{volume.key}: {size / MB:.1f} MB, {objects:,} objects", flush=True)
        peers, environment, document, config = make_peers(
            work, name, root, options, seaweed, buckets
        )
        rows: list[Row] = []

        def round_of(label: str) -> None:
            for peer in peers:
                before = peer.stored()
                counted = seaweed.counters() if seaweed and peer.bucket else None
                os.sync()  # the previous peer's writes are not flushed on this one's time
                seconds, rss = timed(peer.command, env=environment, cwd=peer.cwd)
                stored = peer.stored()
                uploaded = requests = None
                if counted is not None and seaweed is not None and peer.bucket is not None:
                    after = seaweed.counters()
                    uploaded = after[0].get(peer.bucket, 0) - counted[0].get(peer.bucket, 0)
                    requests = after[1].get(peer.bucket, 0) - counted[1].get(peer.bucket, 0)
                rows.append(Row(label, peer.name, seconds, rss, stored - before, stored,
                                uploaded, requests))  # fmt: skip
                sent = "" if uploaded is None else (
                    f"  uploaded {uploaded / MB:8.2f} MB in {requests} requests"
                )  # fmt: skip
                print(f"  {label:17} {peer.name:30} {seconds:7.2f} s {rss / 1024:6.0f} MiB  "
                      f"+{(stored - before) / MB:8.2f} MB (holds {stored / MB:8.2f}){sent}"
                      f"{files_read(peer)}", flush=True)  # fmt: skip

        round_of("first backup")
        round_of("repeat, unchanged")
        for day in range(1, options.days + 1):
            one_percent_day(volume, root, day)
            round_of(f"1 % day {day}")
        held = {peer.name: peer.stored() for peer in peers}
        # Retention, then garbage collection: each keeps the last --keep backups. volkeep's
        # margin (24 h) is set to 0 here, and prune run twice (condemn, then free), to show
        # what a repository comes to a margin after its prune.
        for policy in document["policies"].values():
            policy["retention"] = {"keep_last": options.keep}
        config.write_text(yaml.safe_dump(document))
        collecting = dict(environment, VOLKEEP_GC_MARGIN="0")
        prunes: list[tuple[str, float, int]] = []
        print(f"\n  keeping the last {options.keep} (volkeep prune and garbage collection, "
              "restic forget --prune):", flush=True)  # fmt: skip
        for peer in peers:
            for step, command in enumerate(peer.prune, 1):
                os.sync()
                seconds, rss = timed(command, env=collecting)
                label = f"{peer.name}: {peer.prune_label} ({step} of {len(peer.prune)})"
                prunes.append((label, seconds, rss))
                print(f"  {label:56} {seconds:7.2f} s {rss / 1024:6.0f} MiB  "
                      f"(holds {peer.stored() / MB:8.2f} MB)", flush=True)  # fmt: skip
        kept = {peer.name: peer.stored() for peer in peers}
        return {
            "volume": volume.key, "bytes": size, "objects": objects, "rows": rows,
            "peers": [peer.name for peer in peers], "held": held, "kept": kept,
            "prunes": prunes,
        }  # fmt: skip
    finally:
        api.remove_volume(name, force=True)
        shutil.rmtree(work, ignore_errors=True)
        if seaweed is not None:
            for bucket in buckets:
                with contextlib.suppress(Exception):
                    seaweed.delete_bucket(bucket)


def files_read(peer: Peer) -> str:
    """What the newest deduplicated archive read through the helper (manifest `files`), for
    a local dedup peer; nothing for the others."""
    if peer.local_storage is None:
        return ""
    newest = max(peer.local_storage.rglob("*.manifest.json"), default=None, key=lambda p: p.name)
    if newest is None:
        return ""
    files = manifests.summary(newest).get("files") or {}
    return (
        f"  (read {files.get('read', '?')} objects, "
        f"{files.get('read_bytes', 0) / MB:.1f} MB; took {files.get('reused', 0)})"
    )


def make_peers(
    work: Path,
    volume: str,
    root: Path,
    options: argparse.Namespace,
    seaweed: MeteredSeaweed | None,
    buckets: list[str],
) -> tuple[list[Peer], dict[str, str], dict[str, Any], Path]:
    """Write the config of volkeep's policies, create restic's repositories; return the
    peers, the environment they run in, the config document and its path."""
    storages: dict[str, dict[str, Any]] = {
        kind: {"type": "local", "path": str(work / kind)} for kind in ("tar", "dedup")
    }
    environment = dict(os.environ, RESTIC_PASSWORD=RESTIC_PASSWORD)
    if seaweed is not None:
        credentials = seaweed.credentials_file(work / "s3.credentials")
        environment |= {
            "AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        }
        for kind in ("tar", "dedup", "restic"):
            bucket = seaweed.create_bucket(f"vkweek-{volume.removeprefix(PREFIX)}-{kind}")
            buckets.append(bucket)
            if kind != "restic":
                storages[f"{kind}-s3"] = {
                    "type": "s3", "bucket": bucket, "endpoint": seaweed.endpoint,
                    "region": "us-east-1", "path_style": True,
                    "credentials_file": str(credentials),
                }  # fmt: skip
    document: dict[str, Any] = {
        "version": 1,
        "storage": storages,
        "policies": {
            storage: {
                "volumes": [volume],
                "storage": storage,
                "helper_image": options.image,
                "format": storage.removesuffix("-s3"),
            }
            for storage in storages
        },
    }
    config = work / "volkeep.yaml"
    config.write_text(yaml.safe_dump(document))

    def volkeep(*args: str) -> list[str]:
        return [
            sys.executable, "-m", "daemon", "--config", str(config),
            "--state-dir", str(work / "state"), "--log-format", "json", *args,
        ]  # fmt: skip

    def restic(repository: str) -> list[str]:
        return ["restic", "--repo", repository, "--cache-dir", str(work / "restic-cache")]

    anchor = restic_version()
    keep = options.keep
    peers: list[Peer] = []
    repositories = {"local": str(work / "restic")}
    if seaweed is not None:
        repositories["s3"] = f"s3:{seaweed.endpoint}/{buckets[-1]}"
    for where, repository in repositories.items():
        subprocess.run([*restic(repository), "init"], env=environment, check=True,
                       capture_output=True)  # fmt: skip
        for kind in ("tar", "dedup"):
            policy = kind if where == "local" else f"{kind}-s3"
            storage = storages[policy]
            peers.append(
                Peer(
                    f"volkeep {kind}, {where}",
                    volkeep("backup", policy),
                    None,
                    stored_bytes(storage, seaweed),
                    bucket=storage.get("bucket"),
                    local_storage=Path(storage["path"]) if policy == "dedup" else None,
                    prune=[volkeep("prune", policy)] * 2,
                )
            )
        peers.append(
            Peer(
                f"{anchor}, {where}",
                [*restic(repository), "backup", "--host", "bench", "."],
                root,
                stored_bytes(
                    {"path": repository} if where == "local" else {"bucket": buckets[-1]}, seaweed
                ),
                bucket=None if where == "local" else buckets[-1],
                prune=[[*restic(repository), "forget", "--keep-last", str(keep), "--prune"]],
                prune_label="forget --prune",
            )
        )
    # the local peers first, then the S3 ones, as the summary shows them
    peers.sort(key=lambda peer: peer.bucket is not None)
    return peers, environment, document, config


def stored_bytes(storage: dict[str, Any], seaweed: MeteredSeaweed | None) -> Callable[[], int]:
    if "bucket" in storage:
        assert seaweed is not None
        bucket = storage["bucket"]
        return lambda: seaweed.bucket_bytes(bucket)
    path = Path(storage["path"])
    return lambda: directory_bytes(path) if path.exists() else 0


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def summarize(result: dict[str, Any], days: int, keep: int) -> None:
    """Print one volume's growth day by day, the ratios and what retention left."""
    rows: list[Row] = result["rows"]
    peers: list[str] = result["peers"]
    key = result["volume"]
    print(f"\n== {key} ({result['bytes'] / MB:.1f} MB, {result['objects']:,} objects): "
          "stored MB after each backup (uploaded MB, S3 peers)")  # fmt: skip
    labels = list(dict.fromkeys(row.label for row in rows))
    print(f"  {'':17} " + " ".join(f"{peer[:22]:>22}" for peer in peers))
    for label in labels:
        cells = []
        for peer in peers:
            row = next(r for r in rows if r.label == label and r.peer == peer)
            sent = "" if row.uploaded is None else f" ({row.uploaded / MB:.1f})"
            cells.append(f"{row.stored / MB:.1f}{sent}")
        print(f"  {label:17} " + " ".join(f"{cell:>22}" for cell in cells))
    print("  peak RSS MiB, every backup: " + "; ".join(
        f"{peer} {min(r.rss_kib for r in rows if r.peer == peer) / 1024:.0f}-"
        f"{max(r.rss_kib for r in rows if r.peer == peer) / 1024:.0f}" for peer in peers
    ))  # fmt: skip

    def pick(label: str, peer: str) -> Row:
        return next(r for r in rows if r.label == label and r.peer == peer)

    day_rows = [r for r in rows if r.label.startswith("1 % day")]

    def per_day(peer: str) -> float:
        return sum(r.added for r in day_rows if r.peer == peer) / max(1, days)

    def uploaded_days(peer: str) -> int:
        return sum(r.uploaded or 0 for r in day_rows if r.peer == peer)

    for where in ("local", "s3"):
        trio = [peer for peer in peers if peer.endswith(f", {where}")]
        if not trio:
            continue
        tar, dedup, anchor = trio
        last = labels[-1]
        print(f"\n  {key}, {where}:")
        print(f"    first backup, dedup / tar: "
              f"{ratio(pick(labels[0], dedup).seconds, pick(labels[0], tar).seconds)} "
              "(target <= 1.1x)")  # fmt: skip
        print(f"    repeat of unchanged data, dedup / restic: "
              f"{ratio(pick(labels[1], dedup).seconds, pick(labels[1], anchor).seconds)} "
              "(target <= 1x)")  # fmt: skip
        if days:
            print(f"    stored per 1 % day, dedup / restic: "
                  f"{ratio(per_day(dedup), per_day(anchor))} (target <= 0.5x): "
                  f"{per_day(dedup) / MB:.2f} / {per_day(anchor) / MB:.2f} MB; "
                  f"tar {per_day(tar) / MB:.2f} MB")  # fmt: skip
            print(
                f"    stored after {days} days, dedup / restic: "
                f"{ratio(pick(last, dedup).stored, pick(last, anchor).stored)} "
                f"(target <= 0.8x): {pick(last, dedup).stored / MB:.1f} / "
                f"{pick(last, anchor).stored / MB:.1f} MB; tar {pick(last, tar).stored / MB:.1f}"
            )
        if where == "s3" and days:
            print(f"    uploaded over the {days} days, dedup / restic: "
                  f"{ratio(uploaded_days(dedup), uploaded_days(anchor))}: "
                  f"{uploaded_days(dedup) / MB:.1f} / {uploaded_days(anchor) / MB:.1f} MB; "
                  f"tar {uploaded_days(tar) / MB:.1f} MB")  # fmt: skip
            total = {
                p: sum(r.uploaded or 0 for r in rows if r.peer == p) for p in (tar, dedup, anchor)
            }
            print(f"    uploaded in all (first, repeat and the days), dedup / restic: "
                  f"{ratio(total[dedup], total[anchor])}: {total[dedup] / MB:.1f} / "
                  f"{total[anchor] / MB:.1f} MB; tar {total[tar] / MB:.1f} MB")  # fmt: skip
    print(f"\n  held after the run -> after keeping the last {keep}:")
    for peer in peers:
        print(
            f"    {peer:30} {result['held'][peer] / MB:9.1f} -> {result['kept'][peer] / MB:9.1f} MB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="of the mixed volume")
    parser.add_argument("--volume", choices=[*VOLUMES, "both"], default="mixed")
    parser.add_argument("--no-s3", action="store_true", help="local storages only")
    parser.add_argument("--keep", type=int, default=2, help="backups kept at the end")
    parser.add_argument("--image", default="volkeep-helper:busybox")
    options = parser.parse_args()
    api = docker.APIClient(timeout=600)
    seaweed = None
    seaweed_root = Path(tempfile.mkdtemp(prefix="vkbench-week-s3-", dir="/var/tmp"))
    results = []
    try:
        if not options.no_s3:
            seaweed = MeteredSeaweed(seaweed_root)
            print(f"starting SeaweedFS in {seaweed_root} ...", flush=True)
            seaweed.start()
        keys = list(VOLUMES) if options.volume == "both" else [options.volume]
        for key in keys:
            results.append(run_volume(api, VOLUMES[key], options, seaweed))
    finally:
        if seaweed is not None:
            seaweed.stop()
        shutil.rmtree(seaweed_root, ignore_errors=True)
    print(f"\n\n==== summary: {options.days} days, {restic_version()}; uploaded = bytes "
          "SeaweedFS received in request bodies for the peer's bucket")  # fmt: skip
    for result in results:
        summarize(result, options.days, options.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
