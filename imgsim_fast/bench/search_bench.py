"""Search throughput (issue 7): queries/s, one query at a time and batched, over stored embedding vectors
(VectorIndex, HNSW) and over stored 64-bit hash codes (hamming_topk, exact scan).

Vectors: clustered random unit vectors of dim 256 (real embeddings are clustered; i.i.d. Gaussians are
HNSW's worst case). The HNSW build dominates the run on a small machine: at M=32, ef_construction=128,
d=256 it measured 4,830 vectors/s at 100k and 3,068 vectors/s at 720k on 2 cores, so the full run's 1M
vectors take about 6 minutes to build there; quick uses 100k. Recall@10 against exact search is reported
beside each rate, so a rate is never bought with recall; when the default ef falls short of 0.95 the
batch is re-run at larger ef until it does, and that rate is reported too.
"""
from __future__ import annotations

import os
import time

import numpy as np

from imgsim_fast.bench.report import Row, best_time

__all__ = ["run"]

DIM = 256
K = 10
N_HASHES, N_HASHES_QUICK = 10_000_000, 1_000_000
N_VECTORS_QUICK = 100_000
N_VECTORS = 1_000_000
SINGLE_QUERIES = 200
BATCH_QUERIES = 2000


def _vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((max(1, n // 1000), DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)]))


def _vector_rows(quick: bool, seed: int) -> list[Row]:
    from imgsim_fast.indexes.vectors import VectorIndex

    rng = np.random.default_rng(seed)
    cores = os.cpu_count() or 1
    n = N_VECTORS_QUICK if quick else N_VECTORS
    x = _vectors(n, rng)
    q = x[rng.choice(n, BATCH_QUERIES, replace=False)] + 0.05 * rng.standard_normal((BATCH_QUERIES, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    idx = VectorIndex(DIM, exact_threshold=0, threads=-1, seed=seed)
    t0 = time.perf_counter()
    for s in range(0, n, 100_000):
        idx.add(x[s:s + 100_000], np.arange(s, min(n, s + 100_000)))
    build = time.perf_counter() - t0
    # Exact answers for the recall check: BLAS over the first 200 queries.
    sims = q[:SINGLE_QUERIES] @ x.T
    exact = np.argsort(-sims, axis=1)[:, :K]
    del sims
    got1 = []

    def single():
        got1.clear()
        for v in q[:SINGLE_QUERIES]:
            got1.append(idx.knn(v, K)[0][0])

    t1 = best_time(single, repeat=2)
    got_b = {}

    def batch():
        got_b["ids"] = idx.knn(q, K)[0]

    tb = best_time(batch, repeat=2)
    params = {"n": n, "dim": DIM, "k": K, "M": idx.M, "ef": idx.ef,
              "threads": cores, "build_s": round(build, 1), "seed": seed}
    r1 = _recall(np.array(got1), exact)
    rb = _recall(got_b["ids"][:SINGLE_QUERIES], exact)
    rows = [
        Row("search", f"vectors {n // 1000}k HNSW build", n / build, "vectors/s", params=params),
        Row("search", f"vectors {n // 1000}k single query", SINGLE_QUERIES / t1, "queries/s",
            params=dict(params, recall_at_10=round(r1, 4))),
        Row("search", f"vectors {n // 1000}k batch of {BATCH_QUERIES}", BATCH_QUERIES / tb, "queries/s",
            params=dict(params, recall_at_10=round(rb, 4)), note=f"recall@10 {rb:.3f} at ef={idx.ef}"),
    ]
    rows[1].note = f"recall@10 {r1:.3f} at ef={idx.ef}"
    ef = idx.ef
    while rb < 0.95 and ef < 3200:
        ef *= 2
        idx.ef = ef
        tb = best_time(batch, repeat=2)
        rb = _recall(got_b["ids"][:SINGLE_QUERIES], exact)
        rows.append(Row("search", f"vectors {n // 1000}k batch of {BATCH_QUERIES}, ef={ef}", BATCH_QUERIES / tb,
                        "queries/s", params=dict(params, ef=ef, recall_at_10=round(rb, 4)),
                        note=f"recall@10 {rb:.3f} at ef={ef}"))
    return rows


def _hash_rows(quick: bool, seed: int) -> list[Row]:
    from imgsim_fast.indexes.hamming import hamming_topk, simd_target

    rng = np.random.default_rng(seed + 1)
    n = N_HASHES_QUICK if quick else N_HASHES
    db = rng.integers(0, 2**63, size=(n, 1), dtype=np.uint64)
    q = db[rng.choice(n, 256, replace=False)] ^ np.uint64(0b1011)  # near an existing code
    cores = os.cpu_count() or 1
    n_single = 20 if not quick else 50

    def single():
        for v in q[:n_single]:
            hamming_topk(v.reshape(1, 1), db, K)

    def batch():
        hamming_topk(q, db, K)

    t1 = best_time(single, repeat=2)
    tb = best_time(batch, repeat=2)
    params = {"n": n, "bits": 64, "k": K, "threads": cores, "simd": simd_target(), "seed": seed}
    return [
        Row("search", f"hashes {n // 1_000_000}M single query", n_single / t1, "queries/s", params=params),
        Row("search", f"hashes {n // 1_000_000}M batch of {len(q)}", len(q) / tb, "queries/s", params=params),
        Row("search", f"hashes {n // 1_000_000}M batch scan rate", len(q) * n / tb / 1e9, "G codes/s", params=params),
    ]


def run(quick: bool = False, seed: int = 0) -> list[Row]:
    """Rows for `python -m imgsim_fast.bench`: hash search first (seconds), then vectors (build-bound)."""
    return _hash_rows(quick, seed) + _vector_rows(quick, seed)


if __name__ == "__main__":
    import sys

    from imgsim_fast.bench.report import print_table

    print_table(run(quick="--quick" in sys.argv))
