"""The deduplicated codec chain of a backup (docs/format-dedup.md): the helper's tar (as the
exclude filter passes it) → `RecipeBuilder` (each regular file's content cut into chunks;
with `marks`, a version 3 recipe: its lines in pieces, stored as chunks) → new chunks
compressed into packs, stored in every live copy → the recipe, zstd then age, streamed as
the archive file of each copy (`Copies`).

The order of writes is the format's: packs as they fill, then the index of this backup's
new chunks, then (the caller) the recipe's upload completed and the manifest, last. Just
before, the backup reads the condemned packs again (`_check_reuse`): garbage collection's
side of the race (`daemon.repository.chunkgarbage`).

Every copy has its own chunk repository. They share one config record (the first storage,
in the policy's order, that has one gives it to the others; a new one is drawn if none
has): the recipe names chunks by id, and one recipe goes to every copy. A chunk is new
unless every live copy's index lists it; a new chunk's pack goes to every copy (one that
had the chunk already then holds it twice: harmless, either serves).

Which chunks a storage holds is read through the index cache in the state dir, brought up
to date from the storage's index files first; this backup's new chunks reach that cache
only once the index that lists them is stored.
"""

from __future__ import annotations

import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.digest import HashingWriter
from daemon.archive.manifest import ChunkCounts
from daemon.archive.packs import ChunkWriter, PackEntry, SealedPack
from daemon.archive.recipe import Marks, PieceRef, RecipeBuilder
from daemon.archive.sealing import LEVEL, SectionWriter
from daemon.archive.tarstream import Include, Member, TarScanner
from daemon.config.keys import Identities, Recipient, recipient_strings
from daemon.repository.chunkgarbage import broken_reuse
from daemon.repository.chunks import ChunkReads, ChunkStore, DamagedChunks
from daemon.repository.copies import Copies
from daemon.repository.store import Repository
from daemon.state.chunkindex import ChunkIndex, Location, Pending

RECIPE_SUFFIX = ".recipe.zst"
RECIPE_LEVEL = LEVEL  # the recipe is a sealed section: zstd at the sections' level


