"""What every item index shares: filters, the item catalogue they are checked against, the result type.

An index holds the model's output item embeddings (rows 1..N of `output_embeddings`; row 0 is
padding and is never stored, so it is never returned) and answers, per user vector, the k items
with the largest inner product, best first. Filters restrict the candidates by item metadata;
`exclude[u]` removes more items for user u (e.g. the movies already rated) without shrinking the
result below k while enough items remain.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from movierec.errors import MovierecError

if TYPE_CHECKING:
    from movierec.model.gsasrec import GSASRec


class IndexFileError(MovierecError, ValueError):
    """An index folder or one of its files is missing, incomplete or corrupt (the message names the file)."""


@dataclass(frozen=True)
class Filters:
    """Candidate restrictions; a None/empty field does not restrict.

    genres: any-of (an item matches if it has at least one); year_min/year_max: inclusive bounds;
    min_rating: the item's mean rating must be at least this. An item with an unknown year or mean
    rating never matches a bound on it.
    """

    genres: Sequence[str] = ()
    year_min: int | None = None
    year_max: int | None = None
    min_rating: float | None = None

    def is_empty(self) -> bool:
        return not self.genres and self.year_min is None and self.year_max is None and self.min_rating is None


class Hits(NamedTuple):
    """One user's result: item_idx and inner-product scores, best first (at most k)."""

    items: np.ndarray  # int64
    scores: np.ndarray  # float32


class ItemAttributes:
    """Item metadata in index row order (row r holds item_idx r + 1), checked by `allowed()`.

    Built from an item_map table; a metadata column it lacks (older artifacts) counts as unknown
    for every item, so a filter on it matches nothing.
    """

    METADATA = {"genres": pa.list_(pa.string()), "year": pa.int32(), "rating_mean": pa.float64()}

    def __init__(self, table: pa.Table) -> None:
        if "item_idx" not in table.column_names:
            raise ValueError("item table has no item_idx column")
        item_idx = table.column("item_idx").to_numpy()
        if not np.array_equal(item_idx, np.arange(1, len(item_idx) + 1)):
            raise ValueError("item table: item_idx must be 1..N in order")
        for name, kind in self.METADATA.items():
            if name not in table.column_names:
                empty: list[list[str]] | None = [[]] * len(table) if name == "genres" else None
                table = table.append_column(name, pa.array(empty, kind) if empty else pa.nulls(len(table), kind))
        self.table = table
        self.year = table.column("year").cast(pa.float64()).fill_null(np.nan).to_numpy()
        self.rating_mean = table.column("rating_mean").cast(pa.float64()).fill_null(np.nan).to_numpy()
        genres = table.column("genres").combine_chunks()
        rows = pc.list_parent_indices(genres).to_numpy()
        names = pc.list_flatten(genres).to_numpy(zero_copy_only=False)
        self._genre_masks: dict[str, np.ndarray] = {}
        for name in np.unique(names):
            mask = np.zeros(len(table), dtype=bool)
            mask[rows[names == name]] = True
            self._genre_masks[str(name)] = mask

    def __len__(self) -> int:
        return len(self.table)

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean mask over rows of the items that pass `filters`; None when nothing is filtered."""
        if filters is None or filters.is_empty():
            return None
        mask = np.ones(len(self), dtype=bool)
        if filters.genres:
            any_genre = np.zeros(len(self), dtype=bool)
            for name in filters.genres:
                if name in self._genre_masks:
                    any_genre |= self._genre_masks[name]
            mask &= any_genre
        with np.errstate(invalid="ignore"):
            if filters.year_min is not None:
                mask &= self.year >= filters.year_min
            if filters.year_max is not None:
                mask &= self.year <= filters.year_max
            if filters.min_rating is not None:
                mask &= self.rating_mean >= filters.min_rating
        return mask

    def payloads(self) -> list[dict[str, object]]:
        """Per item: the filterable fields as a Qdrant payload (unknown year or rating left out)."""
        out = []
        for genres, year, rating in zip(
            self.table.column("genres").to_pylist(), self.year.tolist(), self.rating_mean.tolist(), strict=True
        ):
            payload: dict[str, object] = {"genres": genres or []}
            if not math.isnan(year):
                payload["year"] = int(year)
            if not math.isnan(rating):
                payload["rating_mean"] = rating
            out.append(payload)
        return out


def content_version(vectors: np.ndarray) -> str:
    """A short id of an embedding matrix: the same vectors always get the same version."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()[:12]


def item_vectors(model: GSASRec) -> np.ndarray:
    """The model's output item embeddings without the padding row: float32 [num_items, dim], row r = item r + 1."""
    return np.ascontiguousarray(model.output_embeddings.detach()[1:].cpu().float().numpy())


def check_items(vectors: np.ndarray, catalog: ItemAttributes) -> np.ndarray:
    """Item vectors as a C-contiguous float32 [N, dim] matrix with one row per catalogue item."""
    items = np.ascontiguousarray(vectors, dtype=np.float32)
    if items.ndim != 2 or len(items) != len(catalog):
        raise ValueError(f"item vectors: expected shape [{len(catalog)}, dim], got {list(items.shape)}")
    return items


def check_queries(vectors: np.ndarray, dim: int) -> np.ndarray:
    """User vectors as a C-contiguous float32 [U, dim] matrix (a single vector becomes one row)."""
    queries = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"query vectors: expected shape [U, {dim}], got {list(np.shape(vectors))}")
    return queries


def exclusion_rows(exclude: list[np.ndarray] | None, users: int, size: int) -> list[np.ndarray]:
    """Per user, the distinct index rows (item_idx - 1) to drop; ids outside 1..size are ignored."""
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * users
    if len(exclude) != users:
        raise ValueError(f"exclude: expected one array per user ({users}), got {len(exclude)}")
    rows = []
    for items in exclude:
        items = np.unique(np.asarray(items, dtype=np.int64))
        rows.append(items[(items >= 1) & (items <= size)] - 1)
    return rows


class ItemIndex(Protocol):
    """Top-k maximum inner product search over the item embeddings; every backend has this shape."""

    kind: str  # e.g. "faiss-flat", "qdrant-edge"
    version: str  # id of what is indexed (a build's folder name, or the vectors' content hash)
    dim: int

    @property
    def size(self) -> int:
        """Number of items indexed."""
        ...

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exclude: list[np.ndarray] | None = None,
    ) -> list[Hits]:
        """Per user vector ([U, dim] float32), the best k items passing `filters` and not in `exclude[u]`."""
        ...
