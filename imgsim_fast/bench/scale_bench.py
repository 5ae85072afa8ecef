"""Scale: the hash-only self-join and the embedding index on synthetic catalogs of 10^6..10^8 images.

Codes. pHash-like 64-bit codes whose bits are not fair coins: the DC bit (the first, the most significant of
word 0) is set in 99% of codes, the other 63 have probabilities spread around 1/2 (sd 0.15, clipped to
[0.05, 0.95]; drawn once from the seed), independent. Planted duplicate groups: 1% of the codes are
originals, each with 1 to 4 copies elsewhere in the catalog that differ from it in 0..r random bits.
The self-join (HammingIndex.self_join, one thread) runs at the default dedup radius (DEFAULTS.phash) up to
10^7 codes and at r = 4 at every size, each run in a fresh process so its peak RSS is its own. Checked
each time: the planted (original, copy) pairs within r that the join found (recall, must be 1.0), and for
a random sample of codes the join's neighbours against a brute-force radius search with the SIMD kernels
(imgsim_fast.indexes.hamming), which must be equal. "Before" is the cost per code of probing the MIH tables
one query at a time (HammingIndex.radius over a sample of the codes, one thread): the self-join did that
for every row, against the later rows only (about half of it), before the bucket join.

Embeddings. d = 512 unit vectors with a low intrinsic dimension (48 latent factors plus noise), 1% planted
near-copies; queries are perturbed catalog vectors. Ground truth: exact top-10 over fp32 at full d. Stored
compact: fp16 at full d, and PCA to 128 / 64 dimensions (fitted on a 50,000-vector sample) kept as fp16.
Recall@10 of exact search on each compact form measures what compacting costs; the project's VectorIndex
(hnswlib HNSW, its default M and ef_construction) and faiss.IndexHNSWFlat (same M, ef_construction, inner
product) are then built on the PCA-128 vectors in the same process and compared at equal recall (the
smallest ef of a ladder reaching RECALL_TARGET against exact search on the same vectors, one query thread).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time

import numpy as np

from imgsim_fast.bench.report import Row

SECTION = "scale"
DEFAULT_SIZES = (1_000_000, 10_000_000, 100_000_000)
DEFAULT_EMBED_SIZES = (1_000_000,)
SMALL_RADIUS = 4                 # the radius run at every size, 10^8 included
FULL_RADIUS_MAX_N = 10_000_000   # the default radius is run up to this size; beyond, projected
CHECK_SAMPLE = 1000              # codes whose neighbours are checked against brute force
BEFORE_SAMPLE = 2000             # codes queried one at a time for the "before" figure
RECALL_TARGET = 0.95
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
EMBED_DIM = 512
PCA_DIMS = (128, 64)


def default_radius() -> int:
    from imgsim_fast.jobs.dedup.detect import DEFAULTS

    return int(DEFAULTS.phash)


# ------------------------------------------------------------------------------------------------------
# synthetic codes


def bit_profile(seed: int) -> np.ndarray:
    """P(bit = 1) for the 64 bits, in pack order (bit 0 is the DC term's: almost always set)."""
    rng = np.random.default_rng([seed, 64])
    p = np.clip(0.5 + 0.15 * rng.standard_normal(64), 0.05, 0.95)
    p[0] = 0.99
    return p


def _distinct(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """k distinct indices below n in random order, without an n-sized permutation (n may be 10^8)."""
    out = np.unique(rng.integers(0, n, size=int(k * 1.2) + 16))
    while len(out) < k:
        out = np.unique(np.concatenate([out, rng.integers(0, n, size=k)]))
    rng.shuffle(out)
    return out[:k]


def synthetic_codes(n: int, seed: int, max_flips: int, chunk: int = 1 << 20):
    """(codes (n,) uint64, planted originals, planted copies, their distances) for a catalog of n codes."""
    rng = np.random.default_rng([seed, n])
    th = np.round(bit_profile(seed) * 256).astype(np.uint16)
    codes = np.empty(n, np.uint64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        bits = rng.integers(0, 256, (e - s, 64), dtype=np.uint8) < th
        codes[s:e] = np.packbits(bits, axis=1).view(">u8").ravel()
    n_groups = n // 100
    copies_per = rng.integers(1, 5, n_groups)
    n_copies = int(copies_per.sum())
    if n_groups == 0 or n_groups + n_copies > n:
        return codes, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    idx = _distinct(rng, n, n_groups + n_copies).astype(np.int64)
    orig = np.repeat(idx[:n_groups], copies_per)
    copy = idx[n_groups:]
    flips = rng.integers(0, max_flips + 1, n_copies)
    mask = np.zeros(n_copies, np.uint64)
    for step in range(max_flips):  # up to `flips` bits; a repeated position flips fewer: popcount is exact
        bit = np.left_shift(np.uint64(1), rng.integers(0, 64, n_copies).astype(np.uint64))
        mask |= np.where(step < flips, bit, np.uint64(0))
    codes[copy] = codes[orig] ^ mask
    dist = np.unpackbits(mask.view(np.uint8)).reshape(-1, 64).sum(axis=1).astype(np.int32)
    return codes, orig, copy, dist


# ------------------------------------------------------------------------------------------------------
# one self-join, in its own process


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _join_child(n: int, r: int, seed: int, max_flips: int, before: bool, out) -> None:
    from imgsim_fast.indexes.hamming import hamming_radius
    from imgsim_fast.indexes.mih import HammingIndex

    t0 = time.perf_counter()
    codes, orig, copy, pdist = synthetic_codes(n, seed, max_flips)
    t_gen = time.perf_counter() - t0
    rng = np.random.default_rng([seed, n, r])
    sample = np.sort(rng.choice(n, size=min(CHECK_SAMPLE, n), replace=False))
    index = HammingIndex(64)
    index.add(codes.reshape(-1, 1))
    # Planted pairs within r, as keys a * n + b (a < b).
    keep = pdist <= r
    pa, pb = np.minimum(orig[keep], copy[keep]), np.maximum(orig[keep], copy[keep])
    planted = np.unique(pa * n + pb)
    found_planted = 0
    pairs = 0
    near = []  # join pairs touching a sampled code
    w0, c0 = time.perf_counter(), time.process_time()
    for a, b, _ in index.self_join(r, chunk_size=1 << 20, threads=1):
        pairs += len(a)
        found_planted += int(np.count_nonzero(np.isin(a * n + b, planted, assume_unique=False)))
        touch = np.isin(a, sample) | np.isin(b, sample)
        if touch.any():
            near.append(np.stack([a[touch], b[touch]]))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rss_join = _peak_rss_bytes()
    # Brute force for the sample: every code within r of each sampled code, by the SIMD scan.
    lims, ids, _ = hamming_radius(codes[sample].reshape(-1, 1), codes.reshape(-1, 1), r)
    q = np.repeat(sample, np.diff(lims))
    ref = {(min(x, y), max(x, y)) for x, y in zip(q.tolist(), ids.tolist()) if x != y}
    got = set()
    if near:
        nb = np.concatenate(near, axis=1)
        got = set(zip(nb[0].tolist(), nb[1].tolist()))
    before_us = None
    if before:
        bq = codes[np.sort(rng.choice(n, size=min(BEFORE_SAMPLE, n), replace=False))].reshape(-1, 1)
        index.radius(bq[:1], r, threads=1)  # the tables are built outside the timing
        t = time.perf_counter()
        index.radius(bq, r, threads=1)
        before_us = (time.perf_counter() - t) / len(bq) * 1e6
    out.put(dict(n=n, r=r, seconds=wall, cpu_seconds=cpu, pairs=pairs, planted=int(len(planted)),
                 planted_found=found_planted, sample=int(len(sample)), sample_pairs=len(ref),
                 sample_equal=got == ref, sample_missing=len(ref - got), sample_extra=len(got - ref),
                 peak_rss_bytes=rss_join, gen_seconds=t_gen, before_us_per_query=before_us,
                 index_bytes=int(index.stats()["memory_bytes"])))


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    try:
        res = q.get()
    finally:
        p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"scale bench child exited with {p.exitcode}")
    return res


def _join_rows(sizes, seed: int, log) -> list[Row]:
    rows: list[Row] = []
    r_def = default_radius()
    results = {}
    for n in sizes:
        for r in sorted({r_def, SMALL_RADIUS}):
            if r == r_def and n > FULL_RADIUS_MAX_N and r > SMALL_RADIUS:
                continue
            res = _in_child(_join_child, n, r, seed, r, n <= FULL_RADIUS_MAX_N)
            results[(n, r)] = res
            log(f"scale: join n={n:,} r={r}: {res['seconds']:.1f}s wall, {res['cpu_seconds']:.1f}s cpu, "
                f"{res['pairs']:,} pairs, planted {res['planted_found']}/{res['planted']}, sample equal "
                f"{res['sample_equal']}, peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB")
            us = res["cpu_seconds"] / n * 1e6
            before = res["before_us_per_query"]
            rows.append(Row(
                SECTION, f"self-join n={n:.0e} r={r}", n / res["cpu_seconds"], "codes/s (cpu)",
                "row-by-row MIH probing (before)" if before else None,
                1e6 / before if before else None,
                dict(res, threads=1, us_per_code_cpu=us,
                     planted_recall=res["planted_found"] / max(1, res["planted"]),
                     bytes_per_code=res["index_bytes"] / n),
                note=f"{us:.2f} us/code cpu, {res['seconds']:.0f}s wall, {res['pairs']:,} pairs, planted recall "
                     f"{res['planted_found'] / max(1, res['planted']):.3f}, sample == brute force: "
                     f"{res['sample_equal']}, peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB"))
    # Growth: time ~ n^b between the two largest sizes run at each radius; projection to 10^8.
    for r in sorted({r_def, SMALL_RADIUS}):
        ns = sorted(n for (n, rr) in results if rr == r)
        if len(ns) < 2:
            continue
        n1, n2 = ns[-2], ns[-1]
        t1, t2 = results[(n1, r)]["cpu_seconds"], results[(n2, r)]["cpu_seconds"]
        b = float(np.log(t2 / t1) / np.log(n2 / n1)) if t1 > 0 and t2 > 0 else float("nan")
        params = dict(r=r, n1=n1, n2=n2, seconds1=t1, seconds2=t2, exponent=b)
        rows.append(Row(SECTION, f"self-join growth r={r}", b, "exponent b (time ~ n^b)", params=params,
                        note=f"cpu {t1:.1f}s at {n1:.0e} -> {t2:.1f}s at {n2:.0e}"))
        if n2 < 100_000_000:
            proj = t2 * (100_000_000 / n2) ** b
            rows.append(Row(SECTION, f"self-join r={r} projected to 1e8", proj, "seconds (cpu, projected)",
                            params=dict(params, projected_n=100_000_000),
                            note=f"{t2:.1f}s x (1e8 / {n2:.0e})^{b:.2f}, one thread"))
    return rows


# ------------------------------------------------------------------------------------------------------
# embeddings, in their own process


def synthetic_embeddings(n: int, seed: int, dim: int = EMBED_DIM, latent: int = 48, chunk: int = 1 << 17):
    """(n, dim) float32 unit vectors of low intrinsic dimension; 1% are near-copies of others."""
    rng = np.random.default_rng([seed, n, dim])
    basis = rng.standard_normal((latent, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = rng.standard_normal((e - s, latent)).astype(np.float32)
        x[s:e] = z @ basis + 0.5 * rng.standard_normal((e - s, dim)).astype(np.float32)
    k = n // 100
    if k:
        src, dst = _distinct(rng, n, 2 * k).reshape(2, k)
        x[dst] = x[src] + 0.05 * rng.standard_normal((k, dim)).astype(np.float32) * np.linalg.norm(x[src], axis=1,
                                                                                                   keepdims=True) / dim ** 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _exact_topk(q: np.ndarray, x: np.ndarray, k: int, block: int = 1 << 16) -> np.ndarray:
    """Ids of the k largest inner products per query, over x in blocks (memory stays O(nq * block))."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for s in range(0, len(x), block):
        sims = q @ x[s:s + block].astype(np.float32, copy=False).T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
        ci = np.concatenate([best_i, part + s], axis=1)
        top = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, top, axis=1), np.take_along_axis(ci, top, axis=1)
    return best_i


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def _ladder(search, truth, queries) -> list[tuple[int, float, float]]:
    """(ef, recall@k, queries/s) along EF_LADDER, stopping one step after recall 0.99."""
    out = []
    for ef in EF_LADDER:
        search(queries[:8], ef)  # warm the caches
        t = time.perf_counter()
        ids = search(queries, ef)
        qps = len(queries) / (time.perf_counter() - t)
        out.append((ef, _recall(ids, truth), qps))
        if out[-1][1] >= 0.99:
            break
    return out


def _at_target(ladder) -> tuple[int, float, float] | None:
    return next((x for x in ladder if x[1] >= RECALL_TARGET), None)


def _embed_child(n: int, seed: int, nq: int, out) -> None:
    from imgsim_fast.indexes.vectors import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, VectorIndex

    k = 10
    res = dict(n=n, dim=EMBED_DIM, queries=nq, k=k, recall_target=RECALL_TARGET)
    x = synthetic_embeddings(n, seed)
    rng = np.random.default_rng([seed, n, 1])
    q = x[rng.choice(n, nq, replace=False)] + 0.02 * rng.standard_normal((nq, EMBED_DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = _exact_topk(q, x, k)
    x16 = x.astype(np.float16)
    res["recall_fp16_full"] = _recall(_exact_topk(q, x16, k), truth)
    sample = x[rng.choice(n, min(n, 50_000), replace=False)]
    mu = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mu, full_matrices=False)
    compact = {}
    for dd in PCA_DIMS:
        p = vt[:dd].T.copy()
        y = np.empty((n, dd), np.float16)
        for s in range(0, n, 1 << 17):
            z = (x[s:s + (1 << 17)] - mu) @ p
            y[s:s + (1 << 17)] = z / np.linalg.norm(z, axis=1, keepdims=True)
        yq = (q - mu) @ p
        yq /= np.linalg.norm(yq, axis=1, keepdims=True)
        compact[dd] = (y, yq.astype(np.float32))
        res[f"recall_pca{dd}_fp16"] = _recall(_exact_topk(compact[dd][1], y, k), truth)
    del x, x16
    dd = PCA_DIMS[0]
    y16, yq = compact[dd]
    y = y16.astype(np.float32)
    del compact
    same = _exact_topk(yq, y, k)  # exact on the compact vectors: the reference for the index itself
    t = time.perf_counter()
    ours = VectorIndex(dd, threads=2, exact_threshold=0)
    ours.add(y, np.arange(n, dtype=np.int64))
    res["ours_build_seconds"] = time.perf_counter() - t
    ours.threads = 1

    def ours_search(qq, ef):
        ours.ef = ef
        return ours.knn(qq, k)[0]

    lad = _ladder(ours_search, same, yq)
    res["ours_ladder"] = lad
    res["ours_recall_vs_fp32_full"] = _recall(ours_search(yq, _at_target(lad)[0] if _at_target(lad) else
                                                          EF_LADDER[-1]), truth)
    res["bytes_per_vector_stored_fp16"] = 2 * dd
    res["bytes_per_vector_hnswlib"] = 4 * dd + 2 * DEFAULT_M * 4 + 4 + 8
    rss_ours = _peak_rss_bytes()
    del ours
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        fi = faiss.IndexHNSWFlat(dd, DEFAULT_M, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION
        fi.add(y)
        res["faiss_build_seconds"] = time.perf_counter() - t
        faiss.omp_set_num_threads(1)

        def faiss_search(qq, ef):
            fi.hnsw.efSearch = ef
            return fi.search(qq, k)[1]

        res["faiss_ladder"] = _ladder(faiss_search, same, yq)
        res["faiss_version"] = faiss.__version__
    res["peak_rss_bytes"] = max(rss_ours, _peak_rss_bytes())
    out.put(res)


def _embed_rows(sizes, seed: int, log, nq: int = 1000) -> list[Row]:
    rows: list[Row] = []
    for n in sizes:
        res = _in_child(_embed_child, n, seed, min(nq, n))
        log(f"scale: embeddings n={n:,}: {res}")
        base = {k: v for k, v in res.items() if not k.endswith("ladder")}
        for name in ["fp16_full"] + [f"pca{d}_fp16" for d in PCA_DIMS]:
            rows.append(Row(SECTION, f"embedding recall@10 {name} n={n:.0e}", res[f"recall_{name}"],
                            "recall vs fp32 exact", params=base,
                            note="exact search on the compact vectors against exact on fp32 full-d"))
        ours = _at_target(res["ours_ladder"])
        peer = _at_target(res.get("faiss_ladder", [])) if "faiss_ladder" in res else None
        params = dict(base, ours_ladder=res["ours_ladder"], faiss_ladder=res.get("faiss_ladder"))
        if ours:
            rows.append(Row(
                SECTION, f"HNSW pca{PCA_DIMS[0]} n={n:.0e} at recall>={RECALL_TARGET}", ours[2], "queries/s (1 thread)",
                "faiss.IndexHNSWFlat" if peer else None, peer[2] if peer else None, params,
                note=f"ours ef={ours[0]} recall {ours[1]:.3f}, built {res['ours_build_seconds']:.0f}s"
                     + (f"; faiss ef={peer[0]} recall {peer[1]:.3f}, built {res['faiss_build_seconds']:.0f}s"
                        if peer else "; faiss not installed" if "faiss_ladder" not in res else
                        "; faiss did not reach the target")))
    return rows


def run(sizes=DEFAULT_SIZES, embed_sizes=DEFAULT_EMBED_SIZES, seed: int = 0, log=print) -> list[Row]:
    """The join rows for each size in `sizes`, then the embedding rows for each of `embed_sizes`."""
    rows = _join_rows(sizes, seed, log)
    if embed_sizes:
        rows += _embed_rows(embed_sizes, seed, log)
    return rows
