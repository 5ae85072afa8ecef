"""Clusters for `imgsim explore`: density clusters (HDBSCAN) kept only when they persist, and k-means
when the user gives k. explore.py calls `density_clusters` or `kmeans`.

Why not k-means with k chosen by silhouette (what explore did before issue 15): k-means partitions
every file into k groups whether or not the data has groups, and the silhouette's maximum over k =
2..20 always names some k; on collections with no structure it said k ~ 19 (mean silhouettes
0.04-0.35). A density method can answer "none": points in no dense region are noise.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["DensityClusters", "density_clusters", "persistence", "mutual_reachability_mst", "core_distances",
           "kmeans", "pca", "MIN_CLUSTER_SIZE", "PERSISTENCE_MIN", "REDUCED_DIMS"]

# The smallest group called a cluster: a theme, a shoot, a scene with its edits; smaller groups are
# pairs of near-duplicates, which `imgsim dedup` reports. It is also HDBSCAN's min_samples (its
# default), the neighbour count behind the density estimate.
MIN_CLUSTER_SIZE = 5
# A cluster is clear when it stays a group apart while the density level falls by this factor:
# eps_death / eps_birth >= 1.2 (see `persistence`). Measured (min_cluster_size 5): the clusters HDBSCAN
# returns on Gaussian or uniform data of 8 to 64 dimensions (n = 50..5,000) have ratios 1.00-1.01; the
# four scenes of tests/test_explore.py (six edited copies each) 1.44-2.23 on EfficientNet embeddings
# and 1.41-3.32 on pHash bits. On the 1,893-file accuracy corpus (bench/corpus.py) HDBSCAN proposes 90
# clusters and 43 pass. In 2 dimensions chance clusters of 1,000 uniform points reach 1.2-1.7, but
# explore never clusters in 2 dimensions (REDUCED_DIMS).
PERSISTENCE_MIN = 1.2
# Features wider than this are projected on their first principal axes before clustering and layout:
# the nearest-neighbour searches cost O(n^2 d), and PCA to a few dozen axes before a neighbour method
# is standard practice (van der Maaten & Hinton 2008, sec. 5; scikit-learn's TSNE documentation). 64
# keeps 64-bit hash codes exact.
REDUCED_DIMS = 64


# ---------------------------------------------------------------------------------------------------
# Geometry


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k), clipped at 0 (the expansion can go slightly negative)."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, list[float]]:
    """Projection on the first `dims` principal axes (SVD of the centred data, or eigenvectors of its
    d x d scatter when n > d), each axis's sign fixed so its largest loading is positive: the same data
    always gives the same projection. Returns (n, dims) and the variance fraction of each axis."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n == 0:
        return np.zeros((0, dims)), [0.0] * dims
    xc = x - x.mean(0)
    if n <= d:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        var = s ** 2
    else:
        w, v = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(w)[::-1]
        var, vt = np.maximum(w[order], 0), v[:, order].T
    axes = np.zeros((dims, d))
    m = min(dims, vt.shape[0])
    axes[:m] = vt[:m]
    for i in range(m):
        j = np.argmax(np.abs(axes[i]))
        if axes[i, j] < 0:
            axes[i] = -axes[i]
    tot = var.sum()
    explained = [float(var[i] / tot) if tot > 0 and i < len(var) else 0.0 for i in range(dims)]
    return xc @ axes.T, explained


