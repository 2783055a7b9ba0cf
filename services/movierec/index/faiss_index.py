"""FAISS inner-product indexes over the item embeddings: exact (flat, the default), IVF and HNSW.

Index label r is item_idx r + 1. Filters become an allow-list over labels, applied either inside
FAISS (`filter_mode="selector"`, the default: an `IDSelectorBitmap`, so only allowed items are
scored) or after it (`"postfilter"`: search more than k, drop what fails, search wider until every
user has enough). Both return exact results on a flat index; bench/index.py measures the selector
several times faster. Approximate indexes widen a filtered search (see `_Search`) so that a narrow
filter does not starve them. Exclusions are applied after the search, which fetches k + (the
largest number of allowed excluded items of any user in the batch), so an exact index still
returns k items when k remain; up to SELECTOR_QUERIES queries on a flat index are searched one at a
time with the filter and that user's exclusions in one IDSelectorBitmap instead (faster, no over-fetch).

FAISS parallelises one search over its OpenMP threads; on a busy machine serving single queries,
`faiss.omp_set_num_threads(1)` is much faster (the threads spin waiting for each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from movierec.index.base import (
    Filters,
    Hits,
    ItemAttributes,
    ItemIndex,
    check_items,
    check_queries,
    content_version,
    exclusion_rows,
)

Method = Literal["flat", "ivf", "hnsw"]
# up to this many queries, a flat index is searched one query at a time through an IDSelector
# that masks the filter and the exclusions: FAISS 1.15 scans with its SIMD kernel then (2 ms for
# 87,585 x 128 here), while its plain flat search costs ~11 ms for any batch of fewer than 20
SELECTOR_QUERIES = 4
METHODS: tuple[Method, ...] = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class FaissParams:
    """Build and search settings; ivf_* and hnsw_* apply to that method only."""

    ivf_lists: int | None = None  # None: about sqrt(N) lists
    ivf_probe: int = 32  # lists scanned per query (more when a filter is narrow)
    hnsw_m: int = 32  # graph degree
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 128  # candidates kept; at least the number of results asked for
    hnsw_exact_below: float = 0.2  # filters keeping a smaller fraction of items are searched exactly
    filter_mode: Literal["selector", "postfilter"] = "selector"

    def __post_init__(self) -> None:
        if self.filter_mode not in ("selector", "postfilter"):
            raise ValueError(f"filter_mode: expected selector or postfilter, got {self.filter_mode!r}")


class FaissIndex(ItemIndex):
    """A FAISS index with its catalogue; `search` is safe to call from several threads."""

    def __init__(
        self, index: faiss.Index, catalog: ItemAttributes, method: Method, params: FaissParams, version: str
    ) -> None:
        if index.ntotal != len(catalog):
            raise ValueError(f"index holds {index.ntotal} vectors but the catalogue {len(catalog)} items")
        self.index, self.catalog, self.method, self.params, self.version = index, catalog, method, params, version
        self.kind = f"faiss-{method}"
        self.dim = index.d

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exclude: list[np.ndarray] | None = None,
    ) -> list[Hits]:
        queries = check_queries(vectors, self.dim)
        drops = exclusion_rows(exclude, len(queries), self.size)
        allowed = self.catalog.allowed(filters)
        available = self.size if allowed is None else int(allowed.sum())
        extra = max((len(d) if allowed is None else int(allowed[d].sum()) for d in drops), default=0)
        fetch = min(k + extra, available)
        if k <= 0 or fetch == 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in range(len(queries))]
        if self.method == "flat" and len(queries) <= SELECTOR_QUERIES and (
                allowed is None or self.params.filter_mode == "selector"):
            return [self._search_one(queries[u:u + 1], k, allowed, drops[u]) for u in range(len(queries))]
        search = _Search(self, available / self.size)
        if allowed is None:
            scores, labels = search(queries, fetch)
        elif self.params.filter_mode == "selector":
            bitmap = np.packbits(allowed, bitorder="little")  # must outlive the search
            scores, labels = search(queries, fetch, faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap)))
        else:
            scores, labels = _search_postfiltered(search, queries, fetch, allowed)
        return [_hits(labels[u], scores[u], drops[u], k) for u in range(len(queries))]

    def _search_one(self, query: np.ndarray, k: int, allowed: np.ndarray | None, drop: np.ndarray) -> Hits:
        """One query on a flat index, everything it may not return masked out by an IDSelectorBitmap."""
        keep = np.ones(self.size, dtype=bool) if allowed is None else allowed.copy()
        keep[drop] = False
        bitmap = np.packbits(keep, bitorder="little")  # must outlive the search
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap))
        scores, labels = self.index.search(query, min(k, int(keep.sum())) or 1, params=params)
        return _hits(labels[0], scores[0], np.empty(0, np.int64), k)

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))


class _Search:
    """One search of a FAISS index whose filter keeps `fraction` of the items, with matching parameters.

    A filter shrinks what an approximate index finds among the candidates it visits, so IVF probes
    1/fraction times more lists and HNSW keeps 1/fraction times more candidates (about as many
    allowed ones as an unfiltered search), and when fewer than `hnsw_exact_below` of the items
    pass, HNSW scans its stored vectors exactly instead (faster than a huge candidate list).
    """

    def __init__(self, owner: FaissIndex, fraction: float) -> None:
        self.index, self.method, self.params = owner.index, owner.method, owner.params
        self.fraction = fraction
        if self.method == "hnsw" and fraction < self.params.hnsw_exact_below:
            self.index, self.method = faiss.downcast_index(owner.index.storage), "flat"

    def __call__(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.method == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = min(self.index.nlist, int(np.ceil(self.params.ivf_probe / self.fraction)))
        elif self.method == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(np.ceil(self.params.hnsw_ef_search / self.fraction)), k)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return self.index.search(queries, k, params=params)


def _search_postfiltered(
    search: _Search, queries: np.ndarray, fetch: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Search 2x the expected over-fetch, then 4x wider until every row keeps `fetch` allowed items."""
    size = len(allowed)
    want = min(size, max(fetch, int(np.ceil(2 * fetch / search.fraction))))
    while True:
        scores, labels = search(queries, want)
        keep = (labels >= 0) & allowed[np.maximum(labels, 0)]
        if keep.sum(axis=1).min() >= fetch or want == size:
            break
        want = min(size, 4 * want)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :fetch]  # allowed first, in score order
    labels = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(labels, order, 1), -1)
    return np.take_along_axis(scores, order, 1), labels


