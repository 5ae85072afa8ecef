"""The distributed pigeonhole join (imgsim_fast.cluster.join) through Ray on this machine (issue 14).

Synthetic pHash-like 64-bit codes with planted groups (index_bench.clustered_codes' model: per-bit
probabilities 0.2-0.8, groups of ~10 codes within 8 random flips of their centre) are generated inside
the map tasks, chunk by chunk, so no code passes through the driver. Reported per size: wall time,
peak memory of the whole Ray session (driver, raylet, workers and object store: the sum of their PSS,
sampled every second), shuffle bytes per image (the records the map side emits), pairs and largest
bucket. At 10^6 the pair count is checked against the single-machine HammingIndex.self_join, whose time
is the peer.
"""
from __future__ import annotations

import glob
import threading
import time

import numpy as np

from imgsim_fast.bench.report import Row

SECTION = "cluster"
CHUNK = 1_000_000


def synthetic_chunk(arg):
    """Join input: chunk `c` of `n` pHash-like codes (rows c*CHUNK ...), planted groups inside the chunk.
    Bit probabilities come from the seed alone, so every chunk draws from one distribution."""
    seed, c, size = arg
    p = np.random.default_rng(seed).uniform(0.2, 0.8, 64)
    rng = np.random.default_rng([seed, c])
    centres = np.zeros(max(1, size // 10), np.uint64)
    for b in range(64):
        centres |= (rng.random(len(centres)) < p[b]).astype(np.uint64) << np.uint64(b)
    codes = centres[rng.integers(0, len(centres), size)]
    flips = rng.integers(0, 9, size)
    for f in range(8):
        sel = np.flatnonzero(flips > f)
        codes[sel] ^= np.uint64(1) << rng.integers(0, 64, len(sel)).astype(np.uint64)
    ph = np.empty((size, 8), np.uint64)
    ph[:, 0] = codes
    # Flipped/rotated codes of a pHash are other 64-bit codes of the same picture: random stand-ins here.
    ph[:, 1:] = rng.integers(0, 2**64, (size, 7), dtype=np.uint64)
    return np.arange(c * CHUNK, c * CHUNK + size, dtype=np.int64), ph, None


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


def run_one(n: int, radius: int, dihedral: int | None, partitions: int, seed: int = 0) -> dict:
    """One join of n synthetic codes on the Ray this process is connected to; its measurements."""
    import ray

    from imgsim_fast.cluster.join import JoinSpec, join

    inputs = [(synthetic_chunk, (seed, c, min(CHUNK, n - c * CHUNK))) for c in range(-(-n // CHUNK))]
    spec = JoinSpec(radius, dihedral, partitions=partitions)
    with SessionMemory() as mem:
        t0 = time.perf_counter()
        _, _, st = join(inputs, spec, collect=False, ray=ray)
        wall = time.perf_counter() - t0
    return {"n": n, "radius": radius, "dihedral": dihedral, "partitions": partitions, "seconds": wall,
            "peak_bytes": mem.peak, "shuffle_bytes": st.shuffle_bytes, "shuffle_bytes_per_image": st.shuffle_bytes / n,
            "records": st.records, "pairs": st.pairs, "verified": st.verified, "largest_bucket": st.largest_bucket}


def run_sampled(n: int, radius: int, partitions: int, sample: int, seed: int = 0) -> dict:
    """A join too large to finish here: every code generated, keyed and split by the map side (measured),
    `sample` of the `partitions` reduce tasks run (measured, CPU seconds); the whole reduce side extrapolated
    from the sample's CPU seconds per record (an estimate: bucket sizes vary, and a bucket's cost grows faster than its
    size)."""
    import ray

    from imgsim_fast.cluster.join import JoinSpec, join

    inputs = [(synthetic_chunk, (seed, c, min(CHUNK, n - c * CHUNK))) for c in range(-(-n // CHUNK))]
    spec = JoinSpec(radius, None, partitions=partitions)
    only = list(np.random.default_rng(seed).choice(partitions, sample, replace=False))
    with SessionMemory() as mem:
        t0 = time.perf_counter()
        _, _, st = join(inputs, spec, collect=False, ray=ray, only_partitions=[int(p) for p in only])
        wall = time.perf_counter() - t0
    recs = sum(r for r, _ in st.seconds["reduce_tasks"])
    cpu = sum(s for _, s in st.seconds["reduce_tasks"])
    return {"n": n, "radius": radius, "partitions": partitions, "sampled": [int(p) for p in only], "seconds": wall,
            "map_seconds": st.seconds["map"], "sample_reduce_cpu_seconds": cpu, "sample_records": recs,
            "reduce_cpu_seconds_extrapolated": cpu * st.records / max(1, recs),
            "peak_bytes": mem.peak, "shuffle_bytes": st.shuffle_bytes, "shuffle_bytes_per_image": st.shuffle_bytes / n,
            "records": st.records, "sample_pairs": st.pairs, "largest_bucket_in_sample": st.largest_bucket}


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


def run(sizes=(1_000_000, 10_000_000), quick: bool = False, seed: int = 0, cpus: int = 2,
        object_store_gb: float = 4.0, sample_sizes=(100_000_000,)) -> list[Row]:
    import ray

    from imgsim_fast.cluster.session import _quiet_data

    if quick:
        sizes, sample_sizes = (200_000,), ()
    ray.init(num_cpus=cpus, object_store_memory=int(object_store_gb * 2**30), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    _quiet_data()
    rows = []
    try:
        for n in sizes:
            for radius, dihedral in ((10, None),) + (((10, 8),) if n <= 1_000_000 else ()):
                parts = max(4, n // 500_000)
                r = run_one(n, radius, dihedral, parts, seed)
                params = {k: v for k, v in r.items() if k not in ("seconds",)} | {"cpus": cpus}
                peer = peer_value = None
                if dihedral is None and n <= 1_000_000:
                    pairs, secs = single_machine_pairs(n, radius, seed)
                    if pairs != r["pairs"]:
                        raise AssertionError(f"join found {r['pairs']} pairs, HammingIndex.self_join {pairs}")
                    peer, peer_value = "HammingIndex.self_join, 1 core (pairs checked equal)", n / secs
                label = f"join n={n:.0e} r={radius}" + (f" flips<={dihedral}" if dihedral is not None else "")
                rows.append(Row(SECTION, label, n / r["seconds"], "codes/s", peer, peer_value, params,
                                f"{r['seconds']:.1f} s, peak {r['peak_bytes'] / 2**30:.2f} GiB, "
                                f"{r['shuffle_bytes_per_image']:.0f} B/image shuffled, {r['pairs']} pairs"))
                print(rows[-1].name, rows[-1].note, flush=True)
        for n in sample_sizes:
            r = run_sampled(n, 10, 64, 2, seed)
            rows.append(Row(SECTION, f"join n={n:.0e} r=10, 2 of 64 reduce tasks", n / r["map_seconds"],
                            "codes/s (map side)", None, None, r | {"cpus": cpus},
                            f"map {r['map_seconds']:.0f} s, sample reduce {r['sample_reduce_cpu_seconds']:.0f} "
                            f"CPU-s, all reduce ~{r['reduce_cpu_seconds_extrapolated'] / 3600:.1f} CPU-h "
                            f"(extrapolated), peak {r['peak_bytes'] / 2**30:.2f} GiB"))
            print(rows[-1].name, rows[-1].note, flush=True)
    finally:
        ray.shutdown()
    return rows
