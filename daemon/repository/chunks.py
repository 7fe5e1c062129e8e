"""A storage's chunk repository: the config record, packs and index files of one host's
policy, under `<host>/<policy>/_chunks/` (docs/format-dedup.md, "Where it lives").

Writes are conditional creates under content names (a pack or index written twice is the
same bytes), the config record once. Nothing here is ever rewritten in place. Only garbage
collection deletes (`daemon.repository.chunkgarbage`): packs it condemned a margin before,
index files whose surviving entries it wrote anew first, and its own condemned records.

The chunk index is read through a cache in the state dir (`daemon.state.chunkindex`),
brought up to date from the storage's index files (`sync`): the index files are the truth.
Reading an archive back (`ChunkReads`) fetches its packs a few ahead of the tar being
rebuilt, in threads, and checks every chunk against its id.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from itertools import chain, islice
from pathlib import Path

from daemon.archive.chunkconfig import (
    CONFIG_KEY,
    ChunkConfig,
    ChunkConfigError,
    open_config,
    seal_config,
)
from daemon.archive.packs import (
    ChunkReader,
    IndexEntry,
    Pack,
    PackFormatError,
    SealedPack,
    condemned_key,
    condemned_record,
    index_key,
    open_pack,
    pack_key,
    read_condemned,
    read_index,
)
from daemon.archive.recipe import (
    HEADER,
    ChunkStep,
    Step,
    read_recipe,
    tar_pieces,
    without_contents,
)
from daemon.archive.sealing import Readable, opener, section_reader
from daemon.archive.tarstream import Include
from daemon.config.keys import EncryptionError, Identities, Recipient, recipient_strings
from daemon.repository.store import Repository
from daemon.state.chunkindex import ChunkIndex, Location
from daemon.storage.base import BlobExists, BlobMissing

DIRECTORY = "_chunks"  # no volume name starts with "_": never a volume's directory
PACKS_AHEAD = 2  # packs fetched ahead of the tar being rebuilt (8 MiB each)
STEPS_AHEAD = 4096  # recipe steps looked at ahead for the packs they need
LOCATE_STEPS = 256  # recipe steps whose chunks are looked up in the index in one query
FETCHING_THREADS = 2
# The bytes of the packs of a recipe's pieces kept opened: a version 3 recipe names pieces
# of many earlier backups' packs in turn, and with two kept, a repeat fetched the same
# few packs again and again (to S3: 193 GETs on the eighth 1 % day of a run whose first
# made 9; 27 with these kept, docs/benchmarks.md).
PIECE_PACKS_BYTES = 16 << 20
# The tar rebuilt is yielded in pieces of about this size. A restore queues a few dozen of
# them between its threads: at 1 MiB a whole restore of the benchmark's mixed volume peaked
# at 131-154 MiB (glibc's heap left with holes of their size), at 256 KiB at 112-132 MiB,
# for the same CPU seconds (docs/benchmarks.md, "Restore memory at the budget's edge").
READ_SIZE = 1 << 18


class DamagedChunks(OSError):
    """The storage's chunk repository cannot be used: a record in it is damaged, of an
    unknown version, or cannot be opened with the identities given. It fails like the
    storage failing: that storage alone."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EIO, why)


def chunks_directory(namespace: str, policy: str) -> str:
    """Given a host's namespace and a policy, return the chunk repository's directory."""
    return f"{namespace}/{policy}/{DIRECTORY}/" if namespace else f"{policy}/{DIRECTORY}/"


