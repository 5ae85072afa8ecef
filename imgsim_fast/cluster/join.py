"""The distributed exact Hamming join: every pair of 64-bit pHash codes within r bits, by the pigeonhole
principle, on Ray tasks with hash partitioning.

Cut a code into r + 1 disjoint substrings: two codes within r bits differ in at most r of them, so they
agree exactly on at least one (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing",
2012, section 3; the exact-match special case). Map tasks emit one record per (code, substring) keyed by
(substring index, substring value) and hash-partition the records; a reduce task sorts its partition into
buckets of equal keys and verifies the full distance inside each bucket with the project's SIMD kernels
(hamming_matrix for small buckets, HammingIndex.self_join / radius, i.e. multi-index hashing, for large
ones). A pair is kept only in the bucket of the FIRST substring on which it agrees, so each pair leaves
the reduce side exactly once and no separate de-duplication pass is needed.

Flips and rotations (dedup's `dihedral` rule, detect.hash_pairs) are a second scheme with its own r + 1
substrings: identity codes meet the 7 transformed codes of every file, and only identity x transformed
pairs are verified. Exact copies (equal BLAKE2b digests) are a third: the digest's first 64 bits are the
key, the rest is compared in the bucket, and each copy pairs with the first row of its digest, as
detect.candidate_pairs does.

Records are 25 bytes (tag, key, id, code); the shuffle moves (radius + 1) + 8 x (dihedral + 1) records per
file with flips, radius + 1 without.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["JoinSpec", "JoinStats", "RECORD", "substrings", "records", "join", "verify_partition"]

RECORD = np.dtype([("tag", np.uint8), ("key", np.uint64), ("id", np.int64), ("code", np.uint64)])
_IDENT, _DIHEDRAL, _DIGEST = 0, 1, 2
# Buckets up to this many codes are verified by the all-pairs SIMD scan (hamming_matrix, k^2 distances:
# 4 M at 2,048, a few ms); larger ones by multi-index hashing, whose memory stays linear in the bucket.
SCAN_MAX = 2048


def substrings(r: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of r + 1 disjoint substrings covering `bits`, widths differing by at most one."""
    m = r + 1
    if not 1 <= m <= bits:
        raise ValueError(f"radius must be in 0..{bits - 1}, got {r}")
    w, extra = divmod(bits, m)
    out, shift = [], 0
    for s in range(m):
        width = w + (s < extra)
        out.append((shift, width))
        shift += width
    return out


@dataclass(frozen=True)
class JoinSpec:
    """radius: identity pairs within this many bits (None: none); dihedral: identity x flipped/rotated within
    this many (None: flips off); digests: exact-copy pairs too. partitions: reduce tasks."""

    radius: int | None
    dihedral: int | None = None
    digests: bool = False
    partitions: int = 8

    def layout(self, tag: int) -> list[tuple[int, int]]:
        return substrings(self.radius if tag == _IDENT else self.dihedral)


