"""A seeded synthetic catalogue for index tests and benchmarks: item embeddings plus item metadata.

Embeddings are clustered (items scattered around a thousand centres, like the taste groups a
trained model learns), so approximate indexes behave as on real embeddings rather than on
structureless Gaussian noise, where every ANN method's recall collapses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from movierec.data.synth import GENRES


def synthetic_vectors(rng: np.random.Generator, items: int, dim: int, clusters: int = 1024) -> np.ndarray:
    """float32 [items, dim]: a random centre per item plus noise, with varying norms."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    which = rng.integers(0, clusters, items)
    vectors = centres[which] + rng.standard_normal((items, dim)).astype(np.float32)
    return vectors * rng.uniform(0.5, 1.5, (items, 1)).astype(np.float32) / np.sqrt(dim)


def synthetic_items(rng: np.random.Generator, items: int) -> pa.Table:
    """An item_map-shaped table (item_idx 1..N): 1-3 genres, a year (2 % unknown), a mean rating (2 % unknown)."""
    counts = rng.integers(1, 4, items)
    genres = [list(rng.choice(GENRES, size=c, replace=False)) for c in counts]
    year = pa.array(rng.integers(1920, 2024, items), mask=rng.random(items) < 0.02, type=pa.int32())
    rating = rng.uniform(0.5, 5.0, items)
    rating[rng.random(items) < 0.02] = np.nan
    return pa.table({
        "item_idx": pa.array(np.arange(1, items + 1), pa.int64()),
        "movie_id": pa.array(np.arange(1, items + 1), pa.int64()),
        "title": [f"Synthetic Movie {i}" for i in range(1, items + 1)],
        "year": year,
        "genres": pa.array(genres, pa.list_(pa.string())),
        "rating_count": pa.array(rng.integers(1, 1000, items), pa.int64()),
        "rating_mean": pa.array(rating, pa.float64()),
    })  # fmt: skip
