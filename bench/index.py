"""Item-index benchmark: FAISS flat / IVF / HNSW and Qdrant Edge on an ML-32M-sized catalogue.

    python bench/index.py                      # 87,585 items x 128, the default (about 2 minutes on 2 cores)
    python bench/index.py --items 20000 --dim 64 --queries 100

The catalogue is synthetic (movierec.index.synth: clustered embeddings, MovieLens-like metadata);
queries are item vectors plus noise, like a user vector close to what the user watched. Each index
is asked for the top 10, one query at a time (batch of 1), without a filter and with a genre + year
filter (FAISS both ways: an IDSelector inside the search, and over-fetch + post-filter). Recall@10
is against numpy brute force over the same candidates. Prints a Markdown table; the header gives
the load average, since another process on the machine slows every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_catalog
from ingest import ML32M, header  # noqa: E402

K = 10


def measure(index, queries: np.ndarray, filters, exact: list[np.ndarray]) -> dict[str, float]:  # noqa: ANN001
    """Single-query latencies (after two warm-up calls) and recall@10 against `exact`."""
    for q in queries[:2]:
        index.search(q[None], K, filters)
    seconds, found = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(q[None], K, filters)[0]
        seconds.append(time.perf_counter() - start)
        found.append(hits.items)
    ms = np.array(seconds) * 1000
    recall = np.mean([len(np.intersect1d(f, e)) / max(1, len(e)) for f, e in zip(found, exact, strict=True)])
    return {"p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99), "qps": 1000 / ms.mean(), "recall": recall}


def exact_top(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None) -> list[np.ndarray]:
    scores = queries @ vectors.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return [row[np.isfinite(scores[u, row])] + 1 for u, row in enumerate(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=ML32M["movies"])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200, help="Timed single queries per row.")
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (1 suits single queries).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    from movierec.index import FaissIndex, FaissParams, Filters, ItemAttributes, build_faiss_index
    from movierec.index.qdrant_index import QdrantEdgeIndex
    from synthetic_catalog import synthetic_items, synthetic_vectors

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    vectors = synthetic_vectors(rng, args.items, args.dim)
    catalog = ItemAttributes(synthetic_items(rng, args.items))
    picked = vectors[rng.integers(0, args.items, args.queries)]
    queries = picked + rng.standard_normal(picked.shape).astype(np.float32) * picked.std()
    filters = Filters(genres=["Drama"], year_min=1990, year_max=2009)
    allowed = catalog.allowed(filters)
    exact = {False: exact_top(vectors, queries, None), True: exact_top(vectors, queries, allowed)}

    rows = []

    def run(name: str, build: float, searchers: dict[str, object]) -> None:
        """One row per way of searching: "none" unfiltered, any other label with the filter."""
        for label, searcher in searchers.items():
            filtered = label != "none"
            m = measure(searcher, queries, filters if filtered else None, exact[filtered])
            rows.append((name, label, f"{build:.2f}", f"{m['p50']:.2f}", f"{m['p99']:.2f}", f"{m['qps']:,.0f}",
                         f"{m['recall']:.3f}"))  # fmt: skip
            print(f"  {name:12s} {label:14s} p50 {m['p50']:.2f} ms  recall {m['recall']:.3f}", file=sys.stderr)

    for method in ("flat", "ivf", "hnsw"):
        start = time.perf_counter()
        selector = build_faiss_index(vectors, catalog, method)
        build = time.perf_counter() - start
        if method == "ivf":
            ivf_lists = selector.index.nlist
        post = FaissIndex(selector.index, catalog, method, FaissParams(filter_mode="postfilter"), selector.version)
        run(f"faiss {method}", build, {"none": selector, "selector": selector, "post-filter": post})
    start = time.perf_counter()
    edge = QdrantEdgeIndex.build(vectors, catalog)
    build = time.perf_counter() - start
    run("qdrant edge", build, {"none": edge, "Qdrant filter": edge})
    edge.close()

    params = FaissParams()
    print(header())
    print(
        f"# {args.items:,} items x {args.dim}, top {K}, {args.queries} single queries per row; faiss "
        f"{faiss.__version__} ({args.threads} OpenMP thread), qdrant-edge-py {version('qdrant-edge-py')}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# ivf: {ivf_lists} lists, nprobe {params.ivf_probe}; hnsw: M {params.hnsw_m}, "
        f"efConstruction {params.hnsw_ef_construction}, efSearch {params.hnsw_ef_search}; qdrant edge: exact scan; "
        f"filter genre Drama, year 1990-2009 keeps {allowed.sum():,} items ({allowed.mean():.1%})"
    )
    print()
    print("| index | filter | build s | p50 ms | p99 ms | queries/s (batch 1) | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