class ChunkedArchive:
    """One backup's deduplicated chain into `copies` (begun: the recipe's uploads)."""

    def __init__(
        self,
        copies: Copies,
        policy: str,
        recipients: tuple[Recipient, ...],
        identities: Identities | None,
        state_dir: Path | None,
        marks: Marks | None = None,
    ) -> None:
        """Open every live copy's chunk repository (its config, created if missing) and
        bring its index cache up to date. A copy that cannot is dropped with its error.
        With `marks`, the recipe is of version 3 (members marked, their lines in pieces,
        members of the previous archive taken). Raise OperationError if none is left."""
        self._copies = copies
        self._recipients = recipients
        self._identities = identities
        self._encrypted_to = recipient_strings(recipients)
        self._resources = ExitStack()
        if state_dir is None:  # no state dir: a cache that lives as long as the backup
            state_dir = Path(self._resources.enter_context(tempfile.TemporaryDirectory()))
        self._stores: dict[str, ChunkStore] = {}
        self._caches: dict[str, ChunkIndex] = {}
        self._synced = datetime.now(UTC)  # the condemned packs are read after this
        self._empty: set[str] = set()  # the copies whose caches listed no chunk
        self._caches_lock = threading.Lock()  # the storing thread reads the caches too
        self._stored: deque[tuple[str, tuple[PackEntry, ...], dict[str, OSError]]] = deque()
        self._refused: set[str] = set()  # the copies that could not store a pack
        try:
            self.config = self._open(copies, policy, state_dir)
            self._pending = Pending()
            self._resources.callback(self._pending.close)
            self._writer = ChunkWriter(
                self.config,
                recipients,
                self,
                self._store_pack,
                spool_dir=state_dir,
                fresh=self._fresh,
            )
            self._resources.callback(self._writer.close)
            self.stored = HashingWriter(copies)
            self._recipe = SectionWriter(self.stored, recipients)
            self._resources.callback(self._recipe.close)
            self._builder = RecipeBuilder(
                self.config.chunker,
                self._writer.add,
                self._recipe,
                marks,
                partial(self._writer.add, piece=True) if marks is not None else None,
            )
        except BaseException:
            self._resources.close()
            raise
        self.added_bytes = 0

    def _open(self, copies: Copies, policy: str, state_dir: Path) -> ChunkConfig:
        configs: dict[str, ChunkConfig | None] = {}

        def read(repository: Repository) -> None:
            store = self._stores[repository.name] = ChunkStore(repository, policy)
            configs[repository.name] = store.read_config(self._identities, self._encrypted_to)

        copies.each("cannot read the chunk repository", read)
        found = next((config for config in configs.values() if config), None)
        drawn = found is None
        chosen = found or ChunkConfig.new()

        def share(repository: Repository) -> None:
            nonlocal chosen, drawn
            store = self._stores[repository.name]
            held = configs[repository.name] or store.create_config(
                chosen, self._recipients, self._identities
            )
            if drawn:  # another first backup of the policy may have stored its config first
                chosen, drawn = held, False
            if held != chosen:
                raise DamagedChunks(
                    f"its chunk repository {store.directory} has another config than the "
                    "policy's first storage: it cannot take the same chunks"
                )
            cache = self._caches[repository.name] = ChunkIndex(store.cache_path(state_dir))
            self._resources.callback(cache.close)
            store.sync(cache, self._identities, self._encrypted_to)
            if cache.empty():  # a new repository: no chunk to look up during this backup
                self._empty.add(repository.name)

        copies.each("cannot open the chunk repository", share)
        return chosen

    # KnownChunks, for the ChunkWriter: a chunk is known if this backup stored it already,
    # or every live copy holds it in a pack garbage collection has not condemned; the packs
    # it is reused from are remembered, for the check before the commit. A copy whose cache
    # listed no chunk when the backup began is asked nothing (a first backup's every chunk
    # is new): a chunk another backup stores there meanwhile is stored twice, harmless.

    def __contains__(self, chunk_id: object) -> bool:
        assert isinstance(chunk_id, str)
        return bool(self.holding([chunk_id]))

    def holding(self, chunk_ids: list[str]) -> set[str]:
        """Given chunk ids, return those known (one query per copy for them all), and
        remember the packs they are reused from."""
        held = self._pending.taken(chunk_ids)
        asked = [chunk_id for chunk_id in chunk_ids if chunk_id not in held]
        packs: dict[str, dict[str, str]] = {}
        for repository in self._copies.published:
            if repository.name in self._empty:
                return held
            with self._caches_lock:
                packs[repository.name] = self._caches[repository.name].usable(asked)
            asked = [chunk_id for chunk_id in asked if chunk_id in packs[repository.name]]
        for storage, found in packs.items():
            for chunk_id in asked:
                self._pending.rely(storage, found[chunk_id])
        return held.union(asked)

    def add(self, chunk_id: str) -> None:
        self._pending.add(chunk_id)
        if self._stored:  # packs the storing thread stored meanwhile
            self._settle()

    # The ChunkWriter's storing thread calls `_fresh` and `_store_pack`; what concerns the
    # copies and this backup's chunks (`_settle`) happens on the backup's thread.

    def _fresh(self, pack: str) -> bool:
        """Say whether no live copy holds a condemned pack of that name."""
        live = self._copies.published
        with self._caches_lock:
            return not any(self._caches[repository.name].is_condemned(pack) for repository in live)

    def _store_pack(self, pack: SealedPack) -> None:
        """Store a pack in every live copy; keep what each copy raised for `_settle`. A
        copy that could not store a pack is given no other (it is dropped at `_settle`:
        a full disk keeps no pack stored after the one that did not fit)."""
        failures: dict[str, OSError] = {}
        for repository in self._copies.published:
            if repository.name in self._refused:
                continue
            try:
                self._stores[repository.name].put_pack(pack)
            except OSError as error:
                failures[repository.name] = error
                self._refused.add(repository.name)
        self._stored.append((pack.name, pack.entries, failures))

    def _settle(self) -> None:
        """Drop each copy that failed to store a pack; record the stored packs' chunks.
        Raise OperationError if no copy is left."""
        while self._stored:
            name, entries, failures = self._stored.popleft()
            self._copies.each("cannot store a pack", partial(_raise_failure, failures))
            self._pending.place(
                Location(
                    entry.chunk_id, name, entry.offset, entry.stored_length, entry.plain_length
                )
                for entry in entries
            )

    def scanner(self, include: Include, done: Callable[[Member], None]) -> TarScanner:
        """Return the scanner to feed the helper's tar to: the stream's one parse, the
        recipe's (`RecipeBuilder.scanner`), calling `include` and `done` as a TarScanner
        does. Feeding it raises TarFormatError if the stream is not a tar; OperationError
        if no copy is left."""
        return self._builder.scanner(include, done)

    def take_lines(self, text: bytes, tar_size: int) -> None:
        """Take members whole from the previous archive's recipe: their lines, standing for
        `tar_size` bytes of the tar (their chunks are known: the caller checked them with
        `holding`)."""
        self._builder.take_lines(text, tar_size)

    def take_pieces(self, spliced: Iterable[PieceRef], tar_size: int) -> None:
        """Take members whole from the previous archive's version 3 recipe: the bytes of
        its pieces that hold their lines (the pieces and the members' chunks are known:
        the caller checked them with `holding`)."""
        self._builder.take_pieces(spliced, tar_size)

    @contextmanager
    def pieces(self, repository: Repository) -> Iterator[Callable[[str], bytes]]:
        """Yield what reads a piece of a recipe (its plain bytes, by its chunk id) from
        that copy's packs. Raise DamagedChunks if it is not a live copy."""
        if repository.name not in self._stores:
            raise DamagedChunks("its chunk repository could not be opened for this backup")
        reads = ChunkReads(
            self._stores[repository.name],
            self.config,
            self._caches[repository.name],
            self._identities,
            self._encrypted_to,
        )
        try:
            yield reads.piece
        finally:
            reads.close()

    def finish(self) -> None:
        """The tar has ended: store the last pack, then the index of this backup's new
        chunks in every live copy (and record them in its cache), and end the recipe; then
        drop the copies where a pack it relies on was condemned meanwhile (`_check_reuse`).
        Raise TarFormatError if the tar stopped before its end; OperationError if no copy
        is left."""
        self._builder.finish()
        self._writer.finish()
        self._settle()
        self._recipe.finish()
        index = self._writer.index
        self.added_bytes = self._writer.stored_bytes
        if not self._writer.new_chunks:
            self._check_reuse()
            return
        self.added_bytes += index.size

        def store_index(repository: Repository) -> None:
            self._stores[repository.name].put_index(index.sha256, index.stored())
            self._caches[repository.name].load(index.sha256, self._pending.placed())

        self._copies.each("cannot store the index", store_index)
        self._check_reuse()

    def _check_reuse(self) -> None:
        """Before the commit: drop each copy in which garbage collection condemned (or
        deleted) a pack this backup relies on too long ago for the manifest to be seen by
        the collection that deletes it (`broken_reuse`). Raise OperationError if no copy is
        left."""

        now = datetime.now(UTC)

        def check(repository: Repository) -> None:
            relied = partial(self._pending.packs, repository.name)
            pack = broken_reuse(self._stores[repository.name], relied, self._synced, now)
            if pack is not None:
                raise DamagedChunks(
                    f"garbage collection condemned pack {pack}, which this backup relies on, "
                    "while the backup ran: back up again"
                )

        self._copies.each("cannot commit the deduplicated archive", check)

    @property
    def tar_sha256(self) -> str | None:
        return self._builder.hexdigest()

    @property
    def tar_size(self) -> int:
        return self._builder.size

    def counts(self) -> ChunkCounts:
        writer = self._writer
        return ChunkCounts(writer.chunks, writer.new_chunks, writer.packs, self.added_bytes)

    def close(self) -> None:
        self._resources.close()


def _raise_failure(failures: dict[str, OSError], repository: Repository) -> None:
    """Raise what storing a pack in `repository` raised, if it did."""
    if repository.name in failures:
        raise failures[repository.name]
