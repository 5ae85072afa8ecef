"""The distributed exact Hamming join: every pair of 64-bit pHash codes within r bits, by the pigeonhole
principle, on Ray tasks with hash partitioning.

Cut a code into r + 1 disjoint substrings: two codes within r bits differ in at most r of them, so they
agree exactly on at least one (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing",
2012, section 3; the exact-match special case). Map tasks emit one record per (code, substring) keyed by
the bucket (substring, value) and hash-partition the records; a reduce task sorts its partition into
buckets of equal keys and verifies the full distance inside each bucket with the project's SIMD kernels
(hamming_matrix for small buckets, HammingIndex.self_join / radius, i.e. multi-index hashing, for large
ones). Which bits form each substring, and which buckets are too large and cut again by the same
pigeonhole over their remaining bits, is the bucket plan (bucket_plan.py), made from a sample of the codes
when the spec bounds the bucket size. A pair is kept only in its canonical bucket (the FIRST substring it
agrees on, at every level), so each pair leaves the reduce side exactly once.

Flips and rotations (dedup's `dihedral` rule, detect.hash_pairs) are a second scheme with its own r + 1
substrings: identity codes meet the 7 transformed codes of every file, and only identity x transformed
pairs are verified. Exact copies (equal BLAKE2b digests) are a third: the digest's first 64 bits are the
key, the rest is compared in the bucket, and each copy pairs with the first row of its digest, as
detect.candidate_pairs does.

Records are 25 bytes (tag, key, id, code); the shuffle moves (radius + 1) + 8 x (dihedral + 1) records per
file with flips, radius + 1 without, plus r records for each (code, bucket) that the plan cuts again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.cluster.bucket_plan import BucketPlan, plan_buckets

__all__ = ["JoinSpec", "JoinStats", "RECORD", "default_plans", "make_plans", "records", "join", "verify_partition"]

RECORD = np.dtype([("tag", np.uint8), ("key", np.uint64), ("id", np.int64), ("code", np.uint64)])
_IDENT, _DIHEDRAL, _DIGEST = 0, 1, 2
# Buckets up to this many codes are verified by the all-pairs SIMD scan (hamming_matrix, k^2 distances:
# 4 M at 2,048, a few ms); larger ones by multi-index hashing, whose memory stays linear in the bucket.
SCAN_MAX = 2048


@dataclass(frozen=True)
class JoinSpec:
    """radius: identity pairs within this many bits (None: none); dihedral: identity x flipped/rotated within
    this many (None: flips off); digests: exact-copy pairs too. partitions: reduce tasks (at least).
    max_bucket: codes a bucket may hold before it is cut again (bucket_plan.py; None: never cut, no
    sampling pass), and the unit of a reduce task's size: join() makes enough partitions for about
    4 x max_bucket records each. 2^20 codes: a bucket's multi-index verification then needs ~40 MB."""

    radius: int | None
    dihedral: int | None = None
    digests: bool = False
    partitions: int = 8
    max_bucket: int | None = 1 << 20


def default_plans(spec: JoinSpec) -> dict:
    """Bucket plans without statistics: bits dealt in index order, no bucket cut."""
    return {tag: BucketPlan(r) for tag, r in ((_IDENT, spec.radius), (_DIHEDRAL, spec.dihedral)) if r is not None}


@dataclass
class JoinStats:
    files: int = 0
    records: int = 0
    shuffle_bytes: int = 0
    pairs: int = 0               # distinct pairs out
    verified: int = 0            # distances computed in buckets (SIMD scan) or candidates checked (MIH)
    largest_bucket: int = 0
    largest_task_records: int = 0
    partitions: int = 0
    cut_buckets: int = 0         # buckets the plan cut again
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _keyed(tag: int, codes: np.ndarray, ids: np.ndarray, plan: BucketPlan) -> list[np.ndarray]:
    out = []
    for keys, kid, kcodes in plan.keyed(codes, ids):
        rec = np.empty(len(keys), RECORD)
        rec["tag"], rec["key"], rec["id"], rec["code"] = tag, keys, kid, kcodes
        out.append(rec)
    return out


