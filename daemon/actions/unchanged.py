"""How a deduplicated backup reads the volume: whole, or only what changed since the
previous archive (docs/format-dedup.md, "Skipping unchanged files").

The helper lists the volume first (path, inode, links, size, mtime, ctime, mode, owner:
`daemon.engine.listing`). A full read then tars the whole volume in the same helper; each
member's recipe steps end with an M line holding the inode and ctime listed. A skip read
compares the listing with the previous archive (its manifest's entries and its recipe's M
lines): an object whose metadata did not change is taken whole from the previous recipe
(its header blocks and chunk list), the others are tarred by a second helper, and the two
are merged in the listing's order, which is the order of busybox tar's walk. The tar the
recipe describes is then byte for byte the one a full tar of the volume writes.

A full read happens when the previous archive cannot serve (none, not deduplicated, not
listed, another helper image or tar, unreadable), when the policy's `full_read_every`
has passed since the full read the previous archive's members go back to (a change that
kept size, mtime and ctime is caught then), or when too much changed to name on a command
line.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import docker
import structlog
import zstandard

from daemon.actions.chunked import ChunkedArchive
from daemon.archive.digest import HashingReader
from daemon.archive.encryption import NoIdentityMatches
from daemon.archive.exclude import MemberFilter, is_excluded
from daemon.archive.manifest import DEDUPLICATED, FileListing, Manifest, ManifestWriter
from daemon.archive.packs import PackFormatError
from daemon.archive.recipe import (
    SPLICED_HEADER,
    MemberLines,
    MemberMark,
    PieceRef,
    RecipeError,
    member_lines,
    write_spliced,
)
from daemon.archive.sealing import opener, section_reader
from daemon.archive.tarstream import Member, TarScanner, normalize_path
from daemon.config.keys import EncryptionError, Identities
from daemon.engine.listing import (
    ListingError,
    ListingParser,
    kind_of,
    listing_command,
    partial_tar_command,
)
from daemon.engine.tarflavour import TarFlavour, volume_tar
from daemon.errors import OperationError
from daemon.repository.layout import ArchiveKey
from daemon.repository.locate import Located
from daemon.repository.store import Repository
from daemon.state.filelist import FileList, ListedRow, PreviousRow
from daemon.terminal.progress import Progress

log = structlog.get_logger()

LOOKUP_BATCH = 256  # previous members whose chunks are looked up in one query
ARGUMENTS_LIMIT = 1 << 20  # bytes of changed paths named on the second helper's command line
# the member types an object of each listed format (st_mode & S_IFMT) is written as (a
# later name of a linked file, symlink or fifo: a hard link); devices and sockets are read
# every time
MEMBER_TYPES = {
    stat.S_IFREG: ("file", "hardlink"),
    stat.S_IFDIR: ("dir",),
    stat.S_IFLNK: ("symlink", "hardlink"),
    stat.S_IFIFO: ("fifo", "hardlink"),
}


def full_read_reason(
    previous: Manifest | None,
    flavour: TarFlavour,
    image_id: str,
    every: timedelta,
    now: datetime,
) -> str | None:
    """Given the volume's newest archive, the helper's tar and image and the policy's
    `full_read_every`, return why this backup must read every file, or None if it may
    take unchanged files from that archive."""
    if flavour.name != "busybox":
        return f"the helper's tar is {flavour.name}: skipping files needs busybox tar"
    if previous is None:
        return "no previous archive"
    if previous.layout != DEDUPLICATED or previous.files is None:
        return "the previous archive was not listed"
    if previous.files.helper_image != image_id:
        return "the helper image changed"
    if now - previous.files.full_read >= every:
        return f"a full read is due (full_read_every: {every})"
    return None


def _listed_path(name: str) -> str:
    """Given a name as the listing's `find .` gives it ("./a/b", "." for the root), return
    the path of its member in a backup (`normalize_path`): such a name holds no "//", "/./"
    nor trailing "/", so it is the name without "./" (9,000 names: some 0.006 s of CPU less
    than split and joined again)."""
    return name[2:] if name.startswith("./") else normalize_path(name)


def _member(row: PreviousRow) -> Member:
    """Given a previous archive's member as the file list holds it, return its entry."""
    return Member(
        row.path, row.type, row.mode, row.uid, row.gid, row.size, row.mtime, row.link,
        row.sha256, row.xattrs,
    )  # fmt: skip


