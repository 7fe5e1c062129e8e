"""Where a volkeep restore's time goes: volkeep, dockerd or the file system.

    python3 bench/restore_profile.py [--runs 3] [--image volkeep-helper:busybox]
                                     [--volume vkbench_mixed] [--json PATH]

Backs the volume (built by bench/run.py, reused) up once, writes the plain tar of it (from
`docker run … tar -cf -`), then times, --runs rounds interleaved (each round starting one
case later), each into a fresh volume after `sync` with its input read into the page cache:

- volkeep restore: the archive streamed to the Engine's archive endpoint (dockerd extracts,
  in a re-exec'd `docker-untar` child it waits for);
- container write limit: `docker run -i --log-driver none … tar -xf -` of the plain tar
  from a file (dockerd relays stdin to a tar in the container);
- host write limit: the host's `tar -xf` of the plain tar into the fresh volume's mountpoint
  (no Docker at all: the file system's own cost).

For each: the wall time; the CPU (user + sys) of the command and everything it waited for
(getrusage RUSAGE_CHILDREN: volkeep and its threads, or the docker CLI, or tar); dockerd's
own CPU and that of the children it reaped (/proc/<pid>/stat utime+stime, cutime+cstime,
before and after); containerd's; and the whole machine's busy and iowait CPU from
/proc/stat (which includes the containers' processes and every neighbour: the machine is
shared). Medians of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench_run  # bench/run.py

TICK = os.sysconf("SC_CLK_TCK")


def find_pid(name: str) -> int | None:
    """The pid of the (first) process whose comm is `name`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    return int(entry.name)
            except OSError:
                continue
    return None