def records(rows: np.ndarray, phash8: np.ndarray | None, digests: list[str] | None, spec: JoinSpec,
            plans: dict | None = None) -> np.ndarray:
    """The map side's records for files `rows` with codes phash8 (n, 8) uint64 (variant 0 the identity)."""
    plans = plans or default_plans(spec)
    parts = []
    rows = np.asarray(rows, np.int64)
    if phash8 is not None and spec.radius is not None:
        parts += _keyed(_IDENT, phash8[:, 0].copy(), rows, plans[_IDENT])
    if phash8 is not None and spec.dihedral is not None:
        ids = (rows[:, None] * 8 + np.arange(8)).ravel()
        parts += _keyed(_DIHEDRAL, phash8.ravel().copy(), ids, plans[_DIHEDRAL])
    if spec.digests and digests is not None and len(digests):
        d = np.array([(int(x[:16], 16), int(x[16:32], 16)) for x in digests], np.uint64).reshape(-1, 2)
        rec = np.empty(len(d), RECORD)
        rec["tag"], rec["key"], rec["id"], rec["code"] = _DIGEST, d[:, 0], rows, d[:, 1]
        parts.append(rec)
    return np.concatenate(parts) if parts else np.empty(0, RECORD)


def _partition_of(rec: np.ndarray, partitions: int) -> np.ndarray:
    """SplitMix64 of (tag, key), modulo the partitions: sequential substring values spread evenly."""
    with np.errstate(over="ignore"):
        z = rec["key"] ^ (rec["tag"].astype(np.uint64) << np.uint64(61))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(partitions)).astype(np.int64)


def split(rec: np.ndarray, partitions: int) -> list[np.ndarray]:
    p = _partition_of(rec, partitions)
    order = np.argsort(p, kind="stable")
    bounds = np.searchsorted(p[order], np.arange(partitions + 1))
    rec = rec[order]
    return [rec[bounds[k]:bounds[k + 1]] for k in range(partitions)]


def _within(a_codes: np.ndarray, b_codes: np.ndarray | None, r: int, keep) -> tuple[np.ndarray, np.ndarray, int]:
    """Index pairs (a, b) with distance <= r that keep(a, b) accepts: a < b within one set (b_codes None),
    else a x b; and how many distances or candidates were checked. keep runs on each chunk of hits, so a
    large bucket never holds the pairs it will drop (most of them: a near pair agrees on most substrings,
    and only the first keeps it)."""
    from imgsim_fast.indexes.hamming import hamming_matrix
    from imgsim_fast.indexes.mih import HammingIndex

    def kept(a, b):
        k = keep(a, b)
        return a[k], b[k]

    ka = len(a_codes)
    if b_codes is None:
        if ka <= SCAN_MAX:
            d = hamming_matrix(a_codes.reshape(-1, 1), a_codes.reshape(-1, 1), threads=1)
            return (*kept(*np.nonzero(np.triu(d <= r, 1))), ka * (ka - 1) // 2)
        ix = HammingIndex(64)
        ix.add(a_codes.reshape(-1, 1), np.arange(ka, dtype=np.int64))
        got, n = [], 0
        for x, y, _ in ix.self_join(r, threads=1):
            n += len(x)
            got.append(kept(x, y))
    else:
        kb = len(b_codes)
        if ka * kb <= SCAN_MAX * SCAN_MAX:
            d = hamming_matrix(a_codes.reshape(-1, 1), b_codes.reshape(-1, 1), threads=1)
            return (*kept(*np.nonzero(d <= r)), ka * kb)
        ix = HammingIndex(64)
        ix.add(b_codes.reshape(-1, 1), np.arange(kb, dtype=np.int64))
        got, n = [], 0
        for s in range(0, ka, 1 << 16):  # queries in blocks: the hits of one block at a time
            lims, ids, _ = ix.radius(a_codes[s:s + (1 << 16)].reshape(-1, 1), r, threads=1)
            n += len(ids)
            got.append(kept(s + np.repeat(np.arange(len(lims) - 1), np.diff(lims)), ids))
    if not got:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), n
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), n


