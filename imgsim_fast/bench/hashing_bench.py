"""pHash throughput on real JPEG photos, ours against imagehash.phash on the same files in the same run;
and how far fast mode's codes are from compatibility mode's (which match imagehash bit for bit)."""
from __future__ import annotations

import glob
import os

import numpy as np

from .report import Row, best_time


def jpeg_folder(src: str, dest: str, min_pixels: int = 1_000_000) -> list[str]:
    """JPEG copies (quality 90, full size) of every photo of at least `min_pixels` under `src`.

    The wallpaper packages ship some photos as PNG; re-encoding them gives a larger JPEG set, and JPEG
    is what cameras and phones write, so it is what a hashing benchmark should decode.
    """
    from PIL import Image

    os.makedirs(dest, exist_ok=True)
    out = []
    for p in sorted(glob.glob(os.path.join(src, "**", "*"), recursive=True)):
        if not p.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        target = os.path.join(dest, os.path.splitext(os.path.basename(p))[0] + ".jpg")
        if not os.path.exists(target):
            with Image.open(p) as im:
                if im.width * im.height < min_pixels:
                    continue
                im.convert("RGB").save(target + ".part", "JPEG", quality=90)
            os.replace(target + ".part", target)
        out.append(target)
    return out


def run(photos_src: str, cache: str, quick: bool = False) -> list[Row]:
    from ..codes import hamming_reference
    from ..pipeline import hash_paths

    files = jpeg_folder(photos_src, os.path.join(cache, "bench_jpeg"))
    if not files:
        print(f"bench: no photos under {photos_src}; run scripts/fetch_photos.sh")
        return []
    if quick:
        files = files[:6]
    rows = []
    from PIL import Image

    sizes = []
    for f in files:
        with Image.open(f) as im:
            sizes.append(im.width * im.height)
    params = {"files": len(files), "median_megapixels": round(float(np.median(sizes)) / 1e6, 2)}

    ours1 = len(files) / best_time(lambda: hash_paths(files, kinds=("phash",), workers=1, progress=False), repeat=3)
    cores = len(os.sched_getaffinity(0))
    ours_all = len(files) / best_time(lambda: hash_paths(files, kinds=("phash",), workers=None, progress=False), repeat=3)
    try:
        import imagehash

        def peer():
            for f in files:
                with Image.open(f) as im:
                    imagehash.phash(im)

        peer1 = len(files) / best_time(peer, repeat=2)
    except ImportError:
        print("bench: imagehash not installed (scripts/setup.sh --test installs it)")
        peer1 = None
    rows.append(Row("hashing", "pHash, fast mode, 1 core", ours1, "images/s", "imagehash.phash, 1 core" if peer1 else None, peer1, params))
    rows.append(Row("hashing", f"pHash, fast mode, all {cores} cores", ours_all, "images/s",
                    "imagehash.phash, 1 core" if peer1 else None, peer1, dict(params, cores=cores)))

    # Fidelity: fast mode against compatibility mode, per hash kind, on the same photos.
    kinds = ("phash", "ahash", "dhash", "whash", "colorhash")
    fast = hash_paths(files, kinds=kinds, mode="fast", workers=None, progress=False)
    compat = hash_paths(files, kinds=kinds, mode="compat", workers=None, progress=False)
    assert fast.paths == compat.paths
    for k in kinds:
        d = np.diag(hamming_reference(fast.codes[k], compat.codes[k]))
        rows.append(Row("hashing", f"{k}: fast vs compat, median bits differing", float(np.median(d)), "bits",
                        params=dict(params, p99=float(np.percentile(d, 99)), max=int(d.max()))))
        rows.append(Row("hashing", f"{k}: fast vs compat, 99th percentile", float(np.percentile(d, 99)), "bits", params=params))
    return rows
