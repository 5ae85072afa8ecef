"""Dedup on a catalog, run twice on an unchanged folder (issue 12): the second run should decode nothing
and take a small fraction of the first. `python -m imgsim_fast.bench reuse`.

The folder: N distinct 512x384 JPEG views cut from the real photos at different offsets and scales, plus
one planted re-encoded copy per 50 files. Each run is the `imgsim` command in a fresh process (what a user
times), with the catalog outside the folder. Hash-only (`--method phash`) at 10k files; the default method
(hashes + two embedded views per file) at 1k, since embedding 10k files takes most of an hour on 2 cores.
"""
from __future__ import annotations

import glob
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


def run(photos_dir: str, cache: str, quick: bool = False) -> list[Row]:
    rows = []
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
    return rows