class VolumeReading:
    """One deduplicated backup's read of the volume into `chunked` and `entries`."""

    def __init__(
        self,
        api: docker.APIClient,
        image: str,
        flavour: TarFlavour,
        volume: str,
        chunked_for: Callable[[Callable[[Member], MemberMark]], ChunkedArchive],
        spool_dir: Path | None,
    ) -> None:
        self._api = api
        self._image = image
        self.flavour = flavour
        self.volume = volume
        self.spool_dir = spool_dir
        self.files = FileList(spool_dir)
        try:
            self.chunked = chunked_for(self._mark)
        except BaseException:
            self.files.close()
            raise
        self.read = self.reused = self.read_bytes = 0

    def _mark(self, member: Member) -> MemberMark:
        """The M line of a member read through the helper: the inode and ctime listed, if
        the listing agrees with the header (else the file changed meanwhile: none)."""
        listed = self.files.listed(member.path)
        if listed is None or not (
            member.type in MEMBER_TYPES.get(stat.S_IFMT(listed.mode), ())
            and math.floor(member.mtime) == listed.mtime
            and (member.type != "file" or member.size == listed.size)
        ):
            return MemberMark(None, None)
        return MemberMark(listed.inode, listed.ctime)

    def _stream(self, command: Callable[[str], list[str]]) -> Iterator[memoryview]:
        return volume_tar(
            self._api,
            self._image,
            self.flavour,
            self.volume,
            state_dir=self.spool_dir,
            command=command,
        )

    def image_id(self) -> str:
        image_id: str = self._api.inspect_image(self._image)["Id"]
        return image_id

    def _listing(self, exclude: tuple[str, ...]) -> ListingParser:
        def take(listed: ListedRow) -> None:
            # a hard-linked name is MemberFilter's call (a kept link to an excluded name fails)
            if exclude:
                is_dir = kind_of(listed.mode) == "dir"
                if (is_dir or listed.links == 1) and is_excluded(exclude, listed.path, is_dir):
                    return
            self.files.add_listed(listed)

        return ListingParser(take, _listed_path)

    def full(self, scanner: TarScanner, exclude: tuple[str, ...], progress: Progress) -> None:
        """Read the whole volume: one helper lists it, then tars it. Only busybox tar's
        backups are listed: skipping files needs busybox tar, and the listing's shell would
        run its own tar applet for `exec tar` in an image whose sh is busybox's (and an
        image of unknown tar may have no find and stat)."""
        parser = self._listing(exclude)
        then = self.flavour.create_command(output="-")
        if self.flavour.name != "busybox":
            parser.ended = True
        for piece in self._stream(
            (lambda output: self.flavour.create_command(output=output))
            if parser.ended
            else lambda output: listing_command(output, then)
        ):
            rest = parser.feed(piece)
            if rest:
                self._feed(scanner, rest, progress)
        parser.close()
        scanner.close()

    def _feed(self, scanner: TarScanner, piece: bytes | memoryview, progress: Progress) -> None:
        scanner.feed(piece)
        self.read_bytes += len(piece)
        progress.advance(len(piece))

    def list_only(self, exclude: tuple[str, ...]) -> Callable[[], bool]:
        """Start listing the volume (a first helper) in a thread, into a spool: the
        helper's start and walk overlap with reading the previous archive. Return what
        waits for the listing, records it and says whether every object was listed (it
        must be called, to end the thread, whatever happens meanwhile)."""
        where = str(self.spool_dir) if self.spool_dir else None
        spool = tempfile.SpooledTemporaryFile(1 << 20, dir=where)  # noqa: SIM115

        def run() -> None:
            for piece in self._stream(lambda output: listing_command(output, [])):
                spool.write(piece)

        worker = ThreadPoolExecutor(1, thread_name_prefix="volkeep-listing")
        listing = worker.submit(run)
        worker.shutdown(wait=False)

        def recorded() -> bool:
            try:
                listing.result()
                spool.seek(0)
                parser = self._listing(exclude)
                while piece := spool.read(1 << 20):
                    if parser.feed(piece):
                        raise ListingError("bytes after the listing")
                parser.close()
                return parser.complete
            finally:
                spool.close()

        return recorded

    def plan(self, previous: PreviousArchive) -> list[str] | None:
        """Compare the listing with the previous archive; return the paths to read, in
        order, or None if they are too many to name (read the whole volume)."""
        # A ctime in or after the second the previous listing began is "racy": the file
        # may have changed after it was read, within the same second.
        racy_before = math.floor(previous.files.listed.timestamp())
        last = -1
        for seq, position in self.files.unchanged(racy_before, MEMBER_TYPES):
            if position > last:  # taken in the previous tar's order only
                self.files.reuse(seq, position)
                last = position
        self.files.read_linked_groups_whole()
        paths = self.files.to_read()
        size = sum(len(path.encode("utf-8", "surrogateescape")) + 3 for path in paths)
        if size > ARGUMENTS_LIMIT or any(not path.isprintable() for path in paths):
            return None
        return paths

    def skip(
        self,
        previous: PreviousArchive,
        paths: list[str],
        scanner_for: Callable[..., TarScanner],
        entries: ManifestWriter,
        selection: MemberFilter,
        progress: Progress,
    ) -> None:
        """Read the paths through a second helper, and take every other listed object from
        the previous archive, in the listing's order. Raise OperationError if the helper's
        members are not the ones asked for (the volume changed meanwhile)."""
        plan = self.files.plan()
        with previous.lines(self.chunked) as lines:
            pending = len(paths)

            def take_until_read() -> str | None:
                """Take the listed objects up to the next one to read; return its path."""
                for path, taken in plan:
                    if taken is None:
                        lines.flush()
                        return path
                    lines.take(taken.recipe_start, taken.recipe_stop, taken.tar_size)
                    entries.add(_member(taken))
                    self.reused += 1
                lines.flush()
                return None

            def include(member: Member) -> bool:
                nonlocal pending
                expected = take_until_read()
                if expected != member.path:
                    raise OperationError(
                        f"the volume changed while it was backed up: the helper gave "
                        f"{member.path!r} where {expected!r} was due; back up again"
                    )
                pending -= 1
                self.read += 1
                keep = selection.include(member)
                if not keep and not pending:
                    take_until_read()
                return keep

            def done(member: Member) -> None:
                entries.add(member)
                if not pending:
                    take_until_read()

            if paths:
                scanner = scanner_for(include, done)
                for piece in self._stream(lambda output: partial_tar_command(output, paths)):
                    self._feed(scanner, piece, progress)
                scanner.close()
            else:
                take_until_read()
                lines.take_trailer()
            if take_until_read() is not None or pending:
                raise OperationError("the volume changed while it was backed up; back up again")

    def close(self) -> None:
        self.files.close()