def _digest_pairs(rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each exact copy paired with the first row of its digest (the star of detect.candidate_pairs)."""
    if not len(rec):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rec = rec[np.lexsort((rec["id"], rec["code"], rec["key"]))]
    new = np.ones(len(rec), bool)
    new[1:] = (rec["key"][1:] != rec["key"][:-1]) | (rec["code"][1:] != rec["code"][:-1])
    first = rec["id"][np.flatnonzero(new)[np.cumsum(new) - 1]]
    keep = ~new
    return first[keep], rec["id"][keep]


def verify_partition(spec: JoinSpec, parts: list[np.ndarray], plans: dict | None = None,
                     collect: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """The reduce side: (i, j) with i < j, distinct, of one partition's records, and counters. collect=False
    counts identity pairs without holding them (each leaves its canonical bucket once; flipped pairs, which
    several variants can meet, are still held to be counted once)."""
    plans = plans or default_plans(spec)
    rec = np.concatenate(parts) if parts else np.empty(0, RECORD)
    del parts
    out_i, out_j = [], []
    stats = {"verified": 0, "largest_bucket": 0, "counted": 0}
    dig = rec[rec["tag"] == _DIGEST]
    a, b = _digest_pairs(dig)
    out_i.append(a)
    out_j.append(b)
    rec = rec[rec["tag"] != _DIGEST]
    rec = rec[np.lexsort((rec["id"], rec["key"], rec["tag"]))]
    if len(rec):
        change = np.flatnonzero((rec["key"][1:] != rec["key"][:-1]) | (rec["tag"][1:] != rec["tag"][:-1])) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(rec)]])
        big = np.flatnonzero(ends - starts >= 2)
        stats["largest_bucket"] = int((ends - starts).max())
        for k in big:
            bucket = rec[starts[k]:ends[k]]
            tag = int(bucket["tag"][0])
            plan = plans[tag]
            path = plan.path_of(int(bucket["key"][0]), int(bucket["code"][0]))
            if path is None:
                raise RuntimeError("a bucket key matches no path of the join's plan (map and reduce sides disagree)")
            if tag == _IDENT:
                codes, ids = bucket["code"], bucket["id"]
                x, y, n = _within(codes, None, spec.radius, lambda x, y: plan.canonical(codes[x] ^ codes[y], path))
                fx, fy = ids[x], ids[y]
            else:
                left = bucket[bucket["id"] % 8 == 0]
                right = bucket[bucket["id"] % 8 != 0]
                if not len(left) or not len(right):
                    continue
                lc, rc, lf, rf = left["code"], right["code"], left["id"] // 8, right["id"] // 8
                x, y, n = _within(lc, rc, spec.dihedral,
                                  lambda x, y: (lf[x] != rf[y]) & plan.canonical(lc[x] ^ rc[y], path))
                fx, fy = lf[x], rf[y]
            stats["verified"] += n
            if collect or spec.dihedral is not None or spec.digests:
                out_i.append(np.minimum(fx, fy))
                out_j.append(np.maximum(fx, fy))
            else:
                stats["counted"] += len(fx)
    i = np.concatenate(out_i).astype(np.int64)
    j = np.concatenate(out_j).astype(np.int64)
    if len(i):  # flips meet one pair of files through several variants: once per partition here
        key = np.unique((i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64))
        i, j = (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return i, j, stats


# ------------------------------------------------------------------------------------------------
# On Ray


def _sample_task(load, arg, spec: JoinSpec, per_input: int, seed: int):
    """A uniform sample of one input's codes for the plan: (files, identity codes, all-variant codes)."""
    rows, phash8, _ = load(arg)
    empty = np.zeros(0, np.uint64)
    if phash8 is None or not len(rows):
        return len(rows), empty, empty
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(len(rows), per_input), replace=False))
    return (len(rows), phash8[pick, 0].copy() if spec.radius is not None else empty,
            phash8[pick].ravel() if spec.dihedral is not None else empty)


def make_plans(spec: JoinSpec, files: int, ident: np.ndarray, variants: np.ndarray) -> dict:
    """Bucket plans for `files` files from samples of their identity and all-variant codes."""
    plans = {}
    if spec.radius is not None:
        plans[_IDENT] = plan_buckets(ident, files, spec.radius, spec.max_bucket)
    if spec.dihedral is not None:
        plans[_DIHEDRAL] = plan_buckets(variants, 8 * files, spec.dihedral, spec.max_bucket)
    return plans