# ---------------------------------------------------------------------------------------------------
# k-means (k given)


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance to the nearest centre chosen so far."""
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]), x.dtype)
    centres[0] = x[rng.integers(n)]
    d = _sqdist(x, centres[:1])[:, 0]
    for j in range(1, k):
        tot = d.sum()
        i = rng.integers(n) if tot <= 0 else rng.choice(n, p=d / tot)
        centres[j] = x[i]
        d = np.minimum(d, _sqdist(x, centres[j:j + 1])[:, 0])
    return centres


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding, best of n_init seeded runs: (labels, centres, inertia).

    NumPy rather than scipy.cluster.vq.kmeans2: kmeans2 has no restarts and warns on an empty cluster;
    here an emptied cluster is re-seeded with the point farthest from its centre, so k clusters come back
    whenever there are at least k distinct points.
    """
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[0]
    if not 1 <= k <= max(1, n):
        raise ValueError(f"k must be in 1..{n}, got {k}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        c = _kmeanspp(x, k, rng)
        labels = np.full(n, -1, np.int64)
        for _ in range(max_iter):
            d = _sqdist(x, c)
            new = d.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=k)
            for j in np.flatnonzero(counts == 0):  # re-seed an empty cluster with the worst-fitted point
                far = int(d[np.arange(n), labels].argmax())
                labels[far] = j
                d[far] = 0
                counts = np.bincount(labels, minlength=k)
            sums = np.zeros_like(c)
            np.add.at(sums, labels, x)
            c = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        inertia = float(_sqdist(x, c)[np.arange(n), labels].sum())
        if best is None or inertia < best[2] - 1e-9:
            best = (labels.copy(), c.copy(), inertia)
    return best


# ---------------------------------------------------------------------------------------------------
# Density clusters and their persistence


def core_distances(x: np.ndarray, min_samples: int) -> np.ndarray:
    """Distance of each point to its min_samples-th nearest point, itself counted first, as HDBSCAN
    defines it (Campello, Moulavi & Sander 2013; scikit-learn's min_samples). Exact, in row blocks."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    k = min(min_samples, n)
    out = np.empty(n)
    for s in range(0, n, 512):
        d = _sqdist(x[s:s + 512], x)
        out[s:s + 512] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return out


@numba.njit(cache=True, nogil=True)
def _prim_mr(x, core):  # pragma: no cover - compiled; tested through mutual_reachability_mst
    n, dim = x.shape
    in_tree = np.zeros(n, np.bool_)
    best = np.full(n, np.inf)
    parent = np.zeros(n, np.int64)
    src = np.empty(max(n - 1, 0), np.int64)
    dst = np.empty(max(n - 1, 0), np.int64)
    w = np.empty(max(n - 1, 0), np.float64)
    cur = 0
    in_tree[0] = True
    for e in range(n - 1):
        nxt = -1
        nb = np.inf
        for j in range(n):
            if in_tree[j]:
                continue
            d = 0.0
            for t in range(dim):
                diff = x[cur, t] - x[j, t]
                d += diff * diff
            m = max(np.sqrt(d), core[cur], core[j])
            if m < best[j]:
                best[j] = m
                parent[j] = cur
            if best[j] < nb:
                nb = best[j]
                nxt = j
        src[e], dst[e], w[e] = parent[nxt], nxt, nb
        in_tree[nxt] = True
        cur = nxt
    return src, dst, w


def mutual_reachability_mst(x: np.ndarray, core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning tree of the mutual reachability distances max(d(a, b), core(a), core(b)): the
    tree HDBSCAN's hierarchy is cut from. Prim's algorithm, O(n^2 d) time and O(n) memory (no n x n
    matrix): ~3 s for 10,000 points of 64 dimensions. Edges (src, dst, weight), lightest first."""
    src, dst, w = _prim_mr(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(core, np.float64))
    order = np.argsort(w, kind="stable")
    return src[order], dst[order], w[order]


