"""The deduplicated format's core, measured: throughput, and what a small change re-stores.

    python3 bench/dedup.py [--mib 300] [--keep DIR]

Builds a mixed volume in a temporary directory (small and medium text-like files, a
database-like file of 4 KiB pages, incompressible media files; about --mib MiB) and tars
it with Python's tarfile (GNU format, as a helper would stream it). Then prints:

- throughput over the first tar, each stage added to the previous one: scanning and
  per-file chunking (FastCDC, 16/64/256 KiB); keyed BLAKE3 ids; zstd level 3 of every
  chunk and packing (all chunks new, packs discarded); MB of tar per second of wall time
  and per CPU-second of the process (one thread; the tar is read from the page cache);
- the re-store ratio of two days: a "1 % day" (1 % of the files edited in place, 100
  bytes each, and 0.5 % of the database's pages rewritten) and a day that only touches the
  mtime of 1 % of the files: the plain bytes of new chunks over the tar's size, for
  per-file chunking and for chunking the whole tar stream (64 KiB and 1 MiB average), and
  what the per-file day stores after zstd, in packs;
- the recipe's size after zstd, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.chunking import ChunkerParameters, FileChunker
from daemon.archive.packs import ChunkWriter, SealedPack
from daemon.archive.recipe import RecipeBuilder
from daemon.archive.spool import SpooledSection

PIECE = 1 << 20
PAGE = 4096
TEXT = bytes.maketrans(bytes(range(256)), bytes(b"etaoinshrdlu \n.,"[i % 16] for i in range(256)))


def text(generator: random.Random, size: int) -> bytes:
    """Text-like bytes: 16 symbols, about 2x compressible by zstd."""
    return generator.randbytes(size).translate(TEXT)


def build_volume(root: Path, mib: int, generator: random.Random) -> None:
    """About `mib` MiB: 13 % small files, 33 % medium, 21 % database pages, 33 % media."""
    unit = mib / 300
    for number in range(int(20_000 * unit)):
        path = root / "small" / f"{number % 100:02d}" / f"note-{number}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text(generator, generator.randint(200, 3800)))
    for number in range(int(200 * unit)):
        (root / "medium").mkdir(exist_ok=True)
        size = generator.randint(100_000, 1_000_000)
        (root / "medium" / f"log-{number}.txt").write_bytes(text(generator, size))
    pages = (int(64 * unit) << 20) // PAGE
    with open(root / "database.db", "wb") as database:
        for _ in range(pages):
            database.write(generator.randbytes(PAGE // 2) + bytes(PAGE // 2))
    (root / "media").mkdir()
    for number in range(2):
        (root / "media" / f"video-{number}.mp4").write_bytes(os.urandom(int(48 * unit) << 20))


def one_percent_day(root: Path, generator: random.Random) -> None:
    """Edit 1 % of the files in place (100 bytes each) and rewrite 0.5 % of the pages."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    for path in generator.sample(files, max(1, len(files) // 100)):
        size = path.stat().st_size
        with open(path, "r+b") as file:
            file.seek(generator.randrange(max(1, size - 100)))
            file.write(generator.randbytes(min(100, size)))
    database = root / "database.db"
    pages = database.stat().st_size // PAGE
    with open(database, "r+b") as file:
        for page in generator.sample(range(pages), max(1, pages // 200)):
            file.seek(page * PAGE)
            file.write(generator.randbytes(PAGE // 2) + bytes(PAGE // 2))


def touch_one_percent(root: Path, generator: random.Random) -> None:
    files = sorted(path for path in root.rglob("*") if path.is_file())
    for path in generator.sample(files, max(1, len(files) // 100)):
        os.utime(path, (time.time() + 3600, time.time() + 3600))


def make_tar(root: Path, output: Path) -> int:
    with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as archive:
        archive.add(root, arcname=".")
    return output.stat().st_size


def pieces(path: Path) -> Callable[[], bytes]:
    file = open(path, "rb")  # noqa: SIM115  # read to the end by the caller
    return lambda: file.read(PIECE)


def per_file(tar: Path, config: ChunkConfig, store: Callable[[memoryview], str]) -> bytes:
    """Feed the tar through a RecipeBuilder; return its recipe after zstd."""
    with SpooledSection() as recipe:
        builder = RecipeBuilder(config.chunker, store, recipe)
        read = pieces(tar)
        while piece := read():
            builder.feed(piece)
        builder.finish()
        recipe.finish()
        return b"".join(recipe.stored())


def whole_stream(tar: Path, config: ChunkConfig, parameters: ChunkerParameters) -> dict[str, int]:
    """Chunk the tar as one stream; return each chunk's id and size."""
    chunks: dict[str, int] = {}

    def keep(chunk: memoryview) -> None:
        chunks[config.chunk_id(chunk)] = len(chunk)

    chunker = FileChunker(parameters, keep)
    read = pieces(tar)
    while piece := read():
        chunker.feed(piece)
    chunker.finish()
    return chunks


def timed(step: Callable[[], object]) -> tuple[float, float]:
    """Run `step`; return its wall time and this process's CPU time over it (seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def rates(mb: float, seconds: tuple[float, float]) -> str:
    return f"{mb / seconds[0]:7.0f} MB/s {mb / seconds[1]:7.0f} MB/CPU-s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=300, help="the volume's size (default 300)")
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it (default: a temp dir)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="volkeep-dedup-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    generator = random.Random(20)
    try:
        root = work / "volume"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        build_volume(root, args.mib, generator)
        files = sum(1 for path in root.rglob("*") if path.is_file())
        day1 = work / "day1.tar"
        size = make_tar(root, day1)
        one_percent_day(root, generator)
        day2 = work / "day2.tar"
        make_tar(root, day2)
        touch_one_percent(root, generator)
        day3 = work / "day3.tar"
        make_tar(root, day3)
        report(day1, day2, day3, size, files)
    finally:
        if args.keep is None:
            shutil.rmtree(work)


def report(day1: Path, day2: Path, day3: Path, size: int, files: int) -> None:
    config = ChunkConfig.new()
    mb = size / 1e6
    print(f"volume: {files} files, tar {mb:.0f} MB (Python tarfile, GNU format)\n")
    print("throughput over the first tar (one thread, each stage added to the previous;")
    print("wall time, and per CPU-second of this process: the machine may be shared):")
    lengths: list[int] = []

    def no_id(chunk: memoryview) -> str:
        lengths.append(len(chunk))
        return "0" * 64

    seconds = timed(lambda: per_file(day1, config, no_id))
    print(f"  scan + per-file FastCDC chunking   {rates(mb, seconds)}")
    seconds = timed(lambda: per_file(day1, config, config.chunk_id))
    print(f"  + keyed BLAKE3 chunk ids           {rates(mb, seconds)}")
    packed = [0]

    def count(pack: SealedPack) -> None:
        packed[0] += len(pack.data)

    writer = ChunkWriter(config, [], set(), count)
    recipe: list[bytes] = []
    seconds = timed(lambda: recipe.append(per_file(day1, config, writer.add)))
    writer.finish()
    writer.close()
    print(f"  + zstd -3 of every chunk, packs    {rates(mb, seconds)}")
    mean = sum(lengths) / max(1, len(lengths))
    print(
        f"  {len(lengths)} chunks (mean {mean / 1024:.0f} KiB; {files} files), "
        f"{writer.packs} packs of {packed[0] / 1e6:.0f} MB ({packed[0] / size:.0%} of the tar), "
        f"recipe {len(recipe[0]) / 1e6:.2f} MB after zstd\n"
    )

    print("re-stored: new chunks' plain bytes / the day's tar size")
    print(f"  {'':34} {'1 % day':>9} {'1 % mtimes':>11}")
    ratios = []
    pairs = [(day1, day2), (day2, day3)]  # the mtimes are touched the day after the 1 % day
    for previous, tar in pairs:
        known: set[str] = set()
        base = ChunkWriter(config, [], known, lambda pack: None)
        per_file(previous, config, base.add)
        day = ChunkWriter(config, [], known, count)
        packed[0] = 0
        per_file(tar, config, day.add)
        day.finish()
        ratios.append((day.new_plain_bytes / tar.stat().st_size, packed[0]))
    line = f"{ratios[0][0]:9.1%} {ratios[1][0]:11.1%}"
    print(f"  {'per-file chunking, 64 KiB avg':34} {line}")
    for name, parameters in [
        ("whole-stream chunking, 64 KiB avg", ChunkerParameters()),
        ("whole-stream chunking, 1 MiB avg", ChunkerParameters(256 << 10, 1 << 20, 4 << 20)),
    ]:
        cells = []
        for previous, tar in pairs:
            before = whole_stream(previous, config, parameters)
            after = whole_stream(tar, config, parameters)
            new = sum(length for chunk, length in after.items() if chunk not in before)
            cells.append(new / tar.stat().st_size)
        print(f"  {name:34} {cells[0]:9.1%} {cells[1]:11.1%}")
    print(
        f"  per-file, stored after zstd in packs: {ratios[0][1] / 1e6:.1f} MB "
        f"(1 % day), {ratios[1][1] / 1e6:.1f} MB (mtimes)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