def _plan(ray, inputs, spec: JoinSpec, sample: int, sample_inputs: int) -> tuple[dict, float]:
    """Plans from a sample of `sample` codes over up to `sample_inputs` inputs spread through the list, and
    the expected records per file (for the partition count)."""
    picked = sorted({int(k) for k in np.linspace(0, len(inputs) - 1, min(sample_inputs, len(inputs)))})
    task = ray.remote(num_cpus=1, max_retries=4)(_sample_task)
    got = ray.get([task.remote(*inputs[k], spec, max(1, sample // len(picked)), k) for k in picked])
    files = int(np.mean([g[0] for g in got]) * len(inputs)) if got else 0
    ident = np.concatenate([g[1] for g in got]) if got else np.zeros(0, np.uint64)
    variants = np.concatenate([g[2] for g in got]) if got else np.zeros(0, np.uint64)
    plans = make_plans(spec, files, ident, variants)
    per_file = 0.0
    if len(ident):
        per_file += plans[_IDENT].records_per_code(ident[::max(1, len(ident) >> 16)])
    if len(variants):
        per_file += 8 * plans[_DIHEDRAL].records_per_code(variants[::max(1, len(variants) >> 16)])
    return plans, files * (per_file + spec.digests)


def _map_task(load, arg, spec: JoinSpec, plans: dict, partitions: int, only):
    rows, phash8, digests = load(arg)
    rec = records(rows, phash8, digests, spec, plans)
    parts = split(rec, partitions)
    return (*(parts if only is None else [parts[p] for p in only]),
            {"files": len(rows), "records": len(rec), "bytes": int(rec.nbytes)})


def _reduce_task(spec: JoinSpec, plans: dict, collect: bool, *parts):
    t0 = time.process_time()  # CPU time: on shared cores wall time would count other jobs' share
    records_in = sum(len(p) for p in parts)
    i, j, stats = verify_partition(spec, list(parts), plans, collect)
    stats["pairs"] = len(i) + stats.pop("counted")
    stats["records"] = records_in
    stats["seconds"] = time.process_time() - t0
    return (i, j, stats) if collect else (None, None, stats)


def join(inputs: list[tuple], spec: JoinSpec, *, collect: bool = True, ray=None,
         only_partitions: list[int] | None = None, plan_sample: int = 1 << 21,
         plan_inputs: int = 16) -> tuple[np.ndarray, np.ndarray, JoinStats]:
    """All pairs of files within the spec's distances: (i, j) sorted by (i, j), i < j, each once, and stats.

    inputs: (load, arg) per map task; load(arg) -> (rows, phash8 (n, 8) uint64 or None, digests or None),
    run on the workers, so no code passes through the driver. Rows must be below 2^32. collect=False
    leaves the pairs on the workers and counts them (the benchmark). Tasks killed with their worker are
    run again by Ray (max_retries), and map outputs lost with a node are rebuilt from lineage.

    With spec.max_bucket, a first pass samples plan_sample codes from up to plan_inputs inputs (spread
    through the list) for the bucket plan (bit statistics, buckets to cut), and the reduce side gets enough
    partitions for about 4 x max_bucket records each. A reduce task then holds its partition's records (25
    bytes each, about 3 copies while sorting) and the verification of one bucket of about max_bucket codes;
    the bound is as good as the sample's estimate of the largest buckets (stats report the largest met).
    only_partitions: reduce these partitions only (a sample of a join too large to finish); the map side still
    keys every record, and stats count all of them.
    """
    if ray is None:
        import ray
    t0 = time.perf_counter()
    st = JoinStats()
    partitions = spec.partitions
    plans = default_plans(spec)
    if spec.max_bucket and inputs:
        plans, expected = _plan(ray, inputs, spec, plan_sample, plan_inputs)
        partitions = max(partitions, -(-int(expected) // (4 * spec.max_bucket)))
        st.cut_buckets = sum(len(p.heavy) for p in plans.values())
        st.seconds["plan"] = time.perf_counter() - t0
    st.partitions = partitions
    plans_ref = ray.put(plans)
    P = partitions if only_partitions is None else len(only_partitions)
    mapper = ray.remote(num_cpus=1, max_retries=4)(_map_task).options(num_returns=P + 1)
    reducer = ray.remote(num_cpus=1, max_retries=4)(_reduce_task).options(num_returns=3)
    maps = [mapper.remote(load, arg, spec, plans_ref, partitions, only_partitions) for load, arg in inputs]
    reds = [reducer.remote(spec, plans_ref, collect, *[m[p] for m in maps]) for p in range(P)]
    for m in ray.get([m[P] for m in maps]):
        st.files += m["files"]
        st.records += m["records"]
        st.shuffle_bytes += m["bytes"]
    st.seconds["map"] = time.perf_counter() - t0
    st.seconds["reduce_tasks"] = []  # (records, seconds) per reduce task
    out_i, out_j = [], []
    for i_ref, j_ref, s_ref in reds:
        s = ray.get(s_ref)
        st.verified += s["verified"]
        st.largest_bucket = max(st.largest_bucket, s["largest_bucket"])
        st.largest_task_records = max(st.largest_task_records, s["records"])
        st.pairs += s["pairs"]
        st.seconds["reduce_tasks"].append((s["records"], s["seconds"]))
        if collect:
            out_i.append(ray.get(i_ref))
            out_j.append(ray.get(j_ref))
    i = np.concatenate(out_i) if out_i else np.zeros(0, np.int64)
    j = np.concatenate(out_j) if out_j else np.zeros(0, np.int64)
    if collect and len(i):  # a flipped pair can be met in two partitions (through each file's variants)
        key = np.unique((i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64))
        i, j = (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
        st.pairs = len(i)
    st.seconds["join"] = time.perf_counter() - t0
    return i, j, st
