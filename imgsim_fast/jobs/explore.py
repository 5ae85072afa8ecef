"""Exploration of a catalog: clusters (k-means, k given or chosen by silhouette), representatives, outliers,
a 2-D map (PCA) and collection statistics (issue 7). report_html.py draws the result.

Features: the catalog's embeddings (unit vectors) where it has them, else its hash codes unpacked to
+-1 vectors, whose squared Euclidean distance is exactly 4 x the Hamming distance, so k-means and PCA on
them are k-means and PCA under Hamming geometry.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.catalog.store import Catalog

__all__ = ["Cluster", "Exploration", "explore", "kmeans", "choose_k", "silhouette", "pca_2d", "knn_outliers",
           "collection_stats", "K_SAMPLE", "K_MAX"]

# Silhouette for choosing k is computed on at most this many points (seeded sample): it needs their
# pairwise distances, 1,000^2 floats, and a 1,000-point sample estimates the mean silhouette to ~0.01.
K_SAMPLE = 1000
# Largest k tried when choosing: a report of more clusters than this is no longer an overview.
K_MAX = 20
# Neighbours the outlier score averages over: an image with a few near-copies of its own still has
# them among its 5 nearest, so only images unlike anything in the collection score high.
OUTLIER_K = 5
# Near-duplicate radius for the statistics, in bits of a 64-bit pHash: imagededup's default, and what the
# dedup report measured (edited copies within 6 bits, unrelated photos above 20). Kept here rather than
# imported, so the statistics do not move when the dedup package tunes its own default.
NEAR_DUP_BITS = 10


@dataclass
class Cluster:
    id: int
    size: int
    members: list[int]            # indices into Exploration.paths, nearest the centre first
    representatives: list[int]    # the first few members: the images nearest the cluster centre
    spread: float                 # mean distance of the members to the centre


@dataclass
class Exploration:
    paths: list[str]
    file_ids: list[int]
    features: str                 # "embed:<model>" or "hash:<array>"
    k: int
    k_rule: str                   # how k was set
    silhouettes: dict             # k -> mean silhouette on the sample (when k was chosen)
    labels: np.ndarray            # cluster id per path
    clusters: list[Cluster]
    outliers: list[tuple[int, float]]  # (index, score), most isolated first
    outlier_rule: str
    xy: np.ndarray                # (n, 2) PCA map
    explained: list[float]        # variance fraction of the two map axes
    stats: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "features": self.features, "k": self.k, "k_rule": self.k_rule,
            "silhouettes": {str(k): round(v, 4) for k, v in self.silhouettes.items()},
            "files": [{"path": p, "file_id": f, "cluster": int(c), "x": round(float(x), 5), "y": round(float(y), 5)}
                      for p, f, c, (x, y) in zip(self.paths, self.file_ids, self.labels, self.xy)],
            "clusters": [{"id": c.id, "size": c.size, "spread": round(c.spread, 5),
                          "representatives": [self.paths[i] for i in c.representatives],
                          "members": [self.paths[i] for i in c.members]} for c in self.clusters],
            "outliers": [{"path": self.paths[i], "score": round(s, 5)} for i, s in self.outliers],
            "outlier_rule": self.outlier_rule,
            "map": {"method": "PCA (numpy SVD) of the features", "explained_variance": self.explained},
            "stats": self.stats, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


# ---------------------------------------------------------------------------------------------------
# Geometry


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k), clipped at 0 (the expansion can go slightly negative)."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


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


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) with Euclidean distances; a point alone in its cluster scores 0."""
    x = np.asarray(x, np.float64)
    d = np.sqrt(_sqdist(x, x))
    ks = np.unique(labels)
    if len(ks) < 2:
        return 0.0
    n = len(labels)
    onehot = (labels[:, None] == ks[None, :]).astype(np.float64)
    counts = onehot.sum(0)
    sums = d @ onehot  # (n, clusters): total distance from each point to each cluster
    own = np.searchsorted(ks, labels)
    own_n = counts[own]
    a = np.where(own_n > 1, sums[np.arange(n), own] / np.maximum(own_n - 1, 1), 0.0)
    mean_to = sums / counts[None, :]
    mean_to[np.arange(n), own] = np.inf
    b = mean_to.min(1)
    s = np.where(own_n > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(x: np.ndarray, *, seed: int = 0, k_max: int = K_MAX, sample: int = K_SAMPLE) -> tuple[int, dict]:
    """k in 2..min(k_max, n - 1) with the highest mean silhouette on a seeded sample of at most `sample`
    points; ties to the smaller k. Silhouette rather than the elbow: it needs no threshold on a curve's
    bend, and scores a split by how much nearer points are to their own cluster than to the next one,
    which is what 'distinct scenes' means. Fewer than 3 points: k = 1."""
    n = x.shape[0]
    if n < 3:
        return 1, {}
    rng = np.random.default_rng(seed)
    xs = x[np.sort(rng.choice(n, sample, replace=False))] if n > sample else x
    distinct = len(np.unique(np.round(xs, 5), axis=0))
    scores = {}
    for k in range(2, min(k_max, xs.shape[0] - 1, distinct) + 1):
        labels, _, _ = kmeans(xs, k, seed=seed, n_init=2)
        scores[k] = silhouette(xs, labels)
    if not scores:
        return 1, {}
    best = max(scores.values())
    return min(k for k, s in scores.items() if s >= best - 1e-9), scores


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Projection on the first two principal axes (SVD of the centred data, or of its d x d covariance
    when n > d), signs fixed so the largest loading of each axis is positive: the same data always
    gives the same map."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n == 0:
        return np.zeros((0, 2)), [0.0, 0.0]
    xc = x - x.mean(0)
    if n <= d:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        var = s ** 2
    else:
        w, v = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(w)[::-1]
        var, vt = np.maximum(w[order], 0), v[:, order].T
    axes = np.zeros((2, d))
    m = min(2, vt.shape[0])
    axes[:m] = vt[:m]
    for i in range(m):
        j = np.argmax(np.abs(axes[i]))
        if axes[i, j] < 0:
            axes[i] = -axes[i]
    tot = var.sum()
    explained = [float(var[i] / tot) if tot > 0 and i < len(var) else 0.0 for i in range(2)]
    return xc @ axes.T, explained


def knn_outliers(x: np.ndarray | None = None, codes: np.ndarray | None = None, *, k: int = OUTLIER_K,
                 bits: int = 64, threads: int | None = None) -> np.ndarray:
    """Outlier score per point: mean distance to its k nearest other points. Embeddings (unit vectors
    `x`): cosine distance 1 - cos, exact in blocks up to 20,000 points, HNSW (VectorIndex) beyond.
    Hash codes: Hamming distance / bits, exact (hamming_topk)."""
    if codes is not None:
        from imgsim_fast.indexes.hamming import hamming_topk

        n = codes.shape[0]
        kk = min(k, n - 1)
        if kk < 1:
            return np.zeros(n)
        ids, dist = hamming_topk(codes, codes, kk + 1, threads=threads)
        # drop each point itself (it is at distance 0, but so may be an identical copy sorted before it)
        own = ids == np.arange(n)[:, None]
        own[own.sum(1) == 0, -1] = True  # not returned: drop the farthest instead
        d = dist[~own].reshape(n, kk)
        return d.mean(1) / bits
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[0]
    kk = min(k, n - 1)
    if kk < 1:
        return np.zeros(n)
    if n <= 20_000:
        out = np.empty(n)
        for s in range(0, n, 1024):
            sims = x[s:s + 1024] @ x.T
            sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -np.inf
            top = -np.partition(-sims, kk - 1, axis=1)[:, :kk]
            out[s:s + 1024] = (1.0 - top).mean(1)
        return out
    from imgsim_fast.indexes.vectors import VectorIndex

    idx = VectorIndex(x.shape[1], exact_threshold=0)
    idx.add(x, np.arange(n))
    ids, sims = idx.knn(x, kk + 1)
    own = ids == np.arange(n)[:, None]
    own[own.sum(1) == 0, -1] = True
    return (1.0 - sims[~own].reshape(n, kk)).mean(1)


# ---------------------------------------------------------------------------------------------------
# Statistics


def _quantiles(v: list) -> dict | None:
    if not v:
        return None
    a = np.asarray(v, np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max()), "mean": float(a.mean())}