def _hits(labels: np.ndarray, scores: np.ndarray, drop: np.ndarray, k: int) -> Hits:
    keep = labels >= 0
    if len(drop):
        keep &= ~np.isin(labels, drop)
    return Hits(labels[keep][:k].astype(np.int64) + 1, scores[keep][:k].astype(np.float32))


def build_faiss_index(
    vectors: np.ndarray,
    catalog: ItemAttributes,
    method: Method = "flat",
    params: FaissParams | None = None,
    version: str | None = None,
) -> FaissIndex:
    """Index item vectors (float32 [N, dim], row r = item_idx r + 1) with `method`."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    params = params or FaissParams()
    vectors = check_items(vectors, catalog)
    n, dim = vectors.shape
    if method == "flat":
        index = faiss.IndexFlatIP(dim)
    elif method == "ivf":
        lists = params.ivf_lists or max(1, min(round(n**0.5), n // 39))  # FAISS wants >= 39 points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    else:
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.hnsw_ef_construction
    index.add(vectors)
    return FaissIndex(index, catalog, method, params, version or content_version(vectors))


def read_faiss_index(path: Path, catalog: ItemAttributes, method: Method, params: FaissParams, version: str) -> FaissIndex:
    return FaissIndex(faiss.read_index(str(path)), catalog, method, params, version)