class ChunkStore:
    """The chunk repository of one host's policy in one storage."""

    def __init__(self, repository: Repository, policy: str, namespace: str | None = None) -> None:
        self.repository = repository
        self.policy = policy
        self.namespace = repository.host if namespace is None else namespace
        self.directory = chunks_directory(self.namespace, policy)

    def read_config(
        self, identities: Identities | None, encrypted_to: Sequence[str] = ()
    ) -> ChunkConfig | None:
        """Return the repository's config, or None if it has none yet. Raise OSError
        (DamagedChunks if the record cannot be read or opened)."""
        try:
            stored = self.repository.store.get(self.directory + CONFIG_KEY)
        except BlobMissing:
            return None
        try:
            return open_config(stored, identities, encrypted_to)
        except (ChunkConfigError, EncryptionError) as error:
            raise DamagedChunks(f"chunk repository {self.directory}: {error}") from None

    def create_config(
        self, config: ChunkConfig, recipients: Sequence[Recipient], identities: Identities | None
    ) -> ChunkConfig:
        """Write the config record with a conditional create; return the config the
        storage holds then: `config`, or the one another process wrote first. Raise
        OSError."""
        self.repository.require_own()
        try:
            self.repository.store.put(
                self.directory + CONFIG_KEY, seal_config(config, recipients), exclusive=True
            )
            return config
        except BlobExists:
            held = self.read_config(identities, recipient_strings(recipients))
            if held is None:
                raise DamagedChunks(f"chunk repository {self.directory}: config vanished") from None
            return held

    def put_pack(self, pack: SealedPack) -> None:
        """Store a pack under its name. Raise OSError."""
        self._put_once(pack_key(pack.name), pack.data, classed=True)

    def put_index(self, name: str, stored: Iterable[bytes]) -> None:
        """Store an index file under its name. Raise OSError."""
        self._put_once(index_key(name), stored)

    def _put_once(
        self, key: str, data: bytes | bytearray | Iterable[bytes], *, classed: bool = False
    ) -> None:
        """Store a record named by its content, once; `classed` for packs, the bulk of the
        bytes, which go to the storage's class (the index and config records, read when a
        cache is rebuilt, stay STANDARD as manifests do)."""
        self.repository.require_own()
        with contextlib.suppress(BlobExists):  # named by its content: the same bytes are there
            self.repository.store.put(self.directory + key, data, exclusive=True, classed=classed)

    def index_names(self) -> set[str]:
        """Return the names of the repository's index files. Raise OSError."""
        return self._names("index/")

    def pack_names(self) -> set[str]:
        """Return the names of the repository's packs. Raise OSError."""
        return {key.rsplit("/", 1)[-1] for key in self._names("packs/")}

    def _names(self, folder: str) -> set[str]:
        top = self.directory + folder
        return {key[len(top) :] for key in self.repository.store.list(top)}

    def condemned(self) -> tuple[dict[str, int], set[str]]:
        """Return the packs garbage collection condemned (name: since when, in Unix seconds;
        the earliest if several records name a pack) and the names of the records that say
        so. Raise OSError (DamagedChunks if a record is damaged)."""
        condemned: dict[str, int] = {}
        names = self._names("condemned/")
        for name in names:
            try:
                stored = self.repository.store.get(self.directory + condemned_key(name))
            except BlobMissing:
                continue  # replaced by a newer record as we listed
            try:
                record = read_condemned(name, stored)
            except PackFormatError as error:
                raise DamagedChunks(f"chunk repository {self.directory}: {error}") from None
            for pack, since in record.items():
                condemned[pack] = min(since, condemned.get(pack, since))
        return condemned, names

    def put_condemned(self, condemned: dict[str, int]) -> str:
        """Store a condemned record of these packs; return its name. Raise OSError."""
        name, data = condemned_record(condemned)
        self._put_once(condemned_key(name), data)
        return name

    def delete(self, key: str) -> None:
        """Delete a pack, index file or condemned record (its key under the repository's
        directory: `pack_key`, `index_key`, `condemned_key`). Raise OSError."""
        self.repository.require_own()
        self.repository.store.delete(self.directory + key)

    def index_locations(
        self, name: str, identities: Identities | None, encrypted_to: Sequence[str]
    ) -> Iterator[Location]:
        """Yield the entries of one index file. Raise OSError (DamagedChunks if it is
        damaged or cannot be opened)."""
        decrypt = opener(identities, encrypted_to) if identities is not None else None
        try:
            with closing(self.repository.store.open(self.directory + index_key(name))) as stored:
                for entry in read_index(name, stored, decrypt):
                    yield Location(*_fields(entry))
        except (PackFormatError, EncryptionError) as error:
            raise DamagedChunks(f"chunk repository {self.directory}: {error}") from None

    def get_pack(self, name: str) -> bytes:
        """Return a pack's stored bytes. Raise PackFormatError if it is not there (the
        archive's fault: an index lists it), OSError if the storage fails."""
        try:
            return self.repository.store.get(self.directory + pack_key(name))
        except BlobMissing:
            raise PackFormatError(f"pack {name} is missing") from None

    def sync(
        self, cache: ChunkIndex, identities: Identities | None, encrypted_to: Sequence[str]
    ) -> None:
        """Bring the cache up to date with the storage's index files (load those it lacks;
        start again if one it holds is gone: garbage collection freed packs) and its
        condemned packs. Raise OSError."""
        cache.condemn(self.condemned()[0])
        names = self.index_names()
        loaded = cache.loaded()
        if loaded - names:
            cache.clear()
            loaded = set()
        for name in sorted(names - loaded):
            cache.load(name, self.index_locations(name, identities, encrypted_to))

    def cache_path(self, state_dir: Path) -> Path:
        """Given the state dir, return the file of this repository's index cache: one per
        storage (its name and where it points), host and policy."""
        where = "\0".join(
            (self.repository.name, self.repository.describe(), self.namespace, self.policy)
        )
        return state_dir / "chunks" / f"{hashlib.sha256(where.encode()).hexdigest()[:32]}.sqlite"


