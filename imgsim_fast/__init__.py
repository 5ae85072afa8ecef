"""imgsim_fast: find duplicate, near-duplicate and similar images.

Perceptual hashes compared by SIMD Hamming scans, deep embeddings in an HNSW index, and metadata filters.
The one face of the library (README, "Python"):

    import imgsim_fast as ims
    result = ims.find_duplicates(["photos/"])          # dedup: groups, the file to keep, the rule
    ims.index(["photos/"], catalog="photos.sqlite")    # the catalog: the feature store every job reads
    with ims.Catalog("photos.sqlite") as cat:
        hits = ims.search(cat, "query.jpg", k=5)       # similar images (hashes, embeddings, text)
        ims.explore(cat)                               # clusters, outliers, a map

Names are imported on first use (PEP 562), so `import imgsim_fast` costs no NumPy, numba or torch import
until a job needs it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (the modules are the stages: io, features, index, catalog, jobs)
_WHERE = {
    # jobs
    "find_duplicates": "imgsim_fast.jobs.dedup",
    "DedupResult": "imgsim_fast.jobs.dedup",
    "Thresholds": "imgsim_fast.jobs.dedup.detect",
    "index": "imgsim_fast.catalog.indexer",
    "search": "imgsim_fast.jobs.search",
    "explore": "imgsim_fast.jobs.explore",
    # stores and indexes
    "Catalog": "imgsim_fast.catalog.store",
    "HammingIndex": "imgsim_fast.indexes.mih",
    "VectorIndex": "imgsim_fast.indexes.vectors",
    # hashes
    "hash_paths": "imgsim_fast.features.hash_files",
    "hash_images": "imgsim_fast.features.hashing",
    "phash_from_pixels": "imgsim_fast.features.hashing",
    "ahash_from_pixels": "imgsim_fast.features.hashing",
    "dhash_from_pixels": "imgsim_fast.features.hashing",
    "whash_from_pixels": "imgsim_fast.features.hashing",
    "colorhash_from_pixels": "imgsim_fast.features.hashing",
    "hamming_distance": "imgsim_fast.indexes.hamming",
    # filter expressions of the catalog
    "Tag": "imgsim_fast.catalog.query",
    "AllTags": "imgsim_fast.catalog.query",
    "AnyTag": "imgsim_fast.catalog.query",
    "Text": "imgsim_fast.catalog.query",
    "Field": "imgsim_fast.catalog.query",
    "Range": "imgsim_fast.catalog.query",
    "And": "imgsim_fast.catalog.query",
    "Or": "imgsim_fast.catalog.query",
    "Not": "imgsim_fast.catalog.query",
    # images
    "load_image": "imgsim_fast.io.loading",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'imgsim_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