def persistence(x: np.ndarray, labels: np.ndarray, min_samples: int = MIN_CLUSTER_SIZE) -> dict[int, tuple[float, float]]:
    """Per cluster label: (eps_birth, eps_death) in the single-linkage hierarchy of mutual
    reachability distances that HDBSCAN cuts (Campello, Moulavi & Sander 2013; McInnes & Healy 2017).

    eps_birth: the distance level at which all the cluster's members are first connected.
    eps_death: the level at which the component holding them first holds min_samples points that are not
    members: points of another cluster, or as many stragglers, so it is no longer a group apart (a few
    points joining it are what HDBSCAN's condensed tree calls points falling out, not a merge). inf if
    that never happens. The ratio eps_death / eps_birth is the factor by which the density level can fall
    while the cluster stays a group of its own: persistence on a log scale, like the lifetime of a
    component in a persistence diagram (Edelsbrunner, Letscher & Zomorodian 2002), and free of units,
    so one threshold serves cosine distances and Hamming bits alike. A cluster dead before it is whole
    gets birth inf (ratio 0). The bulk of structureless data, which HDBSCAN may return as one cluster,
    takes in outside points as soon as it forms: ratio ~1."""
    labels = np.asarray(labels)
    ks = [int(k) for k in np.unique(labels) if k >= 0]
    if not ks:
        return {}
    src, dst, w = mutual_reachability_mst(x, core_distances(x, min_samples))
    n = len(labels)
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    # Per component: member counts of the clusters in it that are still alive (dead ones are dropped,
    # so each merge touches only live clusters: O(n log n) dictionary updates in all).
    alive: list[dict | None] = [({int(labels[i]): 1} if labels[i] >= 0 else {}) for i in range(n)]
    need = {k: int((labels == k).sum()) for k in ks}
    birth: dict[int, float] = {k: 0.0 for k in ks if need[k] == 1}
    death: dict[int, float] = {}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, eps in zip(src.tolist(), dst.tolist(), w.tolist()):
        ra, rb = find(a), find(b)
        if len(alive[ra]) < len(alive[rb]):
            ra, rb = rb, ra
        merged = alive[ra]
        for k, c in alive[rb].items():  # the smaller dictionary into the larger
            merged[k] = merged.get(k, 0) + c
        parent[rb] = ra
        size[ra] += size[rb]
        alive[rb] = None
        for k in list(merged):
            if merged[k] == need[k]:
                birth.setdefault(k, eps)
            if size[ra] - merged[k] >= min_samples:
                death[k] = eps
                birth.setdefault(k, np.inf)
                del merged[k]
    return {k: (birth.get(k, np.inf), death.get(k, np.inf)) for k in ks}


@dataclass
class DensityClusters:
    labels: np.ndarray                      # cluster id per point, -1 for no clear cluster
    persistence: dict[int, float]           # id -> eps_death / eps_birth of each kept cluster
    rejected: list[float]                   # ratios of the HDBSCAN clusters that were not clear
    hdbscan_noise: int                      # points HDBSCAN itself left out


def density_clusters(x: np.ndarray, *, min_cluster_size: int = MIN_CLUSTER_SIZE,
                     persistence_min: float = PERSISTENCE_MIN) -> DensityClusters:
    """HDBSCAN (scikit-learn; excess-of-mass selection) on x, then only the clusters whose persistence
    ratio reaches `persistence_min`; the others' points join HDBSCAN's noise. Ids renumbered 0.. in
    HDBSCAN's order. Fewer than min_cluster_size points: no clusters."""
    from sklearn.cluster import HDBSCAN

    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if n < max(2, min_cluster_size):
        return DensityClusters(np.full(n, -1, np.int64), {}, [], n)
    with warnings.catch_warnings():
        # Exact duplicates make zero core distances, about which HDBSCAN may warn; they are handled.
        warnings.simplefilter("ignore", RuntimeWarning)
        raw = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit(x).labels_
    spans = persistence(x, raw, min_cluster_size)
    labels = np.full(n, -1, np.int64)
    kept, rejected = {}, []
    for k, (born, died) in sorted(spans.items()):
        ratio = 0.0 if not np.isfinite(born) else (np.inf if born <= 0 else died / born)
        if ratio >= persistence_min:
            labels[raw == k] = len(kept)
            kept[len(kept)] = float(ratio)
        else:
            rejected.append(float(ratio))
    return DensityClusters(labels, kept, rejected, int((raw < 0).sum()))
