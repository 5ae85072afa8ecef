"""Hamming top-k scans: ours against faiss.IndexBinaryFlat, one thread, and the memory bandwidth bound.

A top-k scan over N 64-bit codes must read 8N bytes per query (or per block of queries); the machine's
single-thread read bandwidth, measured here with a plain NumPy reduction, is the ceiling it is held to.
"""
from __future__ import annotations

import numpy as np

from imgsim_fast.indexes.hamming import hamming_topk, simd_target
from imgsim_fast.bench.report import Row, best_time


def read_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Single-thread sequential read bandwidth (GB/s): sum of a buffer much larger than any cache."""
    a = np.ones(nbytes // 8, dtype=np.int64)
    a.sum()  # fault the pages in
    t = best_time(lambda: a.sum(), repeat=5)
    return nbytes / t / 1e9


def run(sizes=(1_000_000, 10_000_000), k: int = 10, seed: int = 0, quick: bool = False) -> list[Row]:
    rows = [Row("hamming", "read bandwidth, 1 thread (numpy sum)", read_bandwidth_gbs(1 << 28 if quick else 1 << 30), "GB/s")]
    try:
        import faiss
    except ImportError:
        faiss = None
        print("bench: faiss not installed (scripts/setup.sh --test installs it); faiss columns left empty")
    rng = np.random.default_rng(seed)
    for n in sizes:
        db = rng.integers(0, 2**64, size=(n, 1), dtype=np.uint64)
        nq_single = 10 if quick else 30
        nq_batch = 64 if quick else 256
        queries = rng.integers(0, 2**64, size=(max(nq_single, nq_batch), 1), dtype=np.uint64)
        index = None
        if faiss is not None:
            faiss.omp_set_num_threads(1)
            index = faiss.IndexBinaryFlat(64)
            index.add(db.view(np.uint8))
        params = {"n": n, "k": k, "bits": 64, "threads": 1, "simd": simd_target()}

        def ours_single():
            for i in range(nq_single):
                hamming_topk(queries[i:i + 1], db, k, threads=1)

        def faiss_single():
            for i in range(nq_single):
                index.search(queries[i:i + 1].view(np.uint8), k)

        t = best_time(ours_single)
        qps = nq_single / t
        peer = nq_single / best_time(faiss_single) if index is not None else None
        rows.append(Row("hamming", f"top-{k} of {n:,} codes, one query at a time", qps, "queries/s",
                        "faiss.IndexBinaryFlat" if peer else None, peer, dict(params, queries=nq_single)))
        rows.append(Row("hamming", f"  scan rate, one query at a time, n={n:,}", qps * n * 8 / 1e9, "GB/s",
                        "faiss.IndexBinaryFlat" if peer else None, peer * n * 8 / 1e9 if peer else None, params))

        qb = queries[:nq_batch]
        t = best_time(lambda: hamming_topk(qb, db, k, threads=1))
        qps = nq_batch / t
        peer = nq_batch / best_time(lambda: index.search(qb.view(np.uint8), k)) if index is not None else None
        rows.append(Row("hamming", f"top-{k} of {n:,} codes, batch of {nq_batch}", qps, "queries/s",
                        "faiss.IndexBinaryFlat" if peer else None, peer, dict(params, queries=nq_batch)))
        # Same answers, or the speed means nothing: distances must agree exactly (ids may differ on ties).
        if index is not None:
            d_f, _ = index.search(qb[:16].view(np.uint8), k)
            _, d_o = hamming_topk(qb[:16], db, k, threads=1)
            if not np.array_equal(d_f, d_o):
                raise AssertionError("top-k distances differ from faiss: the benchmark would be meaningless")
        del db, index
    return rows
