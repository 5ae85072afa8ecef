"""Catalog benchmark: files/s of a no-change re-index, and the per-file cost of a first index by phase.

The re-index target (issue 5) is >= 20,000 files/s: it stats files and compares with the catalog,
touching no pixels. Its files are tiny identical PNGs (content does not matter to a re-index; identical
bytes keep the first index short, as copies reuse one decode).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from imgsim_fast.bench.report import Row, best_time

SECTION = "catalog"


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(b, "PNG")
    return b.getvalue()


def _make_tiny_tree(root: str, n: int, per_dir: int = 1000) -> None:
    data = _tiny_png()
    for i in range(n):
        d = os.path.join(root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06d}.png"), "wb") as f:
            f.write(data)


def _make_photos(root: str, n: int, seed: int, size=(1024, 768)) -> list[str]:
    """Synthetic JPEG 'photos': smooth random blocks plus noise, so draft decoding has work to skip."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
        noise = rng.integers(-12, 13, (size[1], size[0], 3))
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        p = os.path.join(root, f"p{i:05d}.jpg")
        im.save(p, quality=90)
        paths.append(p)
    return paths


def run(quick: bool = False, seed: int = 0, embed_model: str | None = "efficientnet-lite0") -> list[Row]:
    from imgsim_fast.features import hashing
    from imgsim_fast.catalog.indexer import index
    from imgsim_fast.io.loading import load_image

    rows: list[Row] = []
    n = 10_000 if quick else 100_000
    tmp = tempfile.mkdtemp(prefix="imgsim-catalog-bench-")
    try:
        # 1. No-change re-index.
        root = os.path.join(tmp, "tiny")
        _make_tiny_tree(root, n)
        cat = os.path.join(tmp, "tiny.sqlite")
        t0 = time.perf_counter()
        first = index(root, cat, workers=1, progress=False)
        first_s = time.perf_counter() - t0
        assert first.added == 1 and first.copied == n - 1, first
        stats = []

        def again():
            stats.append(index(root, cat, workers=1, progress=False))

        dt = best_time(again, repeat=3)
        assert all(s.unchanged == n and s.decoded == 0 and s.digested == 0 for s in stats)
        rows.append(Row(SECTION, f"no-change re-index, {n // 1000}k files", n / dt, "files/s",
                        params={"files": n, "seconds": dt, "target_files_per_s": 20_000,
                                "phases_s": {k: round(v, 4) for k, v in stats[-1].seconds.items()}}))
        rows.append(Row(SECTION, f"first index, {n // 1000}k identical tiny files", n / first_s, "files/s",
                        params={"files": n, "seconds": first_s, "note": "1 decode, the rest reuse it as copies"}))
        shutil.rmtree(root)

        # 2. First index of photos, cost per file by phase.
        m = 100 if quick else 400
        photos = _make_photos(os.path.join(tmp, "photos"), m, seed)
        kinds = ("phash",)
        draft = hashing.draft_size(kinds, "fast", 8)
        hashing.hash_images([load_image(photos[0], min_size=draft)], kinds)  # compile before timing
        t0 = time.perf_counter()
        ims = [load_image(p, min_size=draft) for p in photos]
        decode_s = time.perf_counter() - t0
        hash_s = best_time(lambda: hashing.hash_images(ims, kinds), repeat=3)
        s = index(os.path.join(tmp, "photos"), os.path.join(tmp, "photos.sqlite"), workers=1, progress=False)
        per = {"decode": decode_s / m, "hash": hash_s / m,
               "write": s.seconds.get("write", 0.0) / m,
               "digest": s.seconds.get("digest", 0.0) / m,
               "metadata": s.seconds.get("metadata", 0.0) / m,
               "index_total": s.seconds["total"] / m}
        embed_note = "skipped"
        if embed_model:
            try:
                from imgsim_fast.features.embedding import embed_paths

                embed_paths(photos[:2], model=embed_model, workers=0, progress=False)  # load the model
                t0 = time.perf_counter()
                embed_paths(photos, model=embed_model, workers=0, progress=False)
                per["embed"] = (time.perf_counter() - t0) / m
                embed_note = embed_model
            except Exception as e:  # torch or the weights missing: reported, not fatal
                embed_note = f"skipped: {type(e).__name__}: {e}"
        for phase, sec in per.items():
            rows.append(Row(SECTION, f"first index per file: {phase}", sec * 1e3, "ms/file",
                            params={"files": m, "size": "1024x768 JPEG", "workers": 1,
                                    "embed_model": embed_note if phase == "embed" else None}))
        if "embed" not in per:
            rows.append(Row(SECTION, "first index per file: embed", float("nan"), "ms/file",
                            params={"note": embed_note}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":  # python -m imgsim_fast.bench.catalog_bench [--quick]
    import sys

    from imgsim_fast.bench.report import print_table

    print_table(run(quick="--quick" in sys.argv))
