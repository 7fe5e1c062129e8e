"""Which chunks garbage collection finds a recipe naming (daemon.repository.chunkgarbage):
every one, of every recipe version, and a damaged recipe stops it."""

from __future__ import annotations

import io
import re

import pytest

from daemon.archive.recipe import RecipeBuilder, RecipeError
from daemon.repository.chunkgarbage import _chunk_ids
from tests.unit.test_recipe_pieces import CONFIG, Store, small_files_tar


class Pieces:
    """A version 3 recipe's pieces by id, and the ids read since `read_ids` was cleared."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.read_ids: list[str] = []

    def __call__(self, chunk_id: str) -> bytes:
        self.read_ids.append(chunk_id)
        return self._store.chunks[chunk_id]


def written(store: Store, tar: bytes, version: int) -> bytes:
    if version > 1:
        return store.write(tar, version)
    recipe = io.BytesIO()
    builder = RecipeBuilder(CONFIG.chunker, store.chunk, recipe)
    builder.feed(tar)
    builder.finish()
    return recipe.getvalue()


def found(store: Store, recipe: bytes) -> list[str]:
    text = io.BufferedReader(io.BytesIO(recipe))
    return list(_chunk_ids(text, Pieces(store)))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_chunk_and_piece_a_recipe_names_is_found(version: int) -> None:
    store = Store()
    recipe = written(store, small_files_tar(1_500), version)
    assert (version == 3) == bool(store.pieces)
    assert set(found(store, recipe)) == set(store.chunks)


@pytest.mark.parametrize(
    "damage",
    [
        (rb"\nC [0-9a-f]{64} ", b"\nC zz "),  # a chunk line
        (rb"\nR ([A-Za-z0-9+/]{4})", rb"\nR *\1"),  # raw bytes that are not base64
        (rb"\nM ", b"\nQ "),  # a line of no kind
        (rb"\nT [0-9]+ -\n$", b"\n"),  # no end line
    ],
)
def test_a_damaged_recipe_of_version_2_stops_the_collection(damage: tuple[bytes, bytes]) -> None:
    store = Store()
    recipe = written(store, small_files_tar(300), 2)
    damaged = re.sub(damage[0], damage[1], recipe, count=1)
    assert damaged != recipe
    with pytest.raises(RecipeError):
        found(store, damaged)


def test_a_recipe_of_a_version_it_does_not_know_stops_the_collection_saying_so() -> None:
    store = Store()
    recipe = written(store, small_files_tar(10), 2).replace(
        b"volkeep-recipe 2", b"volkeep-recipe 4", 1
    )
    with pytest.raises(RecipeError, match="version 1, 2 or 3"):
        found(store, recipe)
