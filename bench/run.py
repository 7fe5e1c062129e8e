"""volkeep's benchmark: backup, restore and drill, on local storage, on S3 and encrypted.

    python3 bench/run.py [--runs 3] [--image volkeep-helper:busybox] [--skip-naive]
                         [--only local,s3,encryption,restic] [--json PATH]

Builds (once, then reuses) a ~1 GiB mixed volume, a ~100 MiB volume, a 10,000-tiny-file
volume and a 200,000-small-file volume, then times with a warm page cache, medians of
--runs:

- local: volkeep backup, restore and drill of every volume to local storage; for the mixed
  volume the naive peer approach (busybox `tar -czf` through `docker run`, and its
  restore), the container stream limit (`tar -cf` with log driver none), the container
  write limit (`tar -xf` through `docker run -i`) and the raw host limit;
- s3: a SeaweedFS on loopback (started here in its own temporary directory, killed at the
  end); the mixed volume backed up to s3 only and to [local, s3], restored (into a fresh
  volume) and drilled from s3;
- encryption: the mixed volume backed up, restored and drilled on local storage with age
  encryption (a key generated for the run);
- restic: restic (Debian's package) as a peer, on the mixed and the 200,000-small-file
  volumes: `restic backup .` of the volume's mountpoint into a fresh local repository
  (interleaved with volkeep's backup), `restic restore latest --target` the mountpoint of a
  fresh volume (interleaved with volkeep's restore, the same preparation: a fresh volume,
  `sync`, both archives read into the page cache; both restores' trees are checked against
  the source), and volkeep's drill.

The mixed volume's local backup, restore and drill are the reference of every ratio, so
they always run; the s3 and encryption cases are interleaved with them round by round (a
shared machine drifts, and a ratio should compare like with like). `--only` picks parts.
Prints MB/s, the ratios the targets are stated in, the compression ratio and volkeep's
peak RSS for every command.
"""

from __future__ import annotations

import argparse
import compileall
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PREFIX = "vkbench_"
MIXED, MEDIUM, TINY = PREFIX + "mixed", PREFIX + "medium", PREFIX + "tiny"
SMALL200K = PREFIX + "small200k"
TARGET = PREFIX + "target"
MB = 1e6
PARTS = ("local", "s3", "encryption", "restic")
RESTIC_PASSWORD = "vkbench"  # a throwaway repository in the work dir
BUCKET = "vkbench"
RSS_LIMIT_MIB = 150


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


