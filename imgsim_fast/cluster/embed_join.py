"""Embedding candidates past one machine: k-means cells with multi-assignment, a kNN search inside each cell.

The single-machine step (detect.embedding_pairs) asks one VectorIndex for the k' = views x (k + 1) nearest
vectors of every view of every file and keeps those with cosine >= min_cos. Here spherical k-means
centroids, trained on a sample, cut the vectors into cells; each vector goes to its `probes` nearest cells
(multi-assignment, as IVF indexes probe several lists: a neighbour near a cell boundary is still met),
a reduce task answers the k' nearest inside each cell with the same VectorIndex, and the driver keeps each
vector's k' best over its cells. With probes equal to the number of cells this is exactly the
single-machine search; with fewer it is approximate, and tests measure its recall against it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["given", "train_centroids", "nearest_cells", "embedding_join"]


def given(arg):
    """A loader for inputs already in memory (rows, embeddings, centre views): tests and notebooks."""
    return arg


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_centroids(sample: np.ndarray, cells: int, iters: int = 10, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) centroids (cells, d) of a sample of vectors."""
    x = _normalise(sample)
    cells = max(1, min(cells, len(x)))
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), cells, replace=False)].copy()
    for _ in range(iters):
        a = np.argmax(x @ c.T, axis=1)
        for k in range(cells):
            members = x[a == k]
            if len(members):
                c[k] = members.sum(axis=0)
        c = _normalise(c)
    return c


def nearest_cells(x: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """(n, probes) cells of each vector, nearest first."""
    s = _normalise(x) @ centroids.T
    probes = min(probes, centroids.shape[0])
    top = np.argpartition(-s, probes - 1, axis=1)[:, :probes]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, axis=1), axis=1), axis=1)


def _views(rows: np.ndarray, emb: np.ndarray, centre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(vector ids row * 2 + view, vectors): view 0 the whole picture, 1 its centre (when there is one)."""
    if centre is None:
        return rows * 2, _normalise(emb)
    return np.concatenate([rows * 2, rows * 2 + 1]), _normalise(np.concatenate([emb, centre]))


def _map_task(load, arg, centroids, probes: int, partitions: int):
    rows, emb, centre = load(arg)
    vid, vec = _views(np.asarray(rows, np.int64), emb, centre)
    cells = nearest_cells(vec, centroids, probes)
    cell = cells.ravel()
    idx = np.repeat(np.arange(len(vid)), cells.shape[1])
    part = cell % partitions
    out = []
    for p in range(partitions):
        sel = part == p
        out.append((cell[sel], vid[idx[sel]], vec[idx[sel]].astype(np.float16)))
    return tuple(out) if partitions > 1 else out[0]


def _reduce_task(kprime: int, min_cos: float, *parts):
    """(query ids, target ids, scores): each member's kprime nearest in each of this task's cells."""
    from imgsim_fast.indexes.vectors import VectorIndex

    cell = np.concatenate([p[0] for p in parts])
    vid = np.concatenate([p[1] for p in parts])
    vec = np.concatenate([p[2] for p in parts]).astype(np.float32)
    qs, ts, ss = [], [], []
    for c in np.unique(cell):
        sel = np.flatnonzero(cell == c)
        vi = VectorIndex(vec.shape[1], deterministic=True)  # the same pairs every run, as dedup
        vi.add(vec[sel], vid[sel])
        ids, scores = vi.knn(vec[sel], k=min(kprime, len(sel)))
        q = np.repeat(vid[sel], ids.shape[1])
        ids, scores = ids.ravel(), scores.ravel()
        keep = (ids >= 0) & (scores >= min_cos)
        qs.append(q[keep])
        ts.append(ids[keep])
        ss.append(scores[keep])
    if not qs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(qs), np.concatenate(ts), np.concatenate(ss)


def _best_k(q: np.ndarray, t: np.ndarray, s: np.ndarray, kprime: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's kprime best distinct targets over all cells that answered it."""
    if not len(q):
        return q, t
    order = np.lexsort((t, -s, q))  # by query, best score first
    q, t, s = q[order], t[order], s[order]
    # A target met in two cells counts once: sorted by (query, target) its copies are adjacent.
    order = np.lexsort((-s, t, q))
    q, t, s = q[order], t[order], s[order]
    once = np.r_[True, (q[1:] != q[:-1]) | (t[1:] != t[:-1])]
    q, t, s = q[once], t[once], s[once]
    order = np.lexsort((t, -s, q))  # then by query, best score first
    q, t = q[order], t[order]
    first = np.r_[True, q[1:] != q[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(q)), 0))
    rank = np.arange(len(q)) - start
    keep = rank < kprime
    return q[keep], t[keep]


def embedding_join(inputs: list[tuple], sample: np.ndarray, min_cos: float, k: int = 32, *, views: int = 2,
                   cells: int = 16, probes: int = 3, partitions: int = 4, ray=None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows (i < j, sorted, distinct) whose vectors are among each other's k' nearest with cosine >=
    min_cos, k' = views x (k + 1), as detect.embedding_pairs finds them (see the module docstring).

    inputs: (load, arg) per map task; load(arg) -> (rows, embeddings (n, d), centre views (n, d) or None),
    in the space the pair test compares in. sample: vectors to train the centroids on.
    """
    if ray is None:
        import ray
    centroids = train_centroids(sample, cells)
    kprime = views * (k + 1)
    P = max(1, min(partitions, len(centroids)))
    mapper = ray.remote(num_cpus=1, max_retries=4)(_map_task).options(num_returns=P)
    reducer = ray.remote(num_cpus=1, max_retries=4)(_reduce_task).options(num_returns=3)
    cref = ray.put(centroids)
    maps = [mapper.remote(load, arg, cref, probes, P) for load, arg in inputs]
    if P == 1:
        maps = [[m] for m in maps]
    reds = [reducer.remote(kprime, min_cos, *[m[p] for m in maps]) for p in range(P)]
    got = [ray.get(list(r)) for r in reds]
    q = np.concatenate([g[0] for g in got])
    t = np.concatenate([g[1] for g in got])
    s = np.concatenate([g[2] for g in got])
    q, t = _best_k(q, t, s, kprime)
    a, b = q // 2, t // 2
    keep = a != b
    a, b = a[keep], b[keep]
    if not len(a):
        return a, b
    key = np.unique((np.minimum(a, b).astype(np.uint64) << np.uint64(32)) | np.maximum(a, b).astype(np.uint64))
    return (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
