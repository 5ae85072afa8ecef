"""The 2-D map of `imgsim explore`: UMAP (neighbour-preserving) or PCA, and how far to trust it.

PCA keeps the two directions of largest variance; on image features they hold ~20% of it, and above a
few hundred files the map is a cloud in which neighbours are not near (issue 15). UMAP (McInnes, Healy &
Melville 2018) places each file near its nearest neighbours in feature space instead. How well a layout
keeps neighbours is measured by trustworthiness (Venna & Kaski 2001; sklearn.manifold.trustworthiness):
1 when every file's nearest neighbours on the map are among its nearest in feature space.
"""
from __future__ import annotations

import warnings

import numpy as np

from imgsim_fast.jobs.explore_clusters import pca

__all__ = ["layout_2d", "trustworthiness", "MAP_METHODS", "UMAP_MIN_POINTS", "TRUST_SAMPLE", "TRUST_K"]

MAP_METHODS = ("umap", "pca")
# Below this many files UMAP's neighbour graph (15 neighbours) is most of the collection and its
# spectral start is ill-posed; PCA shows so few points plainly.
UMAP_MIN_POINTS = 16
# Trustworthiness needs all pairwise distances: measured on a seeded sample of at most this many files
# (2,000^2 distances, ~0.5 s).
TRUST_SAMPLE = 2000
# Neighbours the trustworthiness counts: the 5 nearest, the near copies and closest relatives of a
# picture, which is what a person looks for around a point.
TRUST_K = 5


def layout_2d(x: np.ndarray, method: str = "umap", *, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates and the method's description. method "umap" falls back to PCA below
    UMAP_MIN_POINTS files (and says so). UMAP is seeded, which makes it run on one thread: the same
    catalog gives the same map."""
    if method not in MAP_METHODS:
        raise ValueError(f"map method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    if method == "pca" or n < UMAP_MIN_POINTS:
        xy, ev = pca(x, 2)
        why = "" if method == "pca" else f" (fewer than {UMAP_MIN_POINTS} files for UMAP)"
        return xy, f"PCA: the two axes hold {ev[0]:.0%} and {ev[1]:.0%} of the variance{why}"
    with warnings.catch_warnings():
        # umap's package import warns that TensorFlow (for ParametricUMAP, not used here) is missing, and
        # a random_state forces one thread, of which it warns too: that is the point of seeding it.
        warnings.filterwarnings("ignore", category=ImportWarning)
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*", category=UserWarning)
        # Groups of near-copies far from everything make a neighbour graph of several components; umap
        # lays them out one by one (multi_component_layout), after scikit-learn's warning about it.
        warnings.filterwarnings("ignore", message="Graph is not fully connected", category=UserWarning)
        import umap

        model = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, n_components=2, n_epochs=200, random_state=seed)
        xy = model.fit_transform(x)
    return np.asarray(xy, np.float64), f"UMAP ({min(15, n - 1)} nearest neighbours, min_dist 0.1, 200 epochs, seed {seed})"


def trustworthiness(x: np.ndarray, xy: np.ndarray, *, seed: int = 0, k: int = TRUST_K,
                    sample: int = TRUST_SAMPLE) -> float | None:
    """Trustworthiness of the map at k neighbours, on a seeded sample of at most `sample` files; None
    when there are too few files to measure (k must be below n / 2)."""
    from sklearn.manifold import trustworthiness as _trust

    n = x.shape[0]
    if n > sample:
        idx = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        x, xy = x[idx], xy[idx]
        n = sample
    k = min(k, (n - 1) // 2)
    if k < 1:
        return None
    return float(_trust(np.asarray(x, np.float64), np.asarray(xy, np.float64), n_neighbors=k))
