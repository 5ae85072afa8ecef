"""Dedup on a catalog, run twice on an unchanged folder (issue 12): the second run should decode nothing
and take a small fraction of the first. `python -m imgsim_fast.bench reuse`.

The folder: N distinct 512x384 JPEG views cut from the real photos at different offsets and scales, plus
one planted re-encoded copy per 50 files. Each run is the `imgsim` command in a fresh process (what a user
times), with the catalog outside the folder. Hash-only (`--method phash`) at 10k files; the default method
(hashes + two embedded views per file) at 1k, since embedding 10k files takes most of an hour on 2 cores.

Grouping alone (jobs/dedup/grouping.py), each in a fresh interpreter with its own memory high-water mark:
on the 10k folder's stored features (the pair test over the candidates, then the stars), and on synthetic
pair lists of 10^6 and 10^7 pairs (planted groups of 2-15 files whose codes differ by 0-13 random bits,
every pair within a group a candidate, as the self-join would give them).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from imgsim_fast.bench.report import Row

SECTION = "reuse"


def _folder(photos_dir: str, dest: str, n: int, seed: int = 0) -> str:
    marker = os.path.join(dest, f".done-{n}")
    if os.path.exists(marker):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    srcs = sorted(p for p in glob.glob(os.path.join(photos_dir, "*", "*")) if p.lower().endswith((".jpg", ".png")))
    rng = np.random.default_rng(seed)
    opened = [Image.open(p).convert("RGB") for p in srcs[:12]]
    for i in range(n):
        im = opened[i % len(opened)]
        scale = rng.uniform(0.3, 0.9)
        w, h = int(im.width * scale), int(im.height * scale)
        x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
        view = im.crop((x, y, x + w, y + h)).resize((512, 384))
        view.save(os.path.join(dest, f"v{i:05d}.jpg"), quality=88)
        if i % 50 == 0:
            view.save(os.path.join(dest, f"v{i:05d}_copy.jpg"), quality=70)
    open(marker, "w").close()
    return dest


def _run(folder: str, catalog: str, method: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "imgsim_fast", "dedup", folder, "--method", method,
                          "--catalog", catalog, "--no-progress"], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(out.stderr[-2000:])
    return dt


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def _reset_hwm() -> bool:
    """Restart the high-water mark at the current RSS (Linux: 5 > /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_kernels() -> None:
    """Load grouping's numba kernels before the clock starts: their first use in a process costs 0.5-1 s
    from numba's cache (counted in the dedup runs above), several seconds when they compile."""
    from imgsim_fast.jobs.dedup.detect import PairJudge
    from imgsim_fast.jobs.dedup.grouping import group_pairs

    feats, pairs = synthetic_pairs(50, seed=1)
    group_pairs(len(feats), pairs, PairJudge(feats, "phash"), lambda members: {x: x for x in members})


def _timed_grouping(n: int, pairs, judge, ranker) -> dict:
    """Pair test and grouping of `pairs`, timed apart, with the memory they add over what is held before."""
    import numpy as np

    from imgsim_fast.jobs.dedup.grouping import group_decisions

    _load_kernels()

    ranking = [0.0]

    def timed_ranker(members):  # keep-best is Python, once a component: its share is reported apart
        t = time.perf_counter()
        out = ranker(members)
        ranking[0] += time.perf_counter() - t
        return out

    base = _rss_kib()
    reset = _reset_hwm()
    t0 = time.perf_counter()
    d = judge.decide(*pairs, lazy=True)  # as group_pairs: the pixel checks wait for the stars (counted there)
    t1 = time.perf_counter()
    groups = group_decisions(n, d, judge, timed_ranker)
    t2 = time.perf_counter()
    return {"candidate_pairs": int(len(pairs[0])), "matched_pairs": len(d), "groups": len(groups),
            "pixel_checks": int(np.count_nonzero(~np.isnan(d.changed))) if d.changed is not None else 0,
            "grouped_files": sum(len(g.members) for g in groups), "pair_test_s": round(t1 - t0, 3),
            "grouping_s": round(t2 - t1, 3), "keep_best_s": round(ranking[0], 3), "held_before_mb": round(base / 1024),
            "peak_added_mb": round((_hwm_kib() - base) / 1024) if reset else None}


def synthetic_pairs(n_pairs: int, seed: int = 0):
    """(Features, (ii, jj)): planted groups of 2-15 files until n_pairs candidate pairs, every pair within a
    group, sorted as candidate_pairs gives them. A member's code is its group's base with 0-13 random bits
    flipped, so pairs fall in the duplicate tier, the look-alike tier or neither, and stars form within
    groups; one member in 50 is a byte-identical copy of its group's first file."""
    import numpy as np

    from imgsim_fast.features.extract import Features, FileFacts

    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 16, 4 * n_pairs // 40 + 16)
    sizes = sizes[:int(np.searchsorted(np.cumsum(sizes * (sizes - 1) // 2), n_pairs)) + 1]
    n = int(sizes.sum())
    start = np.repeat(np.cumsum(sizes) - sizes, sizes)
    base = rng.integers(0, 2**63, len(sizes), dtype=np.uint64)
    codes = rng.integers(0, 2**63, (n, 8, 1), dtype=np.uint64)  # variants: far from every code
    ident = np.repeat(base, sizes)
    nflip = rng.integers(0, 14, n)
    for k in range(13):
        bit = rng.integers(0, 64, n).astype(np.uint64)
        ident = np.where(nflip > k, ident ^ (np.uint64(1) << bit), ident)
    copy = (rng.random(n) < 0.02) & (np.arange(n) != start)
    ident[copy] = ident[start[copy]]
    codes[:, 0, 0] = ident
    owner = np.where(copy, start, np.arange(n))
    facts = [FileFacts(f"/synthetic/{x:09d}.jpg", 100_000 + x % 997, float(x % 1009), 1024, 768, "JPEG",
                       786_432 - 1024 * (x % 7), f"{o:064x}", jpeg_quality=80 + x % 15)
             for x, o in enumerate(owner.tolist())]
    # All pairs within each group: for a group of s files at `st`, (st + a, st + b) for a < b.
    ii, jj = [], []
    for s in range(2, 16):
        sts = (np.cumsum(sizes) - sizes)[sizes == s]
        a, b = np.triu_indices(s, 1)
        ii.append((sts[:, None] + a).ravel())
        jj.append((sts[:, None] + b).ravel())
    ii, jj = np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)
    key = np.sort(ii * n + jj)
    return Features(facts, codes), (key // n, key % n)


def grouping_synthetic(n_pairs: int, seed: int = 0) -> dict:
    """_timed_grouping on synthetic_pairs, the phash method, the keep-best ranker on file facts."""
    from imgsim_fast.jobs.dedup.detect import PairJudge
    from imgsim_fast.jobs.dedup.keep import keep_ranks

    feats, pairs = synthetic_pairs(n_pairs, seed)
    judge = PairJudge(feats, "phash")
    out = _timed_grouping(len(feats), pairs, judge, lambda members: keep_ranks(feats.facts, members))
    return {"files": len(feats), **out}


def grouping_folder(folder: str, catalog: str) -> dict:
    """_timed_grouping on a folder's features read back from the catalog dedup stored them in (--method
    phash, keep-best as dedup runs it, its remembered verdicts and pixel checks included: a second run)."""
    from imgsim_fast.catalog.dedup_features import dedup_features, load_looks
    from imgsim_fast.jobs.dedup.detect import PairJudge, candidate_pairs, check_key_prefix
    from imgsim_fast.jobs.dedup.keep import DEFAULT_ORDER, keep_ranks, verdict_key_prefix

    feats, decoded = dedup_features(catalog, [folder], progress=False)
    checks, verdicts, _ = load_looks(catalog, check_key_prefix(), verdict_key_prefix())  # as find_duplicates
    judge = PairJudge(feats, "phash", checks=checks)
    t0 = time.perf_counter()
    pairs = candidate_pairs(judge)
    t_pairs = time.perf_counter() - t0
    ref = [False] * len(feats)
    out = _timed_grouping(len(feats), pairs, judge, lambda members: keep_ranks(
        feats.facts, members, DEFAULT_ORDER, ref, inspect=True, verdicts=verdicts))
    return {"files": len(feats), "decoded": decoded, "pair_search_s": round(t_pairs, 3), **out}


def _child(call: str) -> dict:
    """A function of this module run in a fresh interpreter (its memory is its own), its JSON back."""
    code = f"import json; from imgsim_fast.bench import reuse_bench as r; print(json.dumps(r.{call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _grouping_row(name: str, r: dict) -> Row:
    note = (f"of which keep-best {r['keep_best_s']:.2f} s; pair test {r['pair_test_s']:.2f} s; "
            f"{r['matched_pairs']:,} pairs with a rule before the pixel check, {r.get('pixel_checks', 0):,} checked; "
            f"{r['groups']:,} groups; "
            f"+{r['peak_added_mb']} MB over {r['held_before_mb']} MB held")
    return Row(SECTION, name, r["grouping_s"], "s", params=r, note=note)


def run(photos_dir: str, cache: str, quick: bool = False) -> list[Row]:
    rows = []
    for n_pairs in (10**5, 10**6) if quick else (10**6, 10**7):
        r = _child(f"grouping_synthetic({n_pairs})")
        rows.append(_grouping_row(f"grouping, synthetic, {n_pairs:.0e} candidate pairs, {r['files']:,} files", r))
    for method, n in (("phash", 1000 if quick else 10_000), ("auto", 200 if quick else 1000)):
        folder = _folder(photos_dir, os.path.join(cache, f"reuse-{n}"), n)
        files = len(glob.glob(os.path.join(folder, "*.jpg")))
        catalog = os.path.join(cache, f"reuse-{method}-{n}.sqlite")
        for p in glob.glob(catalog + "*"):
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        first = _run(folder, catalog, method)
        second = _run(folder, catalog, method)
        params = {"files": files, "method": method, "first_s": round(first, 2), "second_s": round(second, 2)}
        rows.append(Row(SECTION, f"dedup --catalog, 2nd run / 1st, {method}, {files} files", 100 * second / first,
                        "% of first", params=params, note=f"{first:.1f} s then {second:.2f} s"))
        if method == "phash":
            r = _child(f"grouping_folder({folder!r}, {catalog!r})")
            rows.append(_grouping_row(f"grouping, {files} files' stored features ({r['candidate_pairs']:,} candidate "
                                      "pairs)", r))
    return rows
