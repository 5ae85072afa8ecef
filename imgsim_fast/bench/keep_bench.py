"""Keep-best: is the original the file dedup keeps? `python -m imgsim_fast.bench keep [--quick]`.

Each source picture of the accuracy corpus (real wallpapers and scikit-image pictures) becomes a camera-like
original, a JPEG at most 1600 px (quality 95), beside the copies people make of such a file: recompressed,
resized, upscaled, squashed, letterboxed, framed, noisy PNG, PNG re-save, cropped, mirrored, brightened,
greyscale, captioned. Dedup runs on the whole folder (method auto, default keep order) and a family counts
as "original kept" when the group holding its original keeps the original. Two settings of modification
times: `realistic` (the original is the oldest file, as when copies are made later) and `shuffled`
(mtimes permuted at random, so only the pixels and the file can tell). Per edit kind, the pairwise rate
says how often keep-best ranks the original above that copy alone: on the facts alone, and as dedup ranks
a group (facts, then the pixel inspection where they leave a doubt). Split by family as in the accuracy
corpus; the keep constants (keep.py) were set looking at the tune half, the headline is the test half.
Limits: synthetic edits of wallpapers; the originals are our own JPEG encodes (libjpeg tables, no camera
EXIF), and a copy saved at the original's quality with no other loss (a mirror, a caption) is told apart
only by its modification time.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from imgsim_fast.io.atomic_write import replacing
from imgsim_fast.bench.corpus import _font, source_pictures, split_of, fetch_sources
from imgsim_fast.bench.report import Row

__all__ = ["EDITS", "build", "run"]

KEEP_VERSION = 3  # 2 held a noisy JPEG saved at q98 (README, limits: not a copy keep-best tells); 3: as 1
MAX_SIDE = 1600
ORIGINAL_QUALITY = 95


def _save_jpeg(im, path, q=ORIGINAL_QUALITY - 3):
    im.save(path, format="JPEG", quality=q)


def _bars(im):
    w, h = im.size
    nh = max(int(round(w * 9 / 16)), int(h * 1.2)) if w >= h else h
    nw = w if w >= h else max(int(round(h * 9 / 16)), int(w * 1.2))
    c = Image.new("RGB", (nw, nh), (0, 0, 0))
    c.paste(im, ((nw - w) // 2, (nh - h) // 2))
    return c


def _noisy(im, rng):
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (im.size[1], im.size[0], 1)).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _caption(im):
    im = im.copy()
    w, h = im.size
    ImageDraw.Draw(im).text((w // 30, h - h // 10), "IMG_2041.jpg", font=_font(max(10, h // 20)), fill=(255, 255, 0))
    return im


# kind -> (make the copy from the decoded original, file extension, save function)
EDITS = {
    "recompress": (lambda im, r: im, ".jpg", lambda im, p: _save_jpeg(im, p, 75)),
    "resize": (lambda im, r: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), ".jpg", _save_jpeg),
    "upscale": (lambda im, r: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BICUBIC), ".jpg",
                _save_jpeg),
    "squash": (lambda im, r: im.resize((im.width * 6 // 5, im.height), Image.Resampling.BICUBIC), ".jpg", _save_jpeg),
    "letterbox": (lambda im, r: _bars(im), ".jpg", _save_jpeg),
    "frame": (lambda im, r: ImageOps.expand(im, border=im.width // 10, fill=(255, 255, 255)), ".png", None),
    "noisy-png": (lambda im, r: _noisy(im, r), ".png", None),
    "png-resave": (lambda im, r: im, ".png", None),
    "crop": (lambda im, r: im.crop((im.width // 20, im.height // 20, im.width * 19 // 20, im.height * 19 // 20)),
             ".jpg", _save_jpeg),
    "mirror": (lambda im, r: ImageOps.mirror(im), ".jpg", _save_jpeg),
    "bright": (lambda im, r: ImageEnhance.Brightness(im).enhance(1.2), ".jpg", _save_jpeg),
    "grey": (lambda im, r: im.convert("L").convert("RGB"), ".jpg", _save_jpeg),
    "caption": (lambda im, r: _caption(im), ".jpg", _save_jpeg),
}


def build(photos_src: str, cache_dir: str, quick: bool = False, seed: int = 0) -> tuple[str, list[dict]]:
    """The keep corpus under cache_dir/keep_corpus[-quick] (cached): (folder, rows of path/family/kind/split)."""
    sources = source_pictures(photos_src, fetch_sources(cache_dir))
    if quick:
        sources = sources[::4]
    root = os.path.join(cache_dir, "keep_corpus" + ("-quick" if quick else ""))
    labels = os.path.join(root, "labels.json")
    key = {"version": KEEP_VERSION, "seed": seed, "sources": [f for f, _ in sources]}
    if os.path.exists(labels):
        with open(labels, encoding="utf-8") as f:
            doc = json.load(f)
        if doc["key"] == key:
            return root, doc["rows"]
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for fi, (family, src) in enumerate(sources):
        with Image.open(src) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            im = im.convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        orig = f"k{fi:03d}_original.jpg"
        _save_jpeg(im, os.path.join(root, orig), ORIGINAL_QUALITY)
        with Image.open(os.path.join(root, orig)) as o:  # copies are made from the file, as people do
            decoded = o.convert("RGB")
        rows.append({"path": orig, "family": family, "kind": "original", "split": split_of(family)})
        for kind, (make, ext, save) in EDITS.items():
            name = f"k{fi:03d}_{kind}{ext}"
            out = make(decoded, rng)
            (save or (lambda im, p: im.save(p, format="PNG")))(out, os.path.join(root, name))
            rows.append({"path": name, "family": family, "kind": kind, "split": split_of(family)})
    with replacing(labels) as f:
        json.dump({"key": key, "rows": rows}, f)
    return root, rows


def _with_mtimes(feats, rows: list[dict], mode: str, seed: int):
    """The features with modification times set: realistic (originals an hour older than their copies) or
    shuffled (a random permutation). Only keep-best reads mtimes, so the pixels are computed once."""
    import dataclasses

    base = 1_700_000_000
    order = np.random.default_rng(seed).permutation(len(rows)) if mode == "shuffled" else None
    when = {}
    for k, r in enumerate(rows):
        when[r["path"]] = base + (int(order[k]) if order is not None else (0 if r["kind"] == "original" else 3600 + k))
    facts = [dataclasses.replace(f, mtime=float(when[os.path.basename(f.path)])) for f in feats.facts]
    return dataclasses.replace(feats, facts=facts)


def evaluate(feats, rows: list[dict], root: str) -> dict:
    """Per split: share of families whose original is kept; per kind: pairwise original-first rate."""
    from imgsim_fast.jobs.dedup import group_features
    from imgsim_fast.jobs.dedup.keep import keep_ranks

    res = group_features(feats, "auto")
    pos = {os.path.basename(p): i for i, p in enumerate(feats.paths)}
    label = {pos[r["path"]]: r for r in rows if r["path"] in pos}
    out: dict = {}
    for split in ("tune", "test"):
        fams = {r["family"] for r in rows if r["split"] == split}
        kept = grouped = 0
        wrong = []
        for g in res.groups:
            if g.tier != "duplicate":
                continue
            for m in g.members:
                r = label[m]
                if r["kind"] == "original" and r["split"] == split:
                    grouped += 1
                    if g.members[0] == m:
                        kept += 1
                    else:
                        wrong.append(f"{r['family']}: kept {label[g.members[0]]['kind']}")
        pair, inspected = {}, {}
        for kind in EDITS:
            hits = seen = n = 0
            for fam in fams:
                o = next((i for i, r in label.items() if r["family"] == fam and r["kind"] == "original"), None)
                e = next((i for i, r in label.items() if r["family"] == fam and r["kind"] == kind), None)
                if o is None or e is None:
                    continue
                rk = keep_ranks(feats.facts, [o, e])
                hits += rk[o] < rk[e]
                rk = keep_ranks(feats.facts, [o, e], inspect=True)  # as dedup ranks a group of the two
                seen += rk[o] < rk[e]
                n += 1
            pair[kind] = hits / n if n else None
            inspected[kind] = seen / n if n else None
        out[split] = {"families": len(fams), "original_grouped": grouped, "original_kept": kept,
                      "kept_rate": kept / grouped if grouped else None, "pairwise": pair,
                      "pairwise_inspected": inspected, "wrong": wrong}
    return out


def run(photos_src: str, cache_dir: str, quick: bool = False, details: dict | None = None) -> list[Row]:
    from imgsim_fast.features.extract import compute_features

    root, rows = build(photos_src, cache_dir, quick)
    t0 = time.perf_counter()
    feats = compute_features([os.path.join(root, r["path"]) for r in rows], embed=True, progress=False)
    seconds = time.perf_counter() - t0
    result = {}
    for mode in ("realistic", "shuffled"):
        result[mode] = evaluate(_with_mtimes(feats, rows, mode, seed=1), rows, root)
        result[mode]["features_seconds"] = seconds
    if details is not None:
        details.update(result)
    out = []
    for mode, r in result.items():
        t = r["test"]
        out.append(Row("keep", f"original kept, mtimes {mode} (held-out)", round(t["kept_rate"] or 0, 4), "",
                       None, None, {"groups_with_original": t["original_grouped"], "families": t["families"]}))
    for kind, v in result["shuffled"]["test"]["pairwise"].items():
        out.append(Row("keep", f"original ranked above {kind} (pairwise, shuffled mtimes, held-out)",
                       None if v is None else round(v, 4), "", None, None, {"inspect": False}))
    for kind, v in result["shuffled"]["test"]["pairwise_inspected"].items():
        out.append(Row("keep", f"original ranked above {kind} (pairwise with pixel inspection, shuffled mtimes, "
                       "held-out)", None if v is None else round(v, 4), "", None, None, {"inspect": True}))
    return out


if __name__ == "__main__":
    import sys

    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    d: dict = {}
    rows = run(os.path.join(repo, ".cache", "photos"), os.path.join(repo, ".cache"), "--quick" in sys.argv, d)
    for mode, r in d.items():
        for split in ("tune", "test"):
            s = r[split]
            print(f"{mode:9} {split:4} kept {s['original_kept']}/{s['original_grouped']} "
                  f"of {s['families']} families; pairwise, facts / with pixels: "
                  + " ".join(f"{k}={v:.2f}/{s['pairwise_inspected'][k]:.2f}" for k, v in s["pairwise"].items()
                             if v is not None))
            for w in s["wrong"][:12]:
                print("     ", w)