def _fields(entry: IndexEntry) -> tuple[str, str, int, int, int]:
    return entry.chunk_id, entry.pack, entry.offset, entry.stored_length, entry.plain_length


class ChunkReads:
    """The chunks of one archive being rebuilt, read from a storage's packs: `ahead` passes
    the recipe's steps on while threads fetch and open (`open_pack`: SHA-256 against the
    name, age, trailer; all of which release the GIL) the packs of the steps to come, at
    most PACKS_AHEAD at once; calling it returns a chunk's plain bytes, checked against its
    id (`ChunkReader`). Each chunk is located in the index once, as `ahead` passes it.
    Memory: the packs opened ahead and those kept opened, 8 MiB each, and the packs of a
    recipe's pieces, up to PIECE_PACKS_BYTES."""

    def __init__(
        self,
        chunks: ChunkStore,
        config: ChunkConfig,
        cache: ChunkIndex,
        identities: Identities | None,
        encrypted_to: Sequence[str],
    ) -> None:
        self._chunks = chunks
        self._cache = cache
        self._identities = identities
        self._encrypted_to = encrypted_to
        self._pool = ThreadPoolExecutor(FETCHING_THREADS, thread_name_prefix="volkeep-packs")
        self._fetching: dict[str, Future[Pack]] = {}
        # where the chunks of the steps `ahead` passed on are, in their order
        self._located: deque[IndexEntry | None] = deque()
        self._reader = ChunkReader(config, self._locate, self._load)
        # a recipe's pieces: located apart (not in the steps' order), their packs kept apart,
        # as many as PIECE_PACKS_BYTES hold
        self._pieces = ChunkReader(config, self._find, self._load, kept_bytes=PIECE_PACKS_BYTES)

    def _locate(self, chunk_id: str) -> IndexEntry | None:
        where = self._located.popleft() if self._located else None
        return where if where is not None and where.chunk_id == chunk_id else self._find(chunk_id)

    def _find(self, chunk_id: str) -> IndexEntry | None:
        found = self._cache.locate(chunk_id)
        return IndexEntry(*found) if found is not None else None

    def _load(self, pack: str) -> Pack:
        fetching = self._fetching.pop(pack, None)
        if fetching is not None:
            return fetching.result()
        return self._open(pack)

    def _open(self, pack: str) -> Pack:
        return open_pack(pack, self._chunks.get_pack(pack), self._identities, self._encrypted_to)

    def __call__(self, chunk_id: str) -> bytes:
        """Return the chunk's plain bytes. Raise PackFormatError if no index lists it or it
        is damaged, EncryptionError if its pack cannot be opened, OSError if the storage
        fails."""
        return self._reader(chunk_id)

    def piece(self, chunk_id: str) -> bytes:
        """Return a piece's plain bytes (a version 3 recipe's), as calling does a chunk's."""
        return self._pieces(chunk_id)

    def ahead(self, steps: Iterable[Step]) -> Iterator[Step]:
        """Yield the steps, each once the packs of up to STEPS_AHEAD steps after it are
        being fetched (no more than PACKS_AHEAD at once). The chunks must then be asked
        for in the order of their steps."""
        window: deque[Step] = deque()
        for step, where in self._located_steps(steps):
            if isinstance(step, ChunkStep):
                self._located.append(where)
            while window and (
                len(window) >= STEPS_AHEAD
                or (len(self._fetching) >= PACKS_AHEAD and self._to_fetch(where))
            ):
                yield window.popleft()
            if pack := self._to_fetch(where):
                self._fetching[pack] = self._pool.submit(self._open, pack)
            window.append(step)
        yield from window

    def _located_steps(self, steps: Iterable[Step]) -> Iterator[tuple[Step, IndexEntry | None]]:
        """Yield each step with where its chunk lies (None: not a chunk, or no index lists
        it), the chunks of LOCATE_STEPS steps looked up at a time."""
        remaining = iter(steps)
        while batch := list(islice(remaining, LOCATE_STEPS)):
            ids = [step.chunk_id for step in batch if isinstance(step, ChunkStep)]
            located = self._cache.locate_all(ids)
            for step in batch:
                found = located.get(step.chunk_id) if isinstance(step, ChunkStep) else None
                yield step, IndexEntry(*found) if found is not None else None

    def _to_fetch(self, where: IndexEntry | None) -> str | None:
        """Return the pack of a chunk if it is to be fetched: neither fetched nor opened."""
        if where is None or where.pack in self._fetching or self._reader.holds(where.pack):
            return None
        return where.pack

    def close(self) -> None:
        for fetching in self._fetching.values():
            fetching.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._fetching.clear()