# The spelled-out text of a version 3 recipe, in the state dir: at zstd's fastest level
# (some 900 bytes a small file in clear, ten times less compressed), read twice, front to
# back.
SPELLED_OUT_LEVEL = 1


class PreviousArchive:
    """The previous archive a backup takes unchanged members from: its manifest, and its
    recipe copied into the state dir (checked against the manifest's SHA-256); a version 3
    recipe is spelled out from its pieces there too (`splice`), and the members taken from
    it are spliced from those pieces, not copied."""

    def __init__(
        self,
        repository: Repository,
        key: ArchiveKey,
        manifest: Manifest,
        identities: Identities | None,
        spool_dir: Path | None,
    ) -> None:
        """Raise OperationError if the recipe cannot be read, or is not the manifest's."""
        assert manifest.files is not None
        self.files = manifest.files
        self.manifest = manifest
        self._repository = repository
        self._key = key
        self._identities = identities
        self._trailer: MemberLines | None = None  # what follows the last member: `load`
        self._spool_dir = spool_dir
        self._recipe = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115
        # a version 3 recipe: its text spelled out, where its pieces' bytes are in it, and
        # the pieces every live copy holds (`splice`)
        self._spliced: BinaryIO | None = None
        self._pieces: list[tuple[int, PieceRef]] = []
        self._held: set[str] = set()
        with contextlib.closing(repository.open_archive(key, manifest)) as stored:
            hashing = HashingReader(stored)
            try:
                shutil.copyfileobj(hashing, self._recipe, 1 << 20)
            except OSError as error:
                raise repository.failure(error, "cannot read the previous recipe", key) from None
        if (hashing.size, hashing.hexdigest()) != (manifest.size, manifest.sha256):
            raise OperationError("the previous archive's recipe is not its manifest's")

    @contextlib.contextmanager
    def _text(self) -> Iterator[BinaryIO]:
        """Yield a reader of the recipe's text (of version 2: a version 3 recipe's spelled
        out, after `splice`) from the start."""
        if self._spliced is None:
            with self._stored_text() as text:
                yield text
            return
        self._spliced.seek(0)
        with section_reader(self._spliced, None) as plain:
            yield io.BufferedReader(plain, 1 << 16)  # type: ignore[type-var]

    @contextlib.contextmanager
    def _stored_text(self) -> Iterator[BinaryIO]:
        """Yield a reader of the recipe's text, decrypted and decompressed from the start."""
        self._recipe.seek(0)
        manifest = self.manifest
        decrypt = (
            opener(self._identities, manifest.recipients)
            if manifest.encryption is not None and self._identities is not None
            else None
        )
        with section_reader(self._recipe, decrypt) as plain:
            yield io.BufferedReader(plain, 1 << 16)  # type: ignore[type-var]

    def splice(self, known: ChunkedArchive) -> str | None:
        """If the recipe is of version 3, spell out its text from its pieces (read from
        the copy the archive was found in) and ask `known` which pieces every live copy
        holds. Return None, or why it cannot (a piece missing or damaged, or the copy not
        live): then no member can be taken."""
        with self._stored_text() as text:
            if text.readline() != SPLICED_HEADER.encode():
                return None
            self._spliced = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115
            try:
                with (
                    known.pieces(self._repository) as pieces,
                    zstandard.ZstdCompressor(level=SPELLED_OUT_LEVEL).stream_writer(
                        self._spliced, closefd=False
                    ) as spelled,
                ):
                    self._pieces = write_spliced(text, pieces, spelled)
            except (
                RecipeError,
                PackFormatError,
                EncryptionError,
                NoIdentityMatches,
                OperationError,
            ) as error:
                return f"the previous archive's recipe cannot be read ({error})"
            except OSError as error:
                return str(self._repository.failure(error, "cannot read the previous recipe"))
        self._held = known.holding(list({ref.chunk_id for _, ref in self._pieces}))
        return None

    def load(self, files: FileList, known: ChunkedArchive) -> None:
        """Record every member of the previous archive in `files`: its entry, its M line,
        where its lines are in the recipe, and whether `known` holds all its chunks. Raise
        OperationError if the recipe and the entries do not go together, RecipeError if
        the recipe is damaged."""
        entries = self._repository.manifest_entries(
            self._key, self._identities, self.manifest.recipients
        )
        with self._text() as text:
            members = member_lines(text)
            batch: list[tuple[int, Member, MemberLines]] = []
            for position, (member, lines) in enumerate(zip(entries, members, strict=False)):
                if lines.mark is None:
                    raise OperationError("the previous recipe's members are not its entries")
                batch.append((position, member, lines))
                if len(batch) == LOOKUP_BATCH:
                    _record_previous(files, known, batch)
                    batch = []
            _record_previous(files, known, batch)
            rest = next(members, None)
        if rest is None or rest.end is None:
            raise OperationError("the previous recipe's members are not its entries")
        self._trailer = rest

    @contextlib.contextmanager
    def lines(self, into: ChunkedArchive) -> Iterator[RecipeLines]:
        """Yield what takes runs of the recipe's lines into `into`, in order (after
        `load`)."""
        assert self._trailer is not None
        with self._text() as text:
            yield RecipeLines(text, self._trailer, into, self._pieces, self._held)

    def close(self) -> None:
        self._recipe.close()
        if self._spliced is not None:
            self._spliced.close()


