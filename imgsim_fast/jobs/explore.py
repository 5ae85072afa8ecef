"""Exploration of a catalog (issues 7, 15): clusters that are there (density clusters, or k-means when k is
given), representatives, outliers, a 2-D map and collection statistics. reports/explore_html.py draws it.

Features: the catalog's embeddings (unit vectors) where it has them, else its hash codes unpacked to
+-1 vectors, whose squared Euclidean distance is exactly 4 x the Hamming distance, so clusters and maps
of them follow Hamming geometry. Wider than explore_clusters.REDUCED_DIMS, they are first projected on
their principal axes. Clusters: explore_clusters.py; the map: explore_map.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.catalog.store import Catalog
from imgsim_fast.jobs.explore_clusters import (MIN_CLUSTER_SIZE, PERSISTENCE_MIN, REDUCED_DIMS, _sqdist,
                                               density_clusters, kmeans, pca)
from imgsim_fast.jobs.explore_map import layout_2d, trustworthiness
from imgsim_fast.runtime.progress import phase

__all__ = ["Cluster", "Exploration", "ROW_COLUMNS", "explore", "knn_outliers", "collection_stats",
           "near_duplicates", "NO_STRUCTURE"]

# What the report and the CLI say when no cluster is clear (issue 15: explore must not invent groups).
NO_STRUCTURE = "no clear cluster structure"
# Neighbours the outlier score averages over: an image with a few near-copies of its own still has
# them among its 5 nearest, so only images unlike anything in the collection score high.
OUTLIER_K = 5


@dataclass
class Cluster:
    id: int
    size: int
    members: list[int]            # indices into Exploration.paths, nearest the centre first
    representatives: list[int]    # the first few members: the images nearest the cluster centre
    spread: float                 # mean distance of the members to the centre
    persistence: float | None     # eps_death / eps_birth (explore_clusters.persistence); None for k-means


ROW_COLUMNS = ("path", "file_id", "cluster", "x", "y", "representative", "outlier_score")


@dataclass
class Exploration:
    paths: list[str]
    file_ids: list[int]
    features: str                 # "embed:<model>" or "hash:<array>"
    k: int                        # clusters found (or given)
    k_rule: str                   # how they were found
    structure: bool               # False: no clear cluster structure (no cluster passed the test)
    verdict: str                  # one line for people: what the clustering found
    labels: np.ndarray            # cluster id per path, -1 for files in no clear cluster
    clusters: list[Cluster]
    outliers: list[tuple[int, float]]  # (index, score), most isolated first
    outlier_rule: str
    xy: np.ndarray                # (n, 2) map
    map_method: str               # how the map was made
    map_trust: dict               # trustworthiness of the map and of PCA, for comparison
    rejected: list[float] = field(default_factory=list)  # persistence of the density clusters not kept
    stats: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def unclustered(self) -> list[int]:
        return np.flatnonzero(self.labels < 0).tolist()

    def to_rows(self) -> list[dict]:
        """One row per file: its cluster (-1: none), map position, whether it represents its cluster, and its
        outlier score when it is among the listed outliers (names.path_text for the path)."""
        from imgsim_fast.io.names import path_text

        reps = {i for c in self.clusters for i in c.representatives}
        score = dict(self.outliers)
        return [{"path": path_text(p), "file_id": int(f), "cluster": int(c), "x": float(x), "y": float(y),
                 "representative": i in reps, "outlier_score": score.get(i)}
                for i, (p, f, c, (x, y)) in enumerate(zip(self.paths, self.file_ids, self.labels, self.xy))]

    def to_arrow(self):
        """The rows as a pyarrow Table (the [arrow] extra)."""
        from imgsim_fast.io.tables import to_arrow

        return to_arrow(self.to_rows(), ROW_COLUMNS)

    def to_pandas(self):
        """The rows as a pandas DataFrame (the [arrow] extra)."""
        from imgsim_fast.io.tables import to_pandas

        return to_pandas(self.to_rows(), ROW_COLUMNS)

    def to_dict(self) -> dict:
        def num(v):
            return None if v is None else (str(v) if not np.isfinite(v) else round(float(v), 4))

        return {
            "features": self.features, "k": self.k, "k_rule": self.k_rule, "structure": self.structure,
            "verdict": self.verdict,
            "files": [{"path": p, "file_id": f, "cluster": int(c), "x": round(float(x), 5), "y": round(float(y), 5)}
                      for p, f, c, (x, y) in zip(self.paths, self.file_ids, self.labels, self.xy)],
            "clusters": [{"id": c.id, "size": c.size, "spread": round(c.spread, 5), "persistence": num(c.persistence),
                          "representatives": [self.paths[i] for i in c.representatives],
                          "members": [self.paths[i] for i in c.members]} for c in self.clusters],
            "unclustered": [self.paths[i] for i in self.unclustered],
            "rejected_persistence": [num(r) for r in self.rejected],
            "outliers": [{"path": self.paths[i], "score": round(s, 5)} for i, s in self.outliers],
            "outlier_rule": self.outlier_rule,
            "map": {"method": self.map_method, "trustworthiness": self.map_trust},
            "stats": self.stats, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


# ---------------------------------------------------------------------------------------------------
# Outliers


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


def near_duplicates(cat: Catalog, paths: list[str], hash_array: str | None = None,
                    threshold: int | None = None) -> dict | None:
    """How many files have a duplicate, or a look-alike, by dedup's pair test (jobs/dedup/detect.py: the
    one definition of "duplicate", so explore and dedup never disagree about a pair).

    With dedup's features in the catalog (`imgsim dedup --catalog`), the whole test as dedup runs it:
    trimmed dihedral pHash, embeddings in the learned space when stored, the pixel check. Otherwise its
    pHash rule on the catalog's plain pHash codes (`hash_array`): no flips or trimmed borders, so mirrored
    and letterboxed copies are not counted. threshold: the pHash rule's bits (default: dedup's).
    """
    import dataclasses

    from imgsim_fast.catalog.dedup_features import model_arrays, read_features, stored_checks
    from imgsim_fast.features.extract import Features, FileFacts
    from imgsim_fast.jobs.dedup import _learned_space
    from imgsim_fast.jobs.dedup.detect import DEFAULTS, PairJudge, candidate_pairs, check_key_prefix

    t = DEFAULTS if threshold is None else dataclasses.replace(DEFAULTS, phash=threshold)
    arrays = cat.arrays()
    models = sorted(p["model"] for n, p in ((n, a["params"]) for n, a in arrays.items())
                    if n.startswith("dedup-emb-") and "model" in p and model_arrays(p["model"])[1] in arrays)
    feats, missing = read_features(cat, paths, models[0] if models else None)
    if paths and not missing and not feats.failures:
        method = "auto" if feats.embeddings is not None else "phash"
        feats, t = _learned_space(feats, t) if method == "auto" else (feats, t)
        # pairs dedup checked cost nothing
        judge = PairJudge(feats, method, t, checks=stored_checks(cat, check_key_prefix()))
        test = f"dedup's pair test ({method}, stored dedup features)"
    else:
        if hash_array is None or not paths:
            return None
        fids, _, codes = cat.vectors(hash_array)
        by_id = {r[0]: r for r in cat.conn.execute("SELECT id, path, size, digest FROM files WHERE error IS NULL")}
        facts = [FileFacts(by_id[f][1], by_id[f][2], 0.0, 0, 0, "", 0, by_id[f][3] or f"row-{f}")
                 for f in fids.tolist() if f in by_id]
        codes = np.ascontiguousarray(codes[[i for i, f in enumerate(fids.tolist()) if f in by_id]], np.uint64)
        if not len(facts):
            return None
        feats = Features(facts, np.repeat(codes[:, None, :], 8, axis=1))
        judge = PairJudge(feats, "phash", t, flips=False)
        test = f"dedup's pHash rule on {hash_array} (within {t.phash} bits; no flips, no trimmed borders)"
    d = judge.decide(*candidate_pairs(judge))  # decisions as arrays: a collection's pairs cost no objects
    n = len(feats)
    dup = np.zeros(n, bool)
    alike = np.zeros(n, bool)
    is_dup = d.duplicate
    dup[d.i[is_dup]] = dup[d.j[is_dup]] = True
    alike[d.i[~is_dup]] = alike[d.j[~is_dup]] = True
    n_dup = int(dup.sum())
    return {"test": test, "files": n, "files_with_a_duplicate": n_dup, "rate": round(n_dup / n, 4),
            "duplicate_pairs": int(is_dup.sum()), "files_with_only_a_look_alike": int((alike & ~dup).sum())}


def collection_stats(cat: Catalog, *, hash_array: str | None = None, threshold: int | None = None,
                     max_listed: int = 50) -> dict:
    """Formats, file sizes, dimensions, dates, corrupt files, exact and near-duplicate rates."""
    with cat.snapshot():
        rows = cat.conn.execute("SELECT id, path, size, mtime_ns, width, height, format, error, error_kind, "
                                "taken FROM files ORDER BY path").fetchall()
        walk = cat.walk_errors()
        exact_groups = cat.duplicate_groups("content")
        arrays = cat.arrays()
        if hash_array is None:
            hash_array = next((n for n in sorted(arrays) if n.startswith("phash-")),
                              next((n for n in sorted(arrays) if not n.startswith("embed-")), None))
        near = near_duplicates(cat, [r[1] for r in rows if r[7] is None], hash_array, threshold)
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
            where=None, n_outliers: int = 12, n_representatives: int = 6, seed: int = 0,
            min_cluster_size: int = MIN_CLUSTER_SIZE, map_method: str = "umap",
            progress: bool | None = False) -> Exploration:
    """Cluster, rank outliers, map and describe the catalog's files (those passing `where`).

    features: "auto" (embeddings if the catalog has any, the default model's first; else hashes),
    "embedding", or a hash kind ("phash", ...).
    k: None finds density clusters (HDBSCAN, kept when persistent: explore_clusters.density_clusters)
        and may find none; a number partitions every file into k clusters with k-means.
    map_method: "umap" or "pca" (explore_map.layout_2d).
    progress: bars on stderr for the slow phases (None: when stderr is a terminal).
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size}")
    timings = {}
    t0 = time.perf_counter()
    fids, paths, x, codes, name, bits = _features(cat, features, model, where)
    timings["features"] = time.perf_counter() - t0
    n = len(paths)
    t = time.perf_counter()
    stats = collection_stats(cat)
    timings["stats"] = time.perf_counter() - t
    if n == 0:
        return Exploration([], [], name, 0, "no files with these features", False, "no files to explore",
                           np.zeros(0, np.int64), [], [], "", np.zeros((0, 2)), "", {}, [], stats, timings)
    reduced = pca(x, REDUCED_DIMS)[0] if x.shape[1] > REDUCED_DIMS else np.asarray(x, np.float64)

    t = time.perf_counter()
    persist: dict[int, float] = {}
    rejected: list[float] = []
    with phase("clustering", progress):
        if k is None:
            found = density_clusters(reduced, min_cluster_size=min_cluster_size)
            labels, persist, rejected = found.labels, found.persistence, found.rejected
            k = len(persist)
            rule = (f"density clusters (HDBSCAN, at least {min_cluster_size} files) kept when they persist while "
                    f"the density falls by {PERSISTENCE_MIN}x or more")
        else:
            asked, k = k, min(k, n)
            labels = kmeans(x, k, seed=seed)[0]
            rule = "given: k-means puts every file in one of k clusters"
    timings["cluster"] = time.perf_counter() - t
    clusters, labels = _describe_clusters(x, labels, bits, persist, n_representatives)
    clustered = int((labels >= 0).sum())
    if k and rule.startswith("given"):
        # k-means returns fewer than k clusters only when the files hold fewer distinct feature vectors
        # (byte-identical copies, one hash for several pictures): say so rather than promise k.
        verdict = (f"{k} clusters (k given)" if len(clusters) == asked else
                   f"{len(clusters)} clusters (k {asked} given; the files hold only {len(clusters)} distinct "
                   f"feature vectors)")
    elif k:
        verdict = (f"{k} clear cluster{'s' if k != 1 else ''} holding {clustered} of {n} files; "
                   f"{n - clustered} in no clear cluster")
    else:
        why = (f"{len(rejected)} candidate group{'s' if len(rejected) != 1 else ''} did not persist "
               f"(best {max(rejected):.2f}x, needed {PERSISTENCE_MIN}x)" if rejected else
               f"no {min_cluster_size} or more files are denser together than around them")
        verdict = f"{NO_STRUCTURE}: {why}"

    t = time.perf_counter()
    with phase("outliers", progress):
        score = knn_outliers(x if codes is None else None, codes, bits=bits or 64)
    order = np.lexsort((np.arange(n), -score))[:min(n_outliers, n)]
    outliers = [(int(i), float(score[i])) for i in order]
    timings["outliers"] = time.perf_counter() - t
    t = time.perf_counter()
    with phase(f"map ({map_method})", progress):
        xy, how = layout_2d(reduced, map_method, seed=seed)
        trust = {"k": 5, "map": trustworthiness(reduced, xy, seed=seed)}
        if not how.startswith("PCA"):
            trust["pca"] = trustworthiness(reduced, pca(reduced, 2)[0], seed=seed)
    timings["map"] = time.perf_counter() - t
    metric = "cosine distance" if codes is None else "Hamming distance / bits"
    return Exploration(paths, [int(f) for f in fids], name, k, rule, bool(k), verdict, labels, clusters, outliers,
                       f"mean {metric} to the {min(OUTLIER_K, max(n - 1, 0))} nearest other files, highest first",
                       xy, how, trust, rejected, stats, timings)


def _describe_clusters(x, labels, bits, persist, n_representatives) -> tuple[list[Cluster], np.ndarray]:
    """Clusters ordered largest first (cluster 0 the largest), members nearest their centre first;
    labels renumbered to match."""
    clusters = []
    for j in sorted(set(labels.tolist()) - {-1}):
        m = np.flatnonzero(labels == j)
        centre = x[m].mean(0, keepdims=True)
        d = np.sqrt(_sqdist(np.asarray(x[m], np.float64), np.asarray(centre, np.float64)))[:, 0]
        if bits:
            d = d * d / 4.0 / bits  # +-1 vectors: squared distance = 4 x Hamming; report Hamming / bits
        o = np.lexsort((m, d))
        m, d = m[o], d[o]
        clusters.append(Cluster(j, len(m), m.tolist(), m[:n_representatives].tolist(), float(d.mean()),
                                persist.get(j)))
    clusters.sort(key=lambda c: (-c.size, c.members[0]))
    relabel = {c.id: i for i, c in enumerate(clusters)}
    for c in clusters:
        c.id = relabel[c.id]
    return clusters, np.array([relabel.get(int(v), -1) for v in labels], np.int64)