def fill_small(
    count: int, per_directory: int, seed: int, digits: tuple[int, int]
) -> Callable[[Path], None]:
    """`count` files of 200-700 bytes, half text, half random, `per_directory` to a
    directory; `digits`: the widths of the directory and file numbers in their names."""

    def fill(root: Path) -> None:
        rng = random.Random(seed)
        for index in range(count):
            directory = root / f"d{index // per_directory:0{digits[0]}d}"
            if index % per_directory == 0:
                directory.mkdir()
            size = rng.randint(200, 700)
            if index % 2:
                data = rng.randbytes(size)
            else:
                line = f"record {index} status=ok value={rng.random():.6f}\n".encode()
                data = (line * (size // len(line) + 1))[:size]
            (directory / f"f{index:0{digits[1]}d}.txt").write_bytes(data)

    return fill


fill_small200k = fill_small(200_000, 500, seed=2, digits=(3, 6))  # 400 directories of 500


def tree_summary(root: Path) -> tuple[int, int, int]:
    """(bytes of regular files, regular files, directories) under root."""
    size = files = directories = 0
    for _, dirnames, filenames in os.walk(root):
        directories += len(dirnames)
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(_, name)).st_size
    return size, files, directories


def read_files(paths: list[Path]) -> None:
    """Read files into the page cache."""
    for path in paths:
        with open(path, "rb") as file:
            while file.read(1 << 20):
                pass


def volume_bytes(root: Path) -> int:
    return sum(path.lstat().st_size for path in root.rglob("*") if path.is_file())


def warm(root: Path) -> None:
    """Read the volume into the page cache (the VM evicts pages idle for ~60 s)."""
    subprocess.run(raw_tar(root), check=True)


def sync() -> None:
    subprocess.run(["sync"], check=True)


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

# volkeep's own transport alone: the helper's tar through the pipe, read and dropped
PIPE_STREAM = (
    "import sys\n"
    "from pathlib import Path\n"
    "import docker\n"
    "from daemon.engine.tarflavour import detect_flavour, volume_tar\n"
    "api = docker.APIClient()\n"
    "image, volume, state_dir = sys.argv[1:]\n"
    "flavour = detect_flavour(api, image)\n"
    "for _ in volume_tar(api, image, flavour, volume, state_dir=Path(state_dir)):\n"
    "    pass\n"
)


def timed(
    command: list[str],
    *,
    stdin: Path | None = None,
    stdout: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[float, int]:
    """Run a command (in `cwd`, with `env`); return (seconds, peak RSS in KiB of the
    command itself). volkeep's modules are compiled first, as an installed volkeep's are:
    with PYTHONDONTWRITEBYTECODE set, each command timed would compile them (0.15-0.3 s)."""
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "daemon", quiet=1)
    with (
        open(stdin or os.devnull, "rb") as stdin_file,
        open(stdout or os.devnull, "wb") as stdout_file,
        tempfile.TemporaryFile() as stderr_file,
        tempfile.NamedTemporaryFile("r") as rss_file,
    ):
        launcher = [sys.executable, "-c", PEAK_RSS, rss_file.name, *command]
        started = time.perf_counter()
        code = subprocess.call(
            launcher, stdin=stdin_file, stdout=stdout_file, stderr=stderr_file, env=env, cwd=cwd
        )
        elapsed = time.perf_counter() - started
        if code != 0:
            stderr_file.seek(0)
            error = stderr_file.read().decode(errors="replace")
            raise SystemExit(f"failed (exit {code}): {command}\n{error[-2000:]}")
        return elapsed, int(rss_file.read())


@dataclass(frozen=True)
class Case:
    """One timed command: `prepare` runs before each run, `check` after it, both untimed."""

    label: str
    prepare: Callable[[], None]
    command: Callable[[], list[str]]
    stdin: Path | None = None
    stdout: Path | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None
    check: Callable[[], None] | None = None


@dataclass(frozen=True)
class Variant:
    """One way of keeping the mixed volume: a policy of the benchmark's config."""

    key: str
    label: str
    policy: str
    storage: str  # where `list` reads the archive size
    restores: bool = True  # also restored and drilled (a fan-out's copies are the others')


VARIANTS = {
    "local": Variant("local", "local", "bench", "local"),
    "s3": Variant("s3", "s3 only", "s3only", "offsite"),
    "fanout": Variant("fanout", "[local, s3]", "fanout", "local", restores=False),
    "encrypted": Variant("encrypted", "age, local", "sealed", "local"),
}


def variant_label(label: str, variant: Variant) -> str:
    return label if variant.key == "local" else f"{label}, {variant.label}"


PART_VARIANTS: dict[str, list[str]] = {
    "local": ["local"], "s3": ["s3", "fanout"], "encryption": ["encrypted"], "restic": [],
}  # fmt: skip


class WorkDirectory:
    """A benchmark's work directory: volkeep's config, local repository and state dir."""

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


class Bench(WorkDirectory):
    def write_config(
        self, s3: dict[str, object] | None = None, encryption: dict[str, object] | None = None
    ) -> None:
        """The local policy `bench` of every volume; with `s3` (a storage entry) the mixed
        volume's `s3only` and `fanout` policies; with `encryption`, its `sealed` policy."""
        storages: dict[str, object] = {"local": {"type": "local", "path": str(self.repo)}}
        # the one-file archive (format: tar), which the ratios against the container's stream
        # and write limits are about; bench/dedup_week.py measures the default, dedup
        common = {"helper_image": self.image, "format": "tar"}
        policies: dict[str, object] = {
            "bench": {**common, "storage": "local", "volumes": [MIXED, MEDIUM, TINY, SMALL200K]}
        }
        if s3 is not None:
            storages["offsite"] = s3
            policies["s3only"] = {**common, "storage": "offsite", "volumes": [MIXED]}
            policies["fanout"] = {**common, "storage": ["local", "offsite"], "volumes": [MIXED]}
        if encryption is not None:
            policies["sealed"] = {
                **common, "storage": "local", "volumes": [MIXED], "encryption": encryption,
            }  # fmt: skip
        self.config.write_text(
            json.dumps({"version": 1, "storage": storages, "policies": policies}, indent=1)
        )
        check = subprocess.run(self.volkeep("validate"), capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"the benchmark's config is refused:\n{check.stdout}{check.stderr}")

    def fresh_target(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_volume(TARGET, force=True)
        sync()

    def interleaved(self, cases: list[Case]) -> dict[str, tuple[float, int]]:
        """Run every case --runs times, round by round (each round starting one case later),
        print each median with its runs, and return {label: (median seconds, peak RSS KiB)}."""
        times: dict[str, list[float]] = {case.label: [] for case in cases}
        peaks = dict.fromkeys(times, 0)
        for index in range(self.runs):
            shift = index % len(cases)
            for case in cases[shift:] + cases[:shift]:
                case.prepare()
                seconds, rss = timed(
                    case.command(), stdin=case.stdin, stdout=case.stdout, env=case.env,
                    cwd=case.cwd,
                )  # fmt: skip
                if case.check is not None:
                    case.check()
                times[case.label].append(seconds)
                peaks[case.label] = max(peaks[case.label], rss)
        results = {}
        width = max(44, *(len(case.label) for case in cases))
        for case in cases:
            result = statistics.median(times[case.label])
            runs = ", ".join(f"{t:.2f}" for t in times[case.label])
            print(f"  {case.label:<{width}} {result:7.2f} s  (runs: {runs})", flush=True)
            results[case.label] = (result, peaks[case.label])
        return results

    def median(
        self,
        label: str,
        prepare: Callable[[], None],
        command: Callable[[], list[str]],
        stdin: Path | None = None,
        stdout: Path | None = None,
    ) -> tuple[float, int]:
        return self.interleaved([Case(label, prepare, command, stdin, stdout)])[label]

    def archive_size(self, policy: str, volume: str, storage: str) -> float:
        """The median size of the volume's backups in one storage, as `list --json` says."""
        listing = subprocess.run(
            self.volkeep("list", policy, "--volume", volume, "--storage", storage, "--json"),
            capture_output=True, text=True,
        )  # fmt: skip
        if listing.returncode != 0:
            raise SystemExit(f"failed: volkeep list {policy}\n{listing.stderr[-2000:]}")
        rows = [row for row in json.loads(listing.stdout) if row["kind"] == "backup"]
        if not rows:
            raise SystemExit(f"volkeep list {policy} --storage {storage}: no archive of {volume}")
        return float(statistics.median(int(row["size"]) for row in rows))

    def mixed(self, variants: list[Variant]) -> dict[str, dict[str, float]]:
        """Backup, restore and drill of the mixed volume in each variant, interleaved."""
        root = mountpoint(self.api, MIXED)
        restorable = [variant for variant in variants if variant.restores]
        operations = {
            "backup": ("volkeep backup", lambda: warm(root), ()),
            "restore": ("volkeep restore (fresh volume)", self.fresh_target, ("--to", TARGET)),
            "drill": ("volkeep drill (check, restore, read back, compare)", sync,
                      ("--archive", "latest")),
        }  # fmt: skip
        results: dict[str, dict[str, float]] = {variant.key: {} for variant in variants}
        for operation, (label, prepare, extra) in operations.items():
            chosen = variants if operation == "backup" else restorable
            cases = [
                Case(variant_label(label, variant), prepare,
                     partial(self.volkeep, operation, variant.policy, "--volume", MIXED, *extra))
                for variant in chosen
            ]  # fmt: skip
            measured = self.interleaved(cases)
            for variant in chosen:
                seconds, rss = measured[variant_label(label, variant)]
                results[variant.key] |= {operation: seconds, f"{operation}_rss_mib": rss / 1024}
        for variant in variants:
            size = self.archive_size(variant.policy, MIXED, variant.storage)
            results[variant.key]["archive_size"] = size
        return results

    def backup_and_restore(self, volume: str) -> dict[str, float]:
        root = mountpoint(self.api, volume)
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
            sync,
            lambda: self.volkeep("drill", "bench", "--volume", volume, "--archive", "latest"),
        )
        return {
            "backup": backup,
            "restore": restore,
            "drill": drill,
            "backup_rss_mib": backup_rss / 1024,
            "restore_rss_mib": restore_rss / 1024,
            "drill_rss_mib": drill_rss / 1024,
            "archive_size": self.archive_size("bench", volume, "local"),
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
        self.state.mkdir(exist_ok=True)
        results["pipe_limit"], _ = self.median(
            "pipe stream limit (helper tar through volkeep's pipe, dropped)",
            lambda: warm(root),
            lambda: [sys.executable, "-c", PIPE_STREAM, self.image, volume, str(self.state)],
        )
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

    def latest_archive_files(self, volume: str) -> list[Path]:
        """The files of the volume's newest archive of the `bench` policy (archive, manifest)."""
        archives = list(self.repo.glob(f"*/bench/{volume}/{volume}-*.tar.zst"))
        if not archives:
            raise SystemExit(f"no archive of {volume} in {self.repo}")
        newest = max(archives, key=lambda path: path.stat().st_mtime)
        stem = newest.name.removesuffix(".tar.zst")
        return sorted(newest.parent.glob(f"{stem}.*"))

    def versus_restic(self, volume: str) -> dict[str, float]:
        """volkeep and restic on one volume, local repositories, warm cache: backups
        interleaved (restic's into a fresh repository each time, so both are full backups),
        restores into a fresh volume interleaved (the same preparation for both, and both
        restored trees checked against the source), then volkeep's drill."""
        root = mountpoint(self.api, volume)
        expected = tree_summary(root)
        restic_repo = self.work / f"restic-{volume}"
        restic_cache = self.work / f"restic-cache-{volume}"
        env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD}

        def restic(*args: str) -> list[str]:
            return ["restic", "--repo", str(restic_repo), "--cache-dir", str(restic_cache),
                    "--quiet", *args]  # fmt: skip

        def fresh_restic_repo() -> None:
            shutil.rmtree(restic_repo, ignore_errors=True)
            shutil.rmtree(restic_cache, ignore_errors=True)
            subprocess.run(restic("init"), env=env, check=True, capture_output=True)

        def backup_prepare(fresh_repo: bool) -> None:
            if fresh_repo:
                fresh_restic_repo()
            sync()
            warm(root)

        def archives_warm() -> None:
            read_files(self.latest_archive_files(volume))
            read_files([path for path in restic_repo.rglob("*") if path.is_file()])

        def restore_prepare(create_target: bool) -> None:
            self.fresh_target()
            archives_warm()
            if create_target:  # volkeep creates its target itself, as part of its restore
                self.api.create_volume(TARGET)

        def drill_prepare() -> None:
            sync()
            read_files(self.latest_archive_files(volume))

        def check_target(who: str) -> None:
            found = tree_summary(mountpoint(self.api, TARGET))
            if found != expected:
                raise SystemExit(
                    f"{who} restored {found} (bytes, files, directories) of {volume}, "
                    f"the source has {expected}"
                )

        backups = self.interleaved([
            Case("volkeep backup", partial(backup_prepare, False),
                 lambda: self.volkeep("backup", "bench", "--volume", volume)),
            Case("restic backup . (fresh repository)", partial(backup_prepare, True),
                 lambda: restic("backup", "--host", "vkbench", "."), env=env, cwd=root),
        ])  # fmt: skip
        restores = self.interleaved([
            Case("volkeep restore (fresh volume)", partial(restore_prepare, False),
                 lambda: self.volkeep("restore", "bench", "--volume", volume, "--to", TARGET),
                 check=partial(check_target, "volkeep restore")),
            Case("restic restore latest --target (fresh volume)", partial(restore_prepare, True),
                 lambda: restic("restore", "latest", "--target", str(mountpoint(self.api, TARGET))),
                 env=env, check=partial(check_target, "restic restore")),
        ])  # fmt: skip
        drill, drill_rss = self.median(
            "volkeep drill (check, restore, read back, compare)",
            drill_prepare,
            lambda: self.volkeep("drill", "bench", "--volume", volume, "--archive", "latest"),
        )
        restic_size = sum(path.stat().st_size for path in restic_repo.rglob("*") if path.is_file())
        (backup, backup_rss), (restic_backup, restic_backup_rss) = backups.values()
        (restore, restore_rss), (restic_restore, restic_restore_rss) = restores.values()
        return {
            "bytes": expected[0], "files": expected[1], "directories": expected[2],
            "backup": backup, "restore": restore, "drill": drill,
            "restic_backup": restic_backup, "restic_restore": restic_restore,
            "backup_rss_mib": backup_rss / 1024, "restore_rss_mib": restore_rss / 1024,
            "drill_rss_mib": drill_rss / 1024,
            "restic_backup_rss_mib": restic_backup_rss / 1024,
            "restic_restore_rss_mib": restic_restore_rss / 1024,
            "archive_size": self.archive_size("bench", volume, "local"),
            "restic_repository_size": float(restic_size),
        }  # fmt: skip


def parse_parts(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown) or '(none)'}: choose from {', '.join(PARTS)}"
        )
    return parts


