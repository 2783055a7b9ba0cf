"""The items the model was trained on, by item_idx (0 = padding): ids, titles, and filter masks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from movierec.index.base import Filters, ItemAttributes


class MovieCatalog:
    """movie_id ↔ item_idx both ways, display fields, and `allowed(filters)` over item_idx."""

    def __init__(self, items: pa.Table) -> None:
        items = items.sort_by("item_idx")
        self.filters = ItemAttributes(items)  # checks item_idx is 1..N
        self.size = len(items)
        self.movie_ids = np.concatenate([[0], items.column("movie_id").to_numpy()]).astype(np.int64)
        self._index = {int(m): i + 1 for i, m in enumerate(self.movie_ids[1:])}
        self.titles: list[str | None] = [None, *items.column("title").to_pylist()]
        years = self.filters.year
        self.years = [None, *(None if np.isnan(y) else int(y) for y in years)]
        self.genres: list[list[str]] = [[], *(g or [] for g in self.filters.table.column("genres").to_pylist())]

    def item_idx(self, movie_id: int) -> int | None:
        return self._index.get(int(movie_id))

    def to_item_idx(self, movie_ids: list[int]) -> np.ndarray:
        """item_idx of the movies the model knows, in order; unknown movies are skipped."""
        found = (self._index.get(int(m)) for m in movie_ids)
        return np.array([i for i in found if i is not None], dtype=np.int64)

    def allowed(self, filters: Filters | None) -> np.ndarray:
        """Boolean mask over item_idx 0..N; padding is never allowed."""
        rows = self.filters.allowed(filters)
        mask = np.ones(self.size + 1, dtype=bool) if rows is None else np.concatenate([[False], rows])
        mask[0] = False
        return mask

    def describe(self, item: int) -> dict:
        return {"movie_id": int(self.movie_ids[item]), "title": self.titles[item], "year": self.years[item],
                "genres": self.genres[item]}
