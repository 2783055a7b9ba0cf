"""Top-k item retrieval over a model's output item embeddings: FAISS (versioned on disk) and Qdrant.

    from movierec.index import Filters, IndexHolder
    holder = IndexHolder("artifacts/index")          # loads DIR/CURRENT, checksums verified
    hits = holder.search(user_vectors, k=10, filters=Filters(genres=["Drama"], year_min=1990),
                         exclude=[rated_item_idx])    # per user: Hits(items, scores), best first
    holder.reload_if_changed()                        # after `movierec index build` made a new version
"""

from movierec.index.base import Filters, Hits, IndexFileError, ItemAttributes, ItemIndex, content_version, item_vectors
from movierec.index.faiss_index import METHODS, FaissIndex, FaissParams, build_faiss_index
from movierec.index.versions import (
    IndexHolder,
    build_from_model,
    current_version,
    load_index,
    set_current,
    write_version,
)

__all__ = [
    "METHODS",
    "ItemAttributes",
    "FaissIndex",
    "FaissParams",
    "Filters",
    "Hits",
    "IndexFileError",
    "IndexHolder",
    "ItemIndex",
    "build_faiss_index",
    "build_from_model",
    "content_version",
    "current_version",
    "item_vectors",
    "load_index",
    "set_current",
    "write_version",
]