def age_encryption(work: Path) -> dict[str, object]:
    """A fresh age key: the identity in a file of mode 0600, the recipient in the policy."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    identity_file = work / "age-identity.txt"
    descriptor = os.open(identity_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as key:
        key.write(f"{identity}\n")
    return {"age": {"recipients": [str(identity.to_public())],
                    "identity_file": str(identity_file)}}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default="volkeep-helper:busybox")
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow gzip peer")
    parser.add_argument(
        "--only", type=parse_parts, default=list(PARTS), metavar="PARTS",
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all); the mixed "
        "volume's local backup, restore and drill always run: every ratio is against them",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--scale", action="store_true",
        help="instead: memory and manifest size from 10,000 to 1,000,000 files (bench/scale.py)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.scale:
        from scale import VOLUMES, run_scale

        return run_scale(args.image, args.runs, list(VOLUMES), args.json)
    parts: list[str] = args.only
    api = docker.APIClient(timeout=600)
    build_volume(api, MIXED, fill_mixed)
    if "local" in parts:
        build_volume(api, MEDIUM, fill_medium)
        build_volume(api, TINY, fill_tiny)
    if "restic" in parts:
        build_volume(api, SMALL200K, fill_small200k)
    work = Path(tempfile.mkdtemp(prefix="volkeep-bench-", dir="/var/tmp"))
    bench = Bench(api, args.image, args.runs, work)
    report: dict[str, dict[str, float]] = {}
    variants: dict[str, dict[str, float]] = {}
    peers: dict[str, dict[str, float]] = {}
    seaweed = None
    seaweed_root = None
    try:
        s3_storage = None
        if "s3" in parts:
            from tests.support.seaweed import SeaweedServer

            seaweed_root = Path(tempfile.mkdtemp(prefix="volkeep-bench-s3-", dir="/var/tmp"))
            seaweed = SeaweedServer(seaweed_root)
            print(f"starting SeaweedFS in {seaweed_root} ...", flush=True)
            seaweed.start()
            s3_storage = {
                "type": "s3",
                "bucket": seaweed.create_bucket(BUCKET),
                "endpoint": seaweed.endpoint,
                "region": "us-east-1",
                "path_style": True,
                "credentials_file": str(seaweed.credentials_file(work / "s3.credentials")),
            }
        encryption = age_encryption(work) if "encryption" in parts else None
        bench.write_config(s3_storage, encryption)
        chosen = ["local"] + [key for part in parts if part != "local"
                              for key in PART_VARIANTS[part]]  # fmt: skip
        size = volume_bytes(mountpoint(api, MIXED))
        print(f"\n{MIXED}: {size / MB:.0f} MB ({', '.join(VARIANTS[k].label for k in chosen)})",
              flush=True)  # fmt: skip
        variants = bench.mixed([VARIANTS[key] for key in chosen])
        report[MIXED] = dict(variants["local"])
        if "local" in parts:
            report[MIXED] |= bench.baselines(MIXED, args.skip_naive)
        report[MIXED]["bytes"] = size
        for volume in (MEDIUM, TINY) if "local" in parts else ():
            size = volume_bytes(mountpoint(api, volume))
            print(f"\n{volume}: {size / MB:.0f} MB", flush=True)
            report[volume] = bench.backup_and_restore(volume) | {"bytes": size}
        for volume in (MIXED, SMALL200K) if "restic" in parts else ():
            print(f"\n{volume} against {restic_version()}", flush=True)
            peers[volume] = bench.versus_restic(volume)
    finally:
        bench.fresh_target()
        if seaweed is not None:
            seaweed.kill()
        if seaweed_root is not None:
            shutil.rmtree(seaweed_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    summarize(report, variants)
    if peers:
        summarize_restic(peers)
    if args.json:
        args.json.write_text(
            json.dumps({"volumes": report, "mixed": variants, "restic": peers}, indent=1)
        )
    return 0


def restic_version() -> str:
    """`restic 0.14.0` (the first two words of `restic version`)."""
    output = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    return " ".join(output.stdout.split()[:2])


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def summarize(report: dict[str, dict[str, float]], variants: dict[str, dict[str, float]]) -> None:
    mixed = report[MIXED]

    def rate(seconds: float) -> float:
        return mixed["bytes"] / seconds / MB

    print("\n== mixed volume, MB/s (median)")
    for key in ("raw_host", "stream_limit", "pipe_limit", "backup", "naive_backup",
                "write_limit", "restore", "naive_restore", "drill"):  # fmt: skip
        if key in mixed:
            print(f"  {key:<14} {rate(mixed[key]):8.1f} MB/s  {mixed[key]:7.2f} s")

    print("\n== mixed volume by storage and encryption: seconds (median), MB/s, peak RSS MiB")
    print(f"  {'variant':<12} {'backup':>7} {'MB/s':>6} {'restore':>8} {'MB/s':>6} {'drill':>6}"
          f" {'RSS backup':>11} {'restore':>8} {'drill':>6} {'archive':>10}")  # fmt: skip
    for key, results in variants.items():
        if "restore" in results:
            restore = (f"{results['restore']:8.2f} {rate(results['restore']):6.1f}"
                       f" {results['drill']:6.2f}")  # fmt: skip
            restore_rss = f"{results['restore_rss_mib']:8.1f} {results['drill_rss_mib']:6.1f}"
        else:
            restore, restore_rss = f"{'-':>8} {'-':>6} {'-':>6}", f"{'-':>8} {'-':>6}"
        print(f"  {VARIANTS[key].label:<12} {results['backup']:7.2f}"
              f" {rate(results['backup']):6.1f} {restore} {results['backup_rss_mib']:11.1f}"
              f" {restore_rss} {results['archive_size'] / MB:7.1f} MB")  # fmt: skip

    print("\n== targets")
    if "naive_backup" in mixed:
        speedup = mixed["naive_backup"] / mixed["backup"]
        print(f"  backup vs naive gzip helper:     {speedup:5.1f}x faster  (target >= 8x)"
              f"    {verdict(speedup >= 8)}")  # fmt: skip
    ratio_lines: list[tuple[str, float, float | None]] = []
    if "stream_limit" in mixed:
        ratio_lines += [
            ("backup / container stream limit", mixed["backup"] / mixed["stream_limit"], 1.3),
            ("backup / pipe stream limit", mixed["backup"] / mixed["pipe_limit"], None),
            ("restore / container write limit", mixed["restore"] / mixed["write_limit"], 1.3),
        ]
    local = variants["local"]
    if "fanout" in variants:
        ratio_lines += [
            ("backup [local, s3] / local backup", variants["fanout"]["backup"] / local["backup"],
             1.3),
            ("backup s3 only / local backup", variants["s3"]["backup"] / local["backup"], None),
            ("restore from s3 / from local", variants["s3"]["restore"] / local["restore"], 1.2),
            ("drill from s3 / from local", variants["s3"]["drill"] / local["drill"], None),
        ]  # fmt: skip
    if "encrypted" in variants:
        sealed = variants["encrypted"]
        ratio_lines += [
            ("encrypted / plain backup", sealed["backup"] / local["backup"], 1.15),
            ("encrypted / plain restore", sealed["restore"] / local["restore"], 1.15),
            ("encrypted / plain drill", sealed["drill"] / local["drill"], None),
        ]
    for label, ratio, target in ratio_lines:
        goal = f"(target <= {target})  {verdict(ratio <= target)}" if target else "(no target)"
        print(f"  {label + ':':<34} {ratio:5.2f}          {goal}")
    print(f"  compression ratio (zstd):          {mixed['bytes'] / mixed['archive_size']:5.2f}")
    if "naive_size" in mixed:
        print(f"  compression ratio (naive gzip):    {mixed['bytes'] / mixed['naive_size']:5.2f}")
    peaks = [
        (f"{name} {operation}", results[f"{operation}_rss_mib"])
        for name, results in [*((VARIANTS[k].label, r) for k, r in variants.items()),
                              *((v, r) for v, r in report.items() if v != MIXED)]
        for operation in ("backup", "restore", "drill") if f"{operation}_rss_mib" in results
    ]  # fmt: skip
    worst, worst_mib = max(peaks, key=lambda peak: peak[1])
    print(f"  peak RSS of every volkeep command: {worst_mib:5.1f} MiB ({worst})"
          f"  (target < {RSS_LIMIT_MIB} MiB)  {verdict(worst_mib < RSS_LIMIT_MIB)}")  # fmt: skip

    print(f"\n== per volume (local storage): seconds, and peak RSS of volkeep in MiB"
          f" (target < {RSS_LIMIT_MIB}, flat)")  # fmt: skip
    print(f"  {'volume':<16} {'size':>8} {'backup':>7} {'restore':>8} {'drill':>6}"
          f" {'RSS backup':>11} {'restore':>8} {'drill':>6}")  # fmt: skip
    for volume, results in report.items():
        print(f"  {volume:<16} {results['bytes'] / MB:5.0f} MB {results['backup']:7.2f}"
              f" {results['restore']:8.2f} {results['drill']:6.2f}"
              f" {results['backup_rss_mib']:11.1f} {results['restore_rss_mib']:8.1f}"
              f" {results['drill_rss_mib']:6.1f}")  # fmt: skip


def summarize_restic(peers: dict[str, dict[str, float]]) -> None:
    print("\n== volkeep and restic, local repositories, warm cache: seconds (median), peak RSS MiB")
    print(f"  {'volume':<18} {'size':>8} {'files':>7}  {'volkeep backup':>14} {'restore':>8}"
          f" {'drill':>6}  {'restic backup':>13} {'restore':>8}  {'stored: volkeep':>15}"
          f" {'restic':>8}")  # fmt: skip
    for volume, r in peers.items():
        print(f"  {volume:<18} {r['bytes'] / MB:5.0f} MB {r['files']:7.0f}  {r['backup']:14.2f}"
              f" {r['restore']:8.2f} {r['drill']:6.2f}  {r['restic_backup']:13.2f}"
              f" {r['restic_restore']:8.2f}  {r['archive_size'] / MB:12.1f} MB"
              f" {r['restic_repository_size'] / MB:5.1f} MB")  # fmt: skip
    print(f"  {'peak RSS, MiB':<35}  {'volkeep backup':>14} {'restore':>8} {'drill':>6}"
          f"  {'restic backup':>13} {'restore':>8}")  # fmt: skip
    for volume, r in peers.items():
        print(f"  {volume:<35}  {r['backup_rss_mib']:14.1f} {r['restore_rss_mib']:8.1f}"
              f" {r['drill_rss_mib']:6.1f}  {r['restic_backup_rss_mib']:13.1f}"
              f" {r['restic_restore_rss_mib']:8.1f}")  # fmt: skip
    print("\n== targets against restic (ratios of the same run)")
    for volume, r in peers.items():
        ratios: list[tuple[str, float, float | None]] = [
            ("volkeep restore / restic restore", r["restore"] / r["restic_restore"], 1.0),
            ("volkeep drill / (backup + restore)", r["drill"] / (r["backup"] + r["restore"]), 1.0),
            ("volkeep backup / restic backup", r["backup"] / r["restic_backup"], None),
        ]  # fmt: skip
        print(f"  {volume}")
        for label, ratio, target in ratios:
            goal = f"(target <= {target})  {verdict(ratio <= target)}" if target else "(no target)"
            print(f"    {label + ':':<36} {ratio:5.2f}  {goal}")
        worst = max(r[f"{operation}_rss_mib"] for operation in ("backup", "restore", "drill"))
        restic_worst = max(r["restic_backup_rss_mib"], r["restic_restore_rss_mib"])
        print(f"    {'peak RSS of volkeep:':<36} {worst:5.1f} MiB  (target < {RSS_LIMIT_MIB} MiB)"
              f"  {verdict(worst < RSS_LIMIT_MIB)}; restic's: {restic_worst:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