class RecipeLines:
    """The previous recipe's text read once more, front to back, and the members taken
    from it into the new recipe: adjacent members in one run, the lines between them passed
    over. A run that lies wholly in pieces every live copy holds is spliced from them
    (`take_pieces`); any other is copied verbatim (`take_lines`)."""

    def __init__(
        self,
        text: BinaryIO,
        trailer: MemberLines,
        into: ChunkedArchive,
        pieces: list[tuple[int, PieceRef]],
        held: set[str],
    ) -> None:
        self._text = text
        self._trailer = trailer
        self._into = into
        self._pieces = pieces  # where the text's bytes of each S line are (`splice`)
        self._held = held
        self._next = 0  # the first of them not passed yet
        self._offset = 0  # of the text read so far
        self._start = self._stop = self._tar_size = 0  # the run not taken yet

    def take(self, start: int, stop: int, tar_size: int) -> None:
        """Take the lines from `start` to `stop` (a member's), standing for `tar_size`
        bytes of the tar."""
        assert start >= self._stop, "members are taken in their order"
        if start != self._stop:
            self.flush()
            self._start = start
        self._stop = stop
        self._tar_size += tar_size

    def take_trailer(self) -> None:
        """Take what follows the last member, up to the end line."""
        self.take(self._trailer.start, self._trailer.stop, self._trailer.tar_size)
        self.flush()

    def flush(self) -> None:
        """Take the run so far. Raise RecipeError if the text ends before it."""
        self._read(self._start - self._offset, lambda piece, last: None)
        spliced = self._spliced(self._start, self._stop)
        if spliced:
            self._read(self._stop - self._start, lambda piece, last: None)
            self._into.take_pieces(spliced, self._tar_size)
        else:
            self._read(
                self._stop - self._start,
                lambda piece, last: self._into.take_lines(piece, self._tar_size if last else 0),
            )
        self._start = self._offset
        self._tar_size = 0

    def _spliced(self, start: int, stop: int) -> list[PieceRef] | None:
        """Return the bytes of pieces that hold the text from `start` to `stop`, or None
        if some of it is in no piece, or in one a live copy does not hold."""
        pieces = self._pieces
        while self._next < len(pieces) and _end(*pieces[self._next]) <= start:
            self._next += 1
        found: list[PieceRef] = []
        at = start
        for offset, ref in pieces[self._next :]:
            if at >= stop:
                break
            if offset > at or ref.chunk_id not in self._held:
                return None
            until = min(stop, _end(offset, ref))
            skip = ref.start - offset
            found.append(ref._replace(start=at + skip, stop=until + skip))
            at = until
        return found if at >= stop else None

    def _read(self, size: int, each: Callable[[bytes, bool], None]) -> None:
        while size > 0:
            piece = self._text.read(min(size, 1 << 20))
            if not piece:
                raise RecipeError("the previous recipe's text ends before its members")
            size -= len(piece)
            self._offset += len(piece)
            each(piece, not size)