def process_cpu(pid: int | None) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) of a process, in seconds."""
    if pid is None:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of the whole machine since boot, all cores."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / TICK, iowait / TICK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Case:
    label: str
    prepare: Callable[[], None]
    command: Callable[[], list[str]]
    stdin: Path | None = None


METRICS = ("wall", "command_cpu", "dockerd_cpu", "dockerd_children_cpu", "containerd_cpu",
           "machine_busy", "machine_iowait")  # fmt: skip


def measure(case: Case, dockerd: int | None, containerd: int | None) -> dict[str, float]:
    case.prepare()
    command = case.command()
    with open(case.stdin or os.devnull, "rb") as stdin:
        own_before, dockerd_before, containerd_before = (
            children_cpu(), process_cpu(dockerd), process_cpu(containerd)
        )  # fmt: skip
        busy_before, iowait_before = machine_cpu()
        started = time.perf_counter()
        done = subprocess.run(command, stdin=stdin, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)  # fmt: skip
        wall = time.perf_counter() - started
        busy_after, iowait_after = machine_cpu()
        own_after, dockerd_after, containerd_after = (
            children_cpu(), process_cpu(dockerd), process_cpu(containerd)
        )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}): {command}\n{done.stderr[-2000:]!r}")
    return {
        "wall": wall,
        "command_cpu": own_after - own_before,
        "dockerd_cpu": dockerd_after[0] - dockerd_before[0],
        "dockerd_children_cpu": dockerd_after[1] - dockerd_before[1],
        "containerd_cpu": sum(containerd_after) - sum(containerd_before),
        "machine_busy": busy_after - busy_before,
        "machine_iowait": iowait_after - iowait_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default="volkeep-helper:busybox")
    parser.add_argument("--volume", default=bench_run.MIXED)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    api = docker.APIClient(timeout=600)
    volume: str = args.volume
    if volume == bench_run.MIXED:
        bench_run.build_volume(api, volume, bench_run.fill_mixed)
    source = bench_run.mountpoint(api, volume)
    size = bench_run.volume_bytes(source)
    dockerd, containerd = find_pid("dockerd"), find_pid("containerd")
    cores = os.cpu_count() or 1
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{volume}: {size / bench_run.MB:.0f} MB; {cores} cores; dockerd pid {dockerd},"
          f" containerd pid {containerd}; load average {load}", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="volkeep-profile-", dir="/var/tmp"))
    bench = bench_run.Bench(api, args.image, args.runs, work)
    plain = work / "plain.tar"
    target = bench_run.TARGET
    try:
        bench.write_config()
        bench_run.warm(source)
        bench_run.timed(bench.volkeep("backup", "bench", "--volume", volume))
        bench_run.timed(["docker", "run", "--rm", "--log-driver", "none", "-v",
                         f"{volume}:/src:ro", args.image, "tar", "-cf", "-", "-C", "/src", "."],
                        stdout=plain)  # fmt: skip

        def fresh(inputs: Callable[[], list[Path]], create: bool) -> Callable[[], None]:
            def prepare() -> None:
                bench.fresh_target()
                bench_run.read_files(inputs())
                if create:
                    api.create_volume(target)

            return prepare

        cases = [
            Case("volkeep restore (fresh volume)",
                 fresh(lambda: bench.latest_archive_files(volume), create=False),
                 lambda: bench.volkeep("restore", "bench", "--volume", volume, "--to", target)),
            Case("container write limit: docker run -i tar -xf -",
                 fresh(lambda: [plain], create=True),
                 lambda: ["docker", "run", "-i", "--rm", "--log-driver", "none", "-v",
                          f"{target}:/dst", args.image, "tar", "-xf", "-", "-C", "/dst"],
                 stdin=plain),
            Case("host write limit: tar -xf into the mountpoint",
                 fresh(lambda: [plain], create=True),
                 lambda: ["tar", "-xf", str(plain), "-C", str(bench_run.mountpoint(api, target))]),
        ]  # fmt: skip
        samples: dict[str, list[dict[str, float]]] = {case.label: [] for case in cases}
        loads = [os.getloadavg()]
        for index in range(args.runs):
            shift = index % len(cases)
            for case in cases[shift:] + cases[:shift]:
                samples[case.label].append(measure(case, dockerd, containerd))
            loads.append(os.getloadavg())
    finally:
        bench.fresh_target()
        shutil.rmtree(work, ignore_errors=True)

    results = {
        label: {metric: statistics.median(run[metric] for run in runs) for metric in METRICS}
        for label, runs in samples.items()
    }
    print(f"\n== restore of {volume} ({size / bench_run.MB:.0f} MB): medians of {args.runs},"
          f" CPU seconds (all cores; {cores} cores = {cores} CPU-s per wall second)")  # fmt: skip
    print(f"  {'case':<48} {'wall':>6} {'MB/s':>6} {'command':>8} {'dockerd':>8}"
          f" {'+children':>9} {'containerd':>10} {'machine busy':>12} {'iowait':>7}"
          f" {'rest':>6}")  # fmt: skip
    for label, r in results.items():
        rest = (r["machine_busy"] - r["command_cpu"] - r["dockerd_cpu"]
                - r["dockerd_children_cpu"] - r["containerd_cpu"])  # fmt: skip
        print(f"  {label:<48} {r['wall']:6.2f} {size / r['wall'] / bench_run.MB:6.1f}"
              f" {r['command_cpu']:8.2f} {r['dockerd_cpu']:8.2f} {r['dockerd_children_cpu']:9.2f}"
              f" {r['containerd_cpu']:10.2f} {r['machine_busy']:12.2f}"
              f" {r['machine_iowait']:7.2f} {rest:6.2f}")  # fmt: skip
    print("  (command: volkeep, the docker CLI or tar, with the children they waited for;"
          " dockerd +children: what dockerd reaped, e.g. docker-untar; rest: busy CPU of"
          " everything else, the containers' tar and the neighbours included)")  # fmt: skip
    for label, runs in samples.items():
        walls = ", ".join(f"{run['wall']:.2f}" for run in runs)
        print(f"  {label:<48} runs: {walls}")
    print(
        "  load average (1, 5, 15 min) at the start and after each round: "
        + "; ".join(" ".join(f"{value:.2f}" for value in load) for load in loads)
    )
    if args.json:
        args.json.write_text(json.dumps({"bytes": size, "results": results, "runs": samples,
                                         "load": loads}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
