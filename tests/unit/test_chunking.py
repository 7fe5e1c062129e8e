"""Per-file content-defined chunking and chunk ids (docs/format-dedup.md)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pyfastcdc
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.archive.chunkconfig import ChunkConfig
from daemon.archive.chunking import ChunkerParameters, FileChunker

# 4 MiB of pseudo-random bytes that no library upgrade changes (SHAKE-256 of a fixed text)
GOLDEN_INPUT = hashlib.shake_256(b"volkeep chunking golden vector").digest(4 << 20)
# FastCDC 2020 with the default parameters (16/64/256 KiB, NC 1, seed 0) cuts it so. A
# pyfastcdc upgrade that moves a boundary would stop new chunks matching stored ones.
GOLDEN_LENGTHS = [
    95460, 73064, 80744, 74453, 78132, 85943, 100433, 71135, 78775, 131243, 72322, 120910,
    90274, 131429, 23012, 53896, 138518, 42235, 38456, 48761, 171190, 93981, 69692, 78792,
    161357, 117171, 26554, 53312, 143330, 72515, 27678, 46380, 127262, 48536, 104671, 56117,
    120108, 39121, 94152, 41875, 46010, 104317, 61071, 73518, 72452, 70108, 73534, 38596,
    65898, 74742, 86608, 104461,
]  # fmt: skip


def cut(data: bytes, pieces: list[int] | None = None, **parameters: int) -> list[bytes]:
    """Cut `data` as one file, fed in pieces of the given sizes (default: whole)."""
    chunks: list[bytes] = []
    chunker = FileChunker(
        ChunkerParameters(**parameters), lambda chunk: chunks.append(bytes(chunk))
    )
    start = 0
    for size in pieces or [len(data)]:
        chunker.feed(data[start : start + size])
        start += size
    chunker.feed(data[start:])
    chunker.finish()
    return chunks


def cut_marking_the_last(data: bytes, pieces: list[int]) -> list[bytes]:
    """Cut `data` fed in pieces of the given sizes then the rest, the rest marked as the
    file's last piece (no `finish`)."""
    chunks: list[bytes] = []
    chunker = FileChunker(ChunkerParameters(), lambda chunk: chunks.append(bytes(chunk)))
    start = 0
    for size in pieces:
        chunker.feed(data[start : start + size])
        start += size
    chunker.feed(data[start:], last=True)
    return chunks


def test_chunk_boundaries_match_the_golden_vectors():
    chunks = cut(GOLDEN_INPUT)
    assert [len(chunk) for chunk in chunks] == GOLDEN_LENGTHS
    assert b"".join(chunks) == GOLDEN_INPUT


def test_the_chunker_seed_is_part_of_the_boundaries():
    assert [len(chunk) for chunk in cut(GOLDEN_INPUT, seed=1)][:3] == [52150, 27236, 71740]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700_000), max_size=12))
def test_a_file_fed_in_any_pieces_is_cut_as_if_whole(pieces):
    assert cut(GOLDEN_INPUT, pieces) == cut(GOLDEN_INPUT)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=1_500_000), max_size=6))
def test_a_file_whose_last_piece_is_marked_is_cut_as_if_whole(pieces):
    """A piece cut where it lies (nothing pending, the last or a large one) gives the chunks
    the file cut whole gives."""
    assert cut_marking_the_last(GOLDEN_INPUT, pieces) == cut(GOLDEN_INPUT)
    assert cut_marking_the_last(GOLDEN_INPUT[:5000], []) == [GOLDEN_INPUT[:5000]]


def test_files_up_to_the_minimum_are_one_chunk_and_empty_files_none():
    minimum = ChunkerParameters().min_size
    assert cut(b"") == []
    assert cut(b"x") == [b"x"]
    assert cut(GOLDEN_INPUT[:minimum]) == [GOLDEN_INPUT[:minimum]]
    assert len(cut(GOLDEN_INPUT[: 4 * minimum])) >= 1
    assert all(len(chunk) <= ChunkerParameters().max_size for chunk in cut(bytes(3 << 20)))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([ChunkerParameters(), ChunkerParameters(256, 1024, 4096, 2, 7)]),
    st.integers(min_value=-40, max_value=40),
    st.integers(min_value=0, max_value=4),
)
def test_a_file_the_chunker_takes_whole_is_cut_as_fastcdc_cuts_it(parameters, near, pieces):
    """A file of at most min_size bytes is taken as one chunk without FastCDC's call: the
    chunks are FastCDC's own, at, below and above the minimum, whole or in pieces."""
    data = GOLDEN_INPUT[: max(0, parameters.min_size + near)]
    fastcdc = pyfastcdc.FastCDC(
        parameters.avg_size,
        min_size=parameters.min_size,
        max_size=parameters.max_size,
        normalized_chunking=parameters.normalization,
        seed=parameters.seed,
    )
    expected = [bytes(chunk.data) for chunk in fastcdc.cut_buf(bytearray(data))]
    sizes = [len(data) // (pieces + 1)] * pieces
    chunks: list[bytes] = []
    chunker = FileChunker(parameters, lambda chunk: chunks.append(bytes(chunk)))
    start = 0
    for size in sizes:
        chunker.feed(data[start : start + size])
        start += size
    chunker.feed(data[start:], last=True)
    assert chunks == expected


def test_a_change_inside_a_file_leaves_the_other_chunks_alike():
    changed = bytearray(GOLDEN_INPUT)
    changed[2_000_000:2_000_010] = b"0123456789"
    before, after = set(cut(GOLDEN_INPUT)), cut(bytes(changed))
    assert sum(chunk not in before for chunk in after) <= 2


def test_only_the_compiled_chunker_is_accepted():
    fallback = (
        "import warnings; warnings.simplefilter('ignore'); import pyfastcdc, pyfastcdc.py; "
        "pyfastcdc.FastCDC = pyfastcdc.py.FastCDC; import daemon.archive.chunking"
    )
    result = subprocess.run([sys.executable, "-c", fallback], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError: pyfastcdc's compiled extension is missing" in result.stderr


def test_chunk_ids_are_keyed_blake3():
    # BLAKE3's published test vectors (keyed_hash, input lengths 0 and 1024)
    config = ChunkConfig(b"whats the Elvish word for friend")
    assert config.chunk_id(b"") == (
        "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
    )
    assert config.chunk_id(bytes(i % 251 for i in range(1024))) == (
        "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4"
    )
    assert ChunkConfig.new().chunk_id(b"x") != ChunkConfig.new().chunk_id(b"x")