@dataclass
class JoinStats:
    files: int = 0
    records: int = 0
    shuffle_bytes: int = 0
    pairs: int = 0               # distinct pairs out
    verified: int = 0            # distances computed in buckets (SIMD scan) or candidates checked (MIH)
    largest_bucket: int = 0
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _keyed(tag: int, codes: np.ndarray, ids: np.ndarray, layout) -> list[np.ndarray]:
    out = []
    for s, (shift, width) in enumerate(layout):
        rec = np.empty(len(codes), RECORD)
        rec["tag"] = tag
        v = (codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        if width > 32:  # radius 0: one 64-bit "substring", folded into the key's 32 value bits
            v = (v ^ (v >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
        rec["key"] = (np.uint64(s) << np.uint64(32)) | v
        rec["id"] = ids
        rec["code"] = codes
        out.append(rec)
    return out


def records(rows: np.ndarray, phash8: np.ndarray | None, digests: list[str] | None, spec: JoinSpec) -> np.ndarray:
    """The map side's records for files `rows` with codes phash8 (n, 8) uint64 (variant 0 the identity)."""
    parts = []
    rows = np.asarray(rows, np.int64)
    if phash8 is not None and spec.radius is not None:
        parts += _keyed(_IDENT, phash8[:, 0].copy(), rows, spec.layout(_IDENT))
    if phash8 is not None and spec.dihedral is not None:
        ids = (rows[:, None] * 8 + np.arange(8)).ravel()
        parts += _keyed(_DIHEDRAL, phash8.ravel().copy(), ids, spec.layout(_DIHEDRAL))
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


def _first_agreement_is(x: np.ndarray, s: int, layout) -> np.ndarray:
    """For XORs x of pairs met in a bucket of substring s: True where substring s is all zero (a folded key
    can bring others together) and no earlier one is."""
    shift, width = layout[s]
    keep = (x & np.uint64(((1 << width) - 1) << shift)) == 0
    for shift, width in layout[:s]:
        keep &= (x & np.uint64(((1 << width) - 1) << shift)) != 0
    return keep


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


def verify_partition(spec: JoinSpec, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
    """The reduce side: (i, j) with i < j, distinct, of one partition's records, and counters."""
    rec = np.concatenate(parts) if parts else np.empty(0, RECORD)
    out_i, out_j = [], []
    stats = {"verified": 0, "largest_bucket": 0}
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
            tag, s = int(bucket["tag"][0]), int(bucket["key"][0] >> np.uint64(32))
            layout = spec.layout(tag)
            if tag == _IDENT:
                codes, ids = bucket["code"], bucket["id"]
                x, y, n = _within(codes, None, spec.radius,
                                  lambda x, y: _first_agreement_is(codes[x] ^ codes[y], s, layout))
                fx, fy = ids[x], ids[y]
            else:
                left = bucket[bucket["id"] % 8 == 0]
                right = bucket[bucket["id"] % 8 != 0]
                if not len(left) or not len(right):
                    continue
                lc, rc, lf, rf = left["code"], right["code"], left["id"] // 8, right["id"] // 8
                x, y, n = _within(lc, rc, spec.dihedral,
                                  lambda x, y: (lf[x] != rf[y]) & _first_agreement_is(lc[x] ^ rc[y], s, layout))
                fx, fy = lf[x], rf[y]
            stats["verified"] += n
            out_i.append(np.minimum(fx, fy))
            out_j.append(np.maximum(fx, fy))
    i = np.concatenate(out_i).astype(np.int64)
    j = np.concatenate(out_j).astype(np.int64)
    if len(i):  # flips meet one pair of files through several variants: once per partition here
        key = np.unique((i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64))
        i, j = (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return i, j, stats


# ------------------------------------------------------------------------------------------------
# On Ray


def _map_task(load, arg, spec: JoinSpec, only):
    rows, phash8, digests = load(arg)
    rec = records(rows, phash8, digests, spec)
    parts = split(rec, spec.partitions)
    return (*(parts if only is None else [parts[p] for p in only]),
            {"files": len(rows), "records": len(rec), "bytes": int(rec.nbytes)})


def _reduce_task(spec: JoinSpec, collect: bool, *parts):
    t0 = time.process_time()  # CPU time: on shared cores wall time would count other jobs' share
    i, j, stats = verify_partition(spec, list(parts))
    stats["pairs"] = len(i)
    stats["records"] = sum(len(p) for p in parts)
    stats["seconds"] = time.process_time() - t0
    return (i, j, stats) if collect else (None, None, stats)


def join(inputs: list[tuple], spec: JoinSpec, *, collect: bool = True, ray=None,
         only_partitions: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, JoinStats]:
    """All pairs of files within the spec's distances: (i, j) sorted by (i, j), i < j, each once, and stats.

    inputs: (load, arg) per map task; load(arg) -> (rows, phash8 (n, 8) uint64 or None, digests or None),
    run on the workers, so no code passes through the driver. Rows must be below 2^32. collect=False
    leaves the pairs on the workers and counts them (the benchmark). Tasks killed with their worker are
    run again by Ray (max_retries), and map outputs lost with a node are rebuilt from lineage.
    only_partitions: reduce these partitions only (the benchmark's sample of a join too large to finish
    here); the map side still keys every record, and stats count all of them.
    """
    if ray is None:
        import ray
    t0 = time.perf_counter()
    P = spec.partitions if only_partitions is None else len(only_partitions)
    mapper = ray.remote(num_cpus=1, max_retries=4)(_map_task).options(num_returns=P + 1)
    reducer = ray.remote(num_cpus=1, max_retries=4)(_reduce_task).options(num_returns=3)
    maps = [mapper.remote(load, arg, spec, only_partitions) for load, arg in inputs]
    reds = [reducer.remote(spec, collect, *[m[p] for m in maps]) for p in range(P)]
    st = JoinStats()
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
