"""The distributed pigeonhole join (imgsim_fast.cluster.join) through Ray on this machine (issue 14).

Synthetic pHash-like 64-bit codes with planted groups (index_bench.clustered_codes' model: per-bit
probabilities 0.2-0.8, groups of ~10 codes within 8 random flips of their centre) are generated inside
the map tasks, chunk by chunk, so no code passes through the driver. Reported per size: wall time,
peak memory of the whole Ray session (driver, raylet, workers and object store: the sum of their PSS,
sampled every second), shuffle bytes per image (the records the map side emits), pairs and largest
bucket, with buckets bounded by MAX_BUCKET (bucket_plan.py). At 10^6 the pair count is checked against the
single-machine HammingIndex.self_join, whose time is the peer; the large joins (10^8) collect their pairs
and check them: recall of the planted groups' pairs within r, and brute force for a sample of rows.

    python -m imgsim_fast.bench cluster                                   # every row
    python -m imgsim_fast.bench.cluster_bench --large 1e8:4 --out bench/results/cluster.json   # one row, merged
"""
from __future__ import annotations

import glob
import threading
import time

import numpy as np

from imgsim_fast.bench.report import Row

SECTION = "cluster"
CHUNK = 1_000_000


def _chunk(seed: int, c: int, size: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Identity codes of chunk c and the planted group (centre) of each; the generator, for the variants."""
    p = np.random.default_rng(seed).uniform(0.2, 0.8, 64)
    rng = np.random.default_rng([seed, c])
    centres = np.zeros(max(1, size // 10), np.uint64)
    for b in range(64):
        centres |= (rng.random(len(centres)) < p[b]).astype(np.uint64) << np.uint64(b)
    group = rng.integers(0, len(centres), size)
    codes = centres[group]
    flips = rng.integers(0, 9, size)
    for f in range(8):
        sel = np.flatnonzero(flips > f)
        codes[sel] ^= np.uint64(1) << rng.integers(0, 64, len(sel)).astype(np.uint64)
    return codes, group, rng


def synthetic_chunk(arg):
    """Join input: chunk `c` of `n` pHash-like codes (rows c*CHUNK ...), planted groups inside the chunk.
    Bit probabilities come from the seed alone, so every chunk draws from one distribution."""
    seed, c, size = arg
    codes, _, rng = _chunk(seed, c, size)
    ph = np.empty((size, 8), np.uint64)
    ph[:, 0] = codes
    # Flipped/rotated codes of a pHash are other 64-bit codes of the same picture: random stand-ins here.
    ph[:, 1:] = rng.integers(0, 2**64, (size, 7), dtype=np.uint64)
    return np.arange(c * CHUNK, c * CHUNK + size, dtype=np.int64), ph, None


def planted_pairs(seed: int, c: int, size: int, radius: int) -> np.ndarray:
    """Row pairs (i < j) of chunk c planted in one group and within `radius` bits: what the join must find."""
    codes, group, _ = _chunk(seed, c, size)
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    a, b = [], []
    for k in range(1, int((ends - starts).max(initial=1))):  # pairs (t, t + k) inside every group
        t = np.concatenate([np.arange(s, e - k) for s, e in zip(starts, ends) if e - s > k])
        a.append(order[t])
        b.append(order[t + k])
    a, b = np.concatenate(a), np.concatenate(b)
    near = np.bitwise_count(codes[a] ^ codes[b]) <= radius
    i, j = np.minimum(a, b)[near] + c * CHUNK, np.maximum(a, b)[near] + c * CHUNK
    return np.stack([i, j], 1)


class SessionMemory:
    """Peak of the summed PSS (proportional set size: shared object-store pages counted once) of this process
    and every Ray process on the machine, sampled every `every` seconds in a thread."""

    def __init__(self, every: float = 1.0):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @staticmethod
    def _pids() -> list[int]:
        import os

        me, out = os.getpid(), []
        for d in glob.glob("/proc/[0-9]*"):
            try:
                with open(f"{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if cmd.startswith(b"ray::") or b"/ray/" in cmd or int(d[6:]) == me:
                out.append(int(d[6:]))
        return out

    def _run(self):
        while not self._stop.is_set():
            total = 0
            for pid in self._pids():
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
                except (OSError, StopIteration, ValueError):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)


def run_one(n: int, radius: int, dihedral: int | None, partitions: int, seed: int = 0,
            max_bucket: int | None = None, collect: bool = False) -> tuple[dict, np.ndarray | None]:
    """One join of n synthetic codes on the Ray this process is connected to: its measurements, and the
    pairs (n, 2) when collect."""
    import ray

    from imgsim_fast.cluster.join import JoinSpec, join

    inputs = [(synthetic_chunk, (seed, c, min(CHUNK, n - c * CHUNK))) for c in range(-(-n // CHUNK))]
    spec = JoinSpec(radius, dihedral, partitions=partitions, max_bucket=max_bucket)
    with SessionMemory() as mem:
        t0 = time.perf_counter()
        i, j, st = join(inputs, spec, collect=collect, ray=ray)
        wall = time.perf_counter() - t0
    tasks = st.seconds["reduce_tasks"]
    return {"n": n, "radius": radius, "dihedral": dihedral, "partitions": st.partitions, "max_bucket": max_bucket,
            "seconds": wall, "plan_seconds": st.seconds.get("plan", 0.0), "map_seconds": st.seconds["map"],
            "reduce_cpu_seconds": sum(t for _, t in tasks), "slowest_reduce_cpu_seconds": max(t for _, t in tasks),
            "peak_bytes": mem.peak, "shuffle_bytes": st.shuffle_bytes, "shuffle_bytes_per_image": st.shuffle_bytes / n,
            "records": st.records, "records_per_image": st.records / n, "pairs": st.pairs, "verified": st.verified,
            "largest_bucket": st.largest_bucket, "largest_task_records": st.largest_task_records,
            "cut_buckets": st.cut_buckets}, (np.stack([i, j], 1) if collect else None)


def check_pairs(pairs: np.ndarray, n: int, radius: int, seed: int, chunks: int = 4, rows: int = 200) -> dict:
    """Recall of the planted pairs within `radius` in `chunks` chunks spread over the set, and a brute-force
    check: every partner within `radius` of `rows` random rows among all n codes (hamming_matrix over every
    chunk), against the join's pairs that hold those rows. Both must be exact for an exact join."""
    from imgsim_fast.indexes.hamming import hamming_matrix

    key = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64)
    key.sort()
    n_chunks = -(-n // CHUNK)
    found = planted = 0
    for c in sorted({int(x) for x in np.linspace(0, n_chunks - 1, min(chunks, n_chunks))}):
        want = planted_pairs(seed, c, min(CHUNK, n - c * CHUNK), radius)
        wk = (want[:, 0].astype(np.uint64) << np.uint64(32)) | want[:, 1].astype(np.uint64)
        planted += len(wk)
        found += int(np.isin(wk, key, assume_unique=True).sum())
    sample = np.sort(np.random.default_rng(seed + 1).choice(n, min(rows, n), replace=False))
    qcodes = []
    for c in np.unique(sample // CHUNK):
        _, ph, _ = synthetic_chunk((seed, int(c), min(CHUNK, n - int(c) * CHUNK)))
        qcodes.append(ph[sample[sample // CHUNK == c] - c * CHUNK, 0])
    qcodes = np.concatenate(qcodes)
    truth = []
    for c in range(n_chunks):
        rows_c, ph, _ = synthetic_chunk((seed, c, min(CHUNK, n - c * CHUNK)))
        q, d = np.nonzero(hamming_matrix(qcodes.reshape(-1, 1), ph[:, :1].copy(), threads=1) <= radius)
        truth.append(np.stack([sample[q], rows_c[d]], 1))
    truth = np.concatenate(truth)
    truth = truth[truth[:, 0] != truth[:, 1]]
    truth = {(min(a, b), max(a, b)) for a, b in truth.tolist()}
    held = np.isin(pairs[:, 0], sample) | np.isin(pairs[:, 1], sample)
    got = set(map(tuple, pairs[held].tolist()))
    return {"planted_pairs_checked": planted, "planted_recall": found / max(1, planted),
            "brute_force_rows": len(sample), "brute_force_pairs": len(truth), "brute_force_equal": got == truth}


def single_machine_pairs(n: int, radius: int, seed: int = 0) -> tuple[int, float]:
    """(pairs, seconds) of HammingIndex.self_join over the same identity codes, on one core."""
    from imgsim_fast.indexes.mih import HammingIndex

    codes = np.concatenate([synthetic_chunk((seed, c, min(CHUNK, n - c * CHUNK)))[1][:, 0]
                            for c in range(-(-n // CHUNK))])
    t0 = time.perf_counter()
    ix = HammingIndex(64)
    ix.add(codes.reshape(-1, 1))
    pairs = sum(len(a) for a, _, _ in ix.self_join(radius, threads=1))
    return pairs, time.perf_counter() - t0


# The bound on buckets and reduce tasks (JoinSpec.max_bucket): 2^18 codes a bucket and about 4 x 2^18 records
# (25 MiB) a reduce task. Below ~2^17 at 10^8 codes, map outputs split into pieces under Ray's 100 KiB inline
# limit, which the driver would then hold.
MAX_BUCKET = 1 << 18


def run(sizes=(1_000_000, 10_000_000), quick: bool = False, seed: int = 0, cpus: int = 2,
        object_store_gb: float = 4.0, large=((100_000_000, 4),), max_bucket: int = MAX_BUCKET) -> list[Row]:
    """sizes: joins at r = 10 (and with flips at 10^6), pair count checked against HammingIndex.self_join at
    10^6. large: (n, radius) joins whose pairs are collected and checked (planted-group recall and a
    brute-force sample: check_pairs)."""
    import ray

    from imgsim_fast.cluster.session import _quiet_data

    if quick:
        sizes, large = (200_000,), ((300_000, 4),)
    ray.init(num_cpus=cpus, object_store_memory=int(object_store_gb * 2**30), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    _quiet_data()
    rows = []
    try:
        for n in sizes:
            for radius, dihedral in ((10, None),) + (((10, 8),) if n <= 1_000_000 else ()):
                r, _ = run_one(n, radius, dihedral, 4, seed, max_bucket)
                peer = peer_value = None
                if dihedral is None and n <= 1_000_000:
                    pairs, secs = single_machine_pairs(n, radius, seed)
                    if pairs != r["pairs"]:
                        raise AssertionError(f"join found {r['pairs']} pairs, HammingIndex.self_join {pairs}")
                    peer, peer_value = "HammingIndex.self_join, 1 core (pairs checked equal)", n / secs
                label = f"join n={n:.0e} r={radius}" + (f" flips<={dihedral}" if dihedral is not None else "")
                rows.append(_row(label, r, cpus, peer, peer_value))
        for n, radius in large:
            r, pairs = run_one(n, radius, None, 4, seed, max_bucket, collect=True)
            r |= check_pairs(pairs, n, radius, seed)
            del pairs
            rows.append(_row(f"join n={n:.0e} r={radius}", r, cpus))
            if r["planted_recall"] != 1.0 or not r["brute_force_equal"]:
                raise AssertionError(f"join at n={n} is not exact: {r}")
    finally:
        ray.shutdown()
    return rows


def _row(label: str, r: dict, cpus: int, peer=None, peer_value=None) -> Row:
    row = Row(SECTION, label, r["n"] / r["seconds"], "codes/s", peer, peer_value,
              {k: v for k, v in r.items() if k != "seconds"} | {"seconds": r["seconds"], "cpus": cpus},
              f"{r['seconds']:.0f} s, peak {r['peak_bytes'] / 2**30:.2f} GiB, "
              f"{r['shuffle_bytes_per_image']:.0f} B/image shuffled, {r['pairs']} pairs, "
              f"largest bucket {r['largest_bucket']}")
    print(row.name, row.note, flush=True)
    return row


def main(argv=None) -> int:
    """Selected rows only, merged into an existing results file (rows of the same name replaced): the 10^8 join
    takes most of an hour here, and the smaller rows need not be run again with it."""
    import argparse
    import json
    import os
    from dataclasses import asdict

    from imgsim_fast.bench.report import machine_info, write_json

    p = argparse.ArgumentParser(prog="python -m imgsim_fast.bench.cluster_bench", description=main.__doc__)
    p.add_argument("--sizes", default="", help="r = 10 joins, e.g. 1e6,1e7")
    p.add_argument("--large", default="1e8:4", help="collected and checked joins, N:RADIUS[,N:RADIUS]")
    p.add_argument("--max-bucket", type=float, default=MAX_BUCKET)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    sizes = tuple(int(float(x)) for x in a.sizes.split(",") if x)
    large = tuple((int(float(x.split(":")[0])), int(x.split(":")[1])) for x in a.large.split(",") if x)
    rows = run(sizes, seed=a.seed, large=large, max_bucket=int(a.max_bucket))
    old = []
    if os.path.exists(a.out):
        with open(a.out, encoding="utf-8") as f:
            old = [Row(**{k: v for k, v in d.items() if k != "ratio"}) for d in json.load(f)["results"]]
    new = {r.name for r in rows}
    write_json(a.out, machine_info(a.seed), [r for r in old if r.name not in new] + rows)
    print(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