def _end(offset: int, ref: PieceRef) -> int:
    """Where the bytes of an S line found at `offset` of the spelled-out text end in it."""
    return offset + ref.stop - ref.start


def previous_archive(
    found: Located | None, identities: Identities | None, spool_dir: Path | None
) -> PreviousArchive | None:
    """Given the volume's newest readable backup (`newest_readable_backup`), return it
    opened to take members from if it is a listed deduplicated archive; None if it is not,
    or if its recipe cannot be read (logged)."""
    if found is None:
        return None
    manifest = found.manifest
    if manifest.layout != DEDUPLICATED or manifest.files is None:
        return None
    try:
        return PreviousArchive(found.repository, found.key, manifest, identities, spool_dir)
    except OperationError as error:
        log.warning("cannot read the previous archive: reading every file", why=str(error))
        return None


def read_volume(
    reading: VolumeReading,
    found: Located | None,
    identities: Identities | None,
    exclude: tuple[str, ...],
    every: timedelta,
    scanner_for: Callable[..., TarScanner],
    entries: ManifestWriter,
    selection: MemberFilter,
    progress: Progress,
) -> FileListing:
    """Read the volume into the reading's chunked archive and `entries`: only what changed
    since the previous archive (`found`: the volume's newest readable backup) when it can
    serve and no full read is due, else all of it. `scanner_for(include, done)` returns the
    scanner of the helper's tar that feeds them. Return what the manifest records of the
    read. Raise OperationError."""
    image_id: str = reading.image_id()
    listed = datetime.now(UTC)
    manifest = found.manifest if found is not None else None
    previous = previous_archive(found, identities, reading.spool_dir)
    with contextlib.ExitStack() as resources:
        if previous is not None:
            resources.callback(previous.close)
        why = full_read_reason(manifest, reading.flavour, image_id, every, listed)
        if why is None and previous is not None:
            why = previous.splice(reading.chunked)
        if why is None and previous is not None:
            listed_all = reading.list_only(exclude)
            try:
                previous.load(reading.files, reading.chunked)
            finally:
                complete = listed_all()
            if not complete:
                why = "an object could not be listed (removed meanwhile?)"
            else:
                paths = reading.plan(previous)
                if paths is None:
                    why = "too many changed files to name"
                else:
                    log.info("reading what changed", read=len(paths))
                    reading.skip(previous, paths, scanner_for, entries, selection, progress)
                    return FileListing(
                        listed,
                        previous.files.full_read,
                        image_id,
                        reading.read,
                        reading.reused,
                        reading.read_bytes,
                    )
        log.info("reading every file", why=why or "the previous archive cannot be read")
        reading.files.clear_listed()
        reading.full(scanner_for(selection.include, entries.add), exclude, progress)
        return FileListing(listed, listed, image_id, entries.count, 0, reading.read_bytes)


def _record_previous(
    files: FileList, known: ChunkedArchive, batch: list[tuple[int, Member, MemberLines]]
) -> None:
    """Record members of the previous archive (their positions, entries and lines) in
    `files`, their chunks looked up in `known` all at once."""
    held_ids = known.holding([chunk_id for *_, lines in batch for chunk_id in lines.chunk_ids])
    for position, member, lines in batch:
        assert lines.mark is not None
        held = held_ids.issuperset(lines.chunk_ids)
        files.add_previous(
            PreviousRow(
                position,
                member.path,
                member.type,
                member.mode,
                member.uid,
                member.gid,
                member.size,
                member.mtime,
                member.link,
                member.sha256,
                member.xattrs or None,
                lines.mark.inode,
                lines.mark.ctime,
                held,
                lines.start,
                lines.stop,
                lines.tar_size,
            )
        )