@contextmanager
def archive_chunks(
    chunks: ChunkStore,
    identities: Identities | None,
    encrypted_to: Sequence[str],
    state_dir: Path | None,
) -> Iterator[ChunkReads]:
    """Yield what reads the chunks (and a version 3 recipe's pieces) of an archive of that
    chunk repository (sealed, when `identities` are given, to `encrypted_to`); the chunk
    index is read through the cache in `state_dir` (None: a temporary one). Raise
    ChunkConfigError if the config is missing, as `read_config` if it is damaged."""
    config = chunks.read_config(identities, encrypted_to)
    if config is None:
        raise ChunkConfigError(f"chunk repository {chunks.directory} has no config")
    with ExitStack() as resources:
        if state_dir is None:
            state_dir = Path(resources.enter_context(tempfile.TemporaryDirectory()))
        cache = ChunkIndex(chunks.cache_path(state_dir))
        resources.callback(cache.close)
        chunks.sync(cache, identities, encrypted_to)
        reads = ChunkReads(chunks, config, cache, identities, encrypted_to)
        resources.callback(reads.close)
        yield reads


def recipe_tar(
    chunks: ChunkStore,
    recipe: Readable,
    identities: Identities | None,
    encrypted_to: Sequence[str],
    state_dir: Path | None,
    contents: Include | None = None,
) -> Iterator[bytes]:
    """Given an archive's chunk repository and its recipe's stored bytes being read (sealed,
    when `identities` are given, to `encrypted_to`), yield its tar in pieces of about
    READ_SIZE; the chunks are read as `archive_chunks` reads them. With `contents`, the
    members whose content it refuses come with zero bytes for content instead, and their
    chunks are not read (`without_contents`; a recipe of version 1 marks no member's end,
    and is read whole).

    Raise RecipeError, PackFormatError or ChunkConfigError if the recipe, a pack or the
    config is damaged or missing (the tar's size and SHA-256 are checked after the last
    piece), EncryptionError if the identities cannot open them, OSError if the storage
    fails."""
    decrypt = opener(identities, encrypted_to) if identities is not None else None
    with (
        archive_chunks(chunks, identities, encrypted_to, state_dir) as reads,
        section_reader(recipe, decrypt) as plain,
    ):
        lines = iter(io.TextIOWrapper(plain, encoding="ascii"))  # type: ignore[type-var]
        first = next(lines, "")
        steps = read_recipe(chain((first,), lines), reads.piece)
        if contents is not None and first != HEADER:  # members' ends are marked
            steps = without_contents(steps, contents)
        yield from tar_pieces(reads.ahead(steps), reads, READ_SIZE, digested=first == HEADER)