def collection_stats(cat: Catalog, *, hash_array: str | None = None, threshold: int | None = None,
                     max_listed: int = 50) -> dict:
    """Formats, file sizes, dimensions, dates, corrupt files, exact and near-duplicate rates."""
    from imgsim_fast.indexes.hamming import hamming_radius

    with cat.snapshot():
        rows = cat.conn.execute("SELECT id, path, size, mtime_ns, width, height, format, error, error_kind, "
                                "taken FROM files ORDER BY path").fetchall()
        walk = cat.walk_errors()
        exact_groups = cat.duplicate_groups("content")
        arrays = cat.arrays()
        if hash_array is None:
            hash_array = next((n for n in sorted(arrays) if n.startswith("phash-")),
                              next((n for n in sorted(arrays) if not n.startswith("embed-")), None))
        near = None
        if hash_array is not None:
            fids, _, codes = cat.vectors(hash_array)
            t = NEAR_DUP_BITS if threshold is None else threshold
            if len(fids):
                codes = np.ascontiguousarray(codes, np.uint64)
                lims, _, _ = hamming_radius(codes, codes, t)
                has = np.diff(lims) > 1  # itself, and at least one other file
                near = {"hash": hash_array, "threshold_bits": t, "files_with_a_near_duplicate": int(has.sum()),
                        "rate": round(float(has.mean()), 4), "pairs": int((np.diff(lims) - 1).sum() // 2)}
    ok = [r for r in rows if r[7] is None]
    bad = [r for r in rows if r[7] is not None]
    formats: dict[str, int] = {}
    for r in ok:
        formats[r[6] or "?"] = formats.get(r[6] or "?", 0) + 1
    dims = [(r[4], r[5]) for r in ok if r[4] and r[5]]
    res_count: dict[str, int] = {}
    for w, h in dims:
        res_count[f"{w}x{h}"] = res_count.get(f"{w}x{h}", 0) + 1
    orient = {"landscape": sum(w > h for w, h in dims), "portrait": sum(w < h for w, h in dims),
              "square": sum(w == h for w, h in dims)}
    taken = sorted(r[9] for r in ok if r[9])
    years: dict[str, int] = {}
    for t in taken:
        years[t[:4]] = years.get(t[:4], 0) + 1
    mtimes = [r[3] for r in rows]
    kinds: dict[str, int] = {}
    for r in bad:
        kinds[r[8] or "error"] = kinds.get(r[8] or "error", 0) + 1

    def iso(ns):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ns / 1e9))

    return {
        "files": len(rows), "readable": len(ok), "corrupt": len(bad),
        "corrupt_by_kind": kinds,
        "corrupt_files": [{"path": r[1], "kind": r[8], "reason": r[7]} for r in bad[:max_listed]],
        "walk_errors": len(walk),
        "formats": dict(sorted(formats.items(), key=lambda kv: (-kv[1], kv[0]))),
        "bytes": dict(_quantiles([r[2] for r in rows]) or {}, total=int(sum(r[2] for r in rows))),
        "width": _quantiles([w for w, _ in dims]), "height": _quantiles([h for _, h in dims]),
        "megapixels": _quantiles([w * h / 1e6 for w, h in dims]),
        "orientation": orient,
        "top_resolutions": dict(sorted(res_count.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
        "taken": {"with_date": len(taken), "first": taken[0] if taken else None,
                  "last": taken[-1] if taken else None, "by_year": years},
        "mtime": {"first": iso(min(mtimes)) if mtimes else None, "last": iso(max(mtimes)) if mtimes else None},
        "exact_duplicates": {"groups": len(exact_groups), "files": sum(len(g) for g in exact_groups)},
        "near_duplicates": near,
    }


# ---------------------------------------------------------------------------------------------------
# The whole exploration


def _features(cat: Catalog, features: str, model: str | None, where):
    """(fids, paths, x, codes, name, bits): x float32 feature rows; codes for hashes, else None."""
    from imgsim_fast.jobs.search import _candidates, resolve_space

    arrays = cat.arrays()
    if features == "auto":
        from imgsim_fast.features.embedding.models import DEFAULT_MODEL

        embeds = sorted(n for n in arrays if n.startswith("embed-") and arrays[n]["length"])
        if model is not None:
            space = resolve_space(cat, "clip", model)
        elif embeds:
            pick = next((n for n in embeds if arrays[n]["params"].get("model") == DEFAULT_MODEL), embeds[0])
            space = resolve_space(cat, "clip", arrays[pick]["params"].get("model"))
        else:
            hashes = sorted(n for n in arrays if not n.startswith("embed-"))
            if not hashes:
                raise ValueError("the catalog has neither embeddings nor hash codes; run `imgsim index DIR`")
            kind = "phash" if any(n.startswith("phash-") for n in hashes) else hashes[0].split("-")[0]
            space = resolve_space(cat, kind)
    elif features == "embedding":
        space = resolve_space(cat, "clip" if model else "cnn", model)
    else:
        space = resolve_space(cat, features)
    with cat.snapshot():
        fids, paths, rows = _candidates(cat, space, where)
        data = np.asarray(cat.array(space.array)[rows])
    if space.kind == "embed":
        x = data.astype(np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return fids, paths, x, None, space.method, 0
    codes = np.ascontiguousarray(data, np.uint64)
    bits = np.unpackbits(codes.view(np.uint8), axis=1, bitorder="little")[:, :space.bits]
    x = bits.astype(np.float32) * 2.0 - 1.0
    return fids, paths, x, codes, "hash:" + space.array, space.bits


def explore(cat: Catalog, *, k: int | None = None, features: str = "auto", model: str | None = None,
            where=None, n_outliers: int = 12, n_representatives: int = 6, seed: int = 0) -> Exploration:
    """Cluster, rank outliers, map and describe the catalog's files (those passing `where`).

    features: "auto" (embeddings if the catalog has any, the default model's first; else hashes),
    "embedding", or a hash kind ("phash", ...). k: clusters; None chooses it (choose_k).
    """
    timings = {}
    t0 = time.perf_counter()
    fids, paths, x, codes, name, bits = _features(cat, features, model, where)
    timings["features"] = time.perf_counter() - t0
    n = len(paths)
    stats = collection_stats(cat)
    timings["stats"] = time.perf_counter() - t0 - timings["features"]
    if n == 0:
        return Exploration([], [], name, 0, "no files with these features", {}, np.zeros(0, np.int64), [], [],
                           "", np.zeros((0, 2)), [0.0, 0.0], stats, timings)
    t = time.perf_counter()
    if k is None:
        k, sil = choose_k(x, seed=seed)
        rule = (f"chosen: highest mean silhouette for k in 2..{K_MAX} on a seeded sample of at most "
                f"{K_SAMPLE} files")
    else:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k, sil, rule = min(k, n), {}, "given"
    labels, centres, _ = kmeans(x, k, seed=seed)
    timings["cluster"] = time.perf_counter() - t
    d = np.sqrt(_sqdist(x, centres))[np.arange(n), labels]
    if bits:
        d = d * d / 4.0 / bits  # +-1 vectors: squared distance = 4 x Hamming; report Hamming / bits
    clusters = []
    for j in range(k):
        m = np.flatnonzero(labels == j)
        if not len(m):
            continue
        m = m[np.lexsort((m, d[m]))]
        clusters.append(Cluster(j, len(m), m.tolist(), m[:n_representatives].tolist(), float(d[m].mean())))
    clusters.sort(key=lambda c: (-c.size, c.members[0]))
    relabel = {c.id: i for i, c in enumerate(clusters)}  # cluster 0 = the largest
    for c in clusters:
        c.id = relabel[c.id]
    labels = np.array([relabel[int(v)] for v in labels], np.int64)

    t = time.perf_counter()
    score = knn_outliers(x if codes is None else None, codes, bits=bits or 64)
    order = np.lexsort((np.arange(n), -score))[:min(n_outliers, n)]
    outliers = [(int(i), float(score[i])) for i in order]
    timings["outliers"] = time.perf_counter() - t
    t = time.perf_counter()
    xy, explained = pca_2d(x)
    timings["map"] = time.perf_counter() - t
    metric = "cosine distance" if codes is None else "Hamming distance / bits"
    return Exploration(paths, [int(f) for f in fids], name, k, rule, sil, labels, clusters, outliers,
                       f"mean {metric} to the {min(OUTLIER_K, max(n - 1, 0))} nearest other files, highest first",
                       xy, explained, stats, timings)


def default_report_path(cat: Catalog) -> str:
    return os.path.join(os.path.dirname(cat.path), "report.html")
