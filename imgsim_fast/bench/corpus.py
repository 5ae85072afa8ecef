"""Labelled near-duplicate corpus for the accuracy benchmark: real pictures, edited copies, look-alikes.

Sources, all offline once fetched (`fetch_sources`; scripts/fetch_photos.sh's last block pre-downloads them):
Debian's ukui-, lomiri- and mate-backgrounds wallpapers and desktop-base artwork (photos and graphics), and
the pictures shipped inside scikit-image's wheel (read from the zip, skimage is never imported or
installed, so no plain Pillow is pulled over pillow-simd). One picture per *family*: several files of a
package are versions of one picture (desktop-base's 16x9 and 4x3 of one theme, mate's Elephants in three
sizes, skimage's stereo motorcycle pair), and only one of each is used, so that two families are never
duplicates of each other.

Every source gets EDITS at a mild and a strong setting; a file's label is its family. The split ("tune"
or "test") is a fixed function of the family name, so thresholds tuned on one half are reported on the
other (accuracy.py).

Hard negatives (issue 10): 314 look-alike pictures of seven kinds (bench/lookalikes.py: screenshots of one
documentation theme and of one application's dialogs, slides of one template, icons of one theme, objects
on white, charts of one style, burst frames of one scene, the steps of slide builds). Each is its own
family, so any pair between two of them is false; each also gets NEGATIVE_EDITS (a JPEG and a half-size
copy), so that recall on such pictures is measured too. CorpusFile.negative names the kind ("" for the ordinary families). In all,
2,181 files in 373 families; building it takes 1-2 minutes of CPU (the look-alikes ~30 s of it), once.

The audit corpus (build_corpus(audit=True), `python -m imgsim_fast.bench accuracy --audit`) is the same
construction over pictures of packages nothing was tuned on (audit_pictures), every file in one split,
"audit": the held-out half has been looked at while the pair test was built; the audit was built to measure
only (README "Accuracy" says how often it was looked at, and what for).

Limits: ~60 ordinary families, mostly wallpapers and test pictures rather than camera photos; edits
synthesised with Pillow (real edits mix several at once); the look-alikes are partly synthetic (see
lookalikes.py), and what counts as a duplicate of a burst frame is a matter of opinion: here it is not.
The split is per picture, so two neighbouring burst frames fall in different halves about half the time:
their pair then counts only in the whole-corpus figures.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from imgsim_fast.io.atomic_write import replacing
from imgsim_fast.bench.debsrc import unpack_deb
from imgsim_fast.bench.lookalikes import LOOKALIKE_KINDS, build_lookalikes
from imgsim_fast.bench.lookalikes import VERSION as LOOKALIKES_VERSION

__all__ = ["AUDIT_SEED", "EDITS", "LOOKALIKE_KINDS", "NEGATIVE_EDITS", "CorpusFile", "audit_pictures", "build_corpus",
           "fetch_sources", "source_pictures"]

CORPUS_VERSION = 5
MAX_SIDE = 1024  # originals are stored at most this large: the corpus stays small and quick to hash
# ... except in the full-size corpus (build_corpus(full_size=True)), whose pictures keep the size their
# package ships them at (up to 3840 x 2400 here), as a collection of photos and wallpapers does: how long a
# tool takes depends on it, as decoding grows with the pixels and a fixed-size network input does not.

# (kind, level) -> description; the function below applies it. Kinds are what the issue lists.
EDITS = {
    ("jpeg", "mild"): "JPEG quality 70", ("jpeg", "strong"): "JPEG quality 20",
    ("resize", "mild"): "50% per side", ("resize", "strong"): "20% per side (min 96 px), JPEG q85",
    ("rotate", "mild"): "2 degrees, inner crop", ("rotate", "strong"): "5 degrees, inner crop",
    ("mirror", "mild"): "left-right mirror", ("mirror", "strong"): "top-bottom mirror",
    ("rot90", "mild"): "90 degrees", ("rot90", "strong"): "270 degrees",
    ("letterbox", "mild"): "black bars to 16:9 / 9:16 (or 8% bars)", ("letterbox", "strong"):
        "white border 15% of each side",
    ("crop", "mild"): "90% of each side, random offset", ("crop", "strong"): "80% of each side, random offset",
    ("bright", "mild"): "brightness x1.25", ("bright", "strong"): "brightness x0.6, contrast x0.6",
    ("grey", "mild"): "greyscale", ("grey", "strong"): "greyscale, contrast x1.4, JPEG q60",
    ("text", "mild"): "caption in a corner", ("text", "strong"): "large two-line watermark across the middle",
}
EDIT_KINDS = tuple(dict.fromkeys(k for k, _ in EDITS))
# The copies each look-alike gets: the everyday ones (a re-saved and a downsized copy). Fewer than EDITS, so
# the look-alikes add ~650 files rather than ~4,500.
NEGATIVE_EDITS = (("jpeg", "mild"), ("resize", "mild"))


@dataclass(frozen=True)
class CorpusFile:
    path: str
    family: str        # source picture; files of one family are duplicates of each other
    kind: str          # "original" or an edit kind
    level: str         # "", "mild" or "strong"
    split: str         # "tune" or "test" (the main corpus's halves), "audit" (the audit corpus)
    negative: str = ""  # look-alike kind (LOOKALIKE_KINDS) of a hard-negative family, "" for the others


# ------------------------------------------------------------------------------------------------
# Sources

_DEBIAN = ("ukui-wallpapers", "lomiri-wallpapers", "desktop-base", "mate-backgrounds")
# desktop-base and mate ship several versions of one picture: the one file kept per family.
_DESKTOP_BASE = ("emerald-theme_grub_grub-16x9", "futureprototype-theme_grub_grub-16x9",
                 "homeworld-theme_grub_grub-16x9", "joy-theme_grub_grub-16x9", "lines-theme_grub_grub-4x3",
                 "moonlight-theme_grub_grub-16x9", "softwaves-theme_grub_grub-16x9",
                 "spacefun-theme_grub_grub-16x9", "previews_fullscreenpreview")
# Flow, Gulp, Silk, Spring and Waves are transparent overlays: flat white once composited, no picture.
_MATE_SKIP = ("Elephants_3840x2160", "Elephants_5640x3172", "MATE-Stripes", "Ubuntu-Mate-Radioactive",
              "Ubuntu-Mate-Warm", "Ubuntu-Mate-Cold", "Arc-Colors", "Flow", "Gulp", "Silk", "Spring", "Waves")
# skimage/data pictures that are real, not tiny and not synthetic; motorcycle_right is the stereo twin
# of motorcycle_left, so it is left out.
_SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
            "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
            "ihc.png", "logo.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg",
            "text.png")


def fetch_sources(cache_dir: str) -> str:
    """Unpack what the corpus needs under cache_dir/corpus_src (idempotent); returns that folder.

    Downloads with the ordinary clients only: `apt-get download mate-backgrounds` (unpacked with dpkg-deb,
    never installed) and `pip download --no-deps scikit-image` (read as a zip). A failed download leaves
    that source out; the corpus is then smaller, and the report says how many families it used. The
    look-alikes' packages are fetched the same way by lookalikes.py.
    """
    dest = os.path.join(cache_dir, "corpus_src")
    os.makedirs(dest, exist_ok=True)
    unpack_deb(cache_dir, "mate-backgrounds", os.path.join(dest, "debian", "mate-backgrounds"),
               ("./usr/share/backgrounds/mate/*",))
    sk = os.path.join(dest, "skimage")
    if not os.path.exists(os.path.join(sk, ".done")):
        wheel = _find(os.path.join(cache_dir, "wheels"), "scikit_image-")
        if wheel is None:
            os.makedirs(os.path.join(cache_dir, "wheels"), exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", os.path.join(cache_dir, "wheels"), "scikit-image"], check=False)
            wheel = _find(os.path.join(cache_dir, "wheels"), "scikit_image-")
        if wheel is not None:
            os.makedirs(sk, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                for name in _SKIMAGE:
                    try:
                        data = z.read(f"skimage/data/{name}")
                    except KeyError:
                        continue
                    with open(os.path.join(sk, name), "wb") as f:
                        f.write(data)
            open(os.path.join(sk, ".done"), "w").close()
    return dest


def _find(folder: str, prefix: str) -> str | None:
    if not os.path.isdir(folder):
        return None
    hits = sorted(f for f in os.listdir(folder) if f.startswith(prefix))
    return os.path.join(folder, hits[-1]) if hits else None


def source_pictures(photos_src: str, corpus_src: str) -> list[tuple[str, str]]:
    """[(family name, path)] of one picture per family, sorted by name."""
    out = []
    for pkg in _DEBIAN[:2]:
        d = os.path.join(photos_src, pkg)
        if os.path.isdir(d):
            out += [(f"{pkg}/{f}", os.path.join(d, f)) for f in os.listdir(d)
                    if f.lower().endswith((".jpg", ".png"))]
    d = os.path.join(photos_src, "desktop-base")
    if os.path.isdir(d):
        for f in os.listdir(d):
            if any(key in f for key in _DESKTOP_BASE):
                out.append((f"desktop-base/{f}", os.path.join(d, f)))
    d = os.path.join(corpus_src, "debian", "mate-backgrounds", "usr", "share", "backgrounds", "mate")
    for dp, _, fs in os.walk(d):  # abstract/, desktop/ and nature/; the file names are unique across them
        out += [(f"mate/{f}", os.path.join(dp, f)) for f in fs
                if f.lower().endswith((".jpg", ".png")) and not any(f.startswith(s) for s in _MATE_SKIP)]
    d = os.path.join(corpus_src, "skimage")
    if os.path.isdir(d):
        out += [(f"skimage/{f}", os.path.join(d, f)) for f in os.listdir(d) if f in _SKIMAGE]
    return sorted(out)


# The audit corpus: pictures from packages no threshold, rule or head was ever tuned or trained on (the main
# corpus's held-out half has been looked at while the pair test was built, README "Accuracy"), with the same
# edits. Each entry: (package, family prefix, members to unpack, folder of the pictures under the unpacked tree).
_AUDIT = (
    ("gnome-backgrounds", "gnome", ("./usr/share/backgrounds/gnome/*.webp",), "usr/share/backgrounds/gnome"),
    ("plasma-workspace-wallpapers", "plasma", ("./usr/share/wallpapers/*",), "usr/share/wallpapers"),
    ("xfdesktop4-data", "xfce", ("./usr/share/backgrounds/xfce/*",), "usr/share/backgrounds/xfce"),
    ("lomiri-wallpapers-20.04", "lomiri-20.04", ("./usr/share/backgrounds/*",), "usr/share/backgrounds"),
    ("sway-backgrounds", "sway", ("./usr/share/backgrounds/sway/Sway_Wallpaper_Blue_1920x1080.png",),
     "usr/share/backgrounds/sway"),
)
AUDIT_SEED = 2  # the look-alikes' seed in the audit (the main corpus's tune halves were built with 0 and 1)


def audit_pictures(cache_dir: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(family, path)] of one picture per family, [(family, path)] of theme variants) from the audit
    packages (_AUDIT), fetched and unpacked once under cache_dir/corpus_src/audit.

    GNOME ships each design light and dark (adwaita-l / adwaita-d) and Plasma some dark versions
    (images_dark): the other colouring of one design is no copy of it, so the light one is a family with
    every edit and the dark one a look-alike of kind "variant". Plasma's several sizes of one wallpaper are
    one family (the widest landscape file up to 2560 px is used)."""
    root = os.path.join(cache_dir, "corpus_src", "audit")
    ordinary: list[tuple[str, str]] = []
    variants: list[tuple[str, str]] = []
    for package, prefix, members, folder in _AUDIT:
        dest = os.path.join(root, package)
        if not unpack_deb(cache_dir, package, dest, members):
            continue
        d = os.path.join(dest, folder)
        if prefix == "plasma":
            for name in sorted(os.listdir(d)):
                for sub, out in (("images", ordinary), ("images_dark", variants)):
                    pick = _widest(os.path.join(d, name, "contents", sub))
                    if pick:
                        out.append((f"{prefix}/{name}" + ("-dark" if sub == "images_dark" else ""), pick))
            continue
        for f in sorted(os.listdir(d)):
            if not f.lower().endswith((".jpg", ".png", ".webp")):
                continue
            family = f"{prefix}/{f}"
            (variants if prefix == "gnome" and f.rsplit(".", 1)[0].endswith("-d") else ordinary).append(
                (family, os.path.join(d, f)))
    return ordinary, variants


def _widest(folder: str) -> str | None:
    """The landscape WxH.ext file of folder that is widest up to 2560 px (else the narrowest beyond it)."""
    if not os.path.isdir(folder):
        return None
    sizes = []
    for f in os.listdir(folder):
        w, _, h = f.rsplit(".", 1)[0].partition("x")
        if w.isdigit() and h.isdigit() and int(w) > int(h):
            sizes.append((int(w), f))
    if not sizes:
        return None
    small = [x for x in sizes if x[0] <= 2560]
    return os.path.join(folder, max(small)[1] if small else min(sizes)[1])


def split_of(family: str) -> str:
    """'tune' or 'test', a fixed hash of the family name: about half each, independent of the package."""
    return "tune" if hashlib.sha256(family.encode()).digest()[0] % 2 == 0 else "test"


# ------------------------------------------------------------------------------------------------
# Edits


def _font(size: int):
    for f in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf"):
        if os.path.exists(f):
            return ImageFont.truetype(f, size)
    return ImageFont.load_default()


def _inner_rotate(im: Image.Image, deg: float) -> Image.Image:
    """Rotate by deg and crop the largest centred rectangle of the same aspect with no filled corner."""
    w, h = im.size
    r = im.rotate(deg, resample=Image.Resampling.BICUBIC, expand=False)
    a = np.deg2rad(abs(deg))
    # The centred w' x h' rectangle (same aspect) fits inside the rotated one when
    # w' cos + h' sin <= w and w' sin + h' cos <= h.
    k = min(w / (w * np.cos(a) + h * np.sin(a)), h / (w * np.sin(a) + h * np.cos(a)))
    cw, ch = int(w * k), int(h * k)
    left, top = (w - cw) // 2, (h - ch) // 2
    return r.crop((left, top, left + cw, top + ch))


def _letterbox(im: Image.Image, strong: bool) -> Image.Image:
    w, h = im.size
    if strong:
        b = int(0.15 * w), int(0.15 * h)
        return ImageOps.expand(im, border=(b[0], b[1], b[0], b[1]), fill=(255, 255, 255))
    # Pad to 16:9 (landscape) or 9:16 (portrait) with black, as a video frame or a phone screenshot does;
    # an image already that shape gets 8% bars top and bottom.
    if w >= h:
        nw, nh = w, max(int(round(w * 9 / 16)), h)
        if nh - h < 0.08 * h:
            nh = int(h * 1.16)
    else:
        nw, nh = max(int(round(h * 9 / 16)), w), h
        if nw - w < 0.08 * w:
            nw = int(w * 1.16)
    canvas = Image.new("RGB", (nw, nh), (0, 0, 0))
    canvas.paste(im, ((nw - w) // 2, (nh - h) // 2))
    return canvas


def _text(im: Image.Image, strong: bool, rng: np.random.Generator) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    if strong:
        font = _font(max(12, h // 8))
        for i, line in enumerate(("SAMPLE  COPY", "(c) 2024 imgsim")):
            d.text((w // 12, h // 3 + i * h // 6), line, font=font, fill=(255, 255, 255),
                   stroke_width=max(1, h // 200), stroke_fill=(0, 0, 0))
    else:
        font = _font(max(10, h // 20))
        d.text((w // 30, h - h // 10), f"IMG_{int(rng.integers(1000, 9999))}.jpg  2019-07-14", font=font,
               fill=(255, 255, 0))
    return im


def apply_edit(im: Image.Image, kind: str, level: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """(edited RGB image, save options) for one EDITS entry."""
    strong = level == "strong"
    w, h = im.size
    save = {"format": "JPEG", "quality": 90}
    if kind == "jpeg":
        save["quality"] = 20 if strong else 70
        out = im
    elif kind == "resize":
        f = 0.2 if strong else 0.5
        out = im.resize((max(96, int(w * f)), max(96, int(h * f))), Image.Resampling.BILINEAR)
        save["quality"] = 85
    elif kind == "rotate":
        out = _inner_rotate(im, 5.0 if strong else -2.0)
    elif kind == "mirror":
        out = ImageOps.flip(im) if strong else ImageOps.mirror(im)
        save = {"format": "PNG"}
    elif kind == "rot90":
        out = im.transpose(Image.Transpose.ROTATE_270 if strong else Image.Transpose.ROTATE_90)
    elif kind == "letterbox":
        out = _letterbox(im, strong)
        save = {"format": "PNG"}
    elif kind == "crop":
        f = 0.8 if strong else 0.9
        cw, ch = int(w * f), int(h * f)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = im.crop((left, top, left + cw, top + ch))
    elif kind == "bright":
        if strong:
            out = ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(0.6)).enhance(0.6)
        else:
            out = ImageEnhance.Brightness(im).enhance(1.25)
    elif kind == "grey":
        g = im.convert("L")
        if strong:
            g = ImageEnhance.Contrast(g).enhance(1.4)
            save["quality"] = 60
        out = g
    elif kind == "text":
        out = _text(im, strong, rng)
    else:
        raise ValueError(f"unknown edit kind {kind!r}")
    return out, save


# ------------------------------------------------------------------------------------------------
# Build


def build_corpus(photos_src: str, cache_dir: str, quick: bool = False, seed: int = 0,
                 audit: bool = False, full_size: bool = False) -> list[CorpusFile]:
    """Build (once; cached under cache_dir/accuracy_corpus[-quick][-full], or audit_corpus[-full]) and return
    the labelled files.

    quick: 10 ordinary families and 3 look-alikes of each kind, for a smoke run. audit: the audit corpus
    instead (audit_pictures, look-alikes of AUDIT_SEED, every file in split "audit"). A labels.json beside
    the files records families, kinds, splits and look-alike kinds; its version and the source list decide
    whether a cached corpus is reused. full_size: the pictures at the size they come in, not at most MAX_SIDE
    (the same families, edits and seed; another folder).
    """
    variants: list[tuple[str, str]] = []
    if audit:
        sources, variants = audit_pictures(cache_dir)
        seed = AUDIT_SEED
        where = "the audit packages (" + ", ".join(a[0] for a in _AUDIT) + ")"
    else:
        corpus_src = fetch_sources(cache_dir)
        sources = source_pictures(photos_src, corpus_src)
        where = f"{photos_src} or {corpus_src}: run scripts/fetch_photos.sh"
    if quick:
        sources = sources[::max(1, len(sources) // 10)][:10]
    if not sources:
        raise FileNotFoundError(f"no source pictures under {where}")
    # (family, picture, look-alike kind, edits): the ordinary families get every edit, look-alikes a few.
    todo = [(family, src, "", tuple(EDITS)) for family, src in sources]
    lookalikes = build_lookalikes(cache_dir, seed)
    if quick:
        lookalikes = [x for k in LOOKALIKE_KINDS for x in [x for x in lookalikes if x[0] == k][:3]]
    lookalikes += [("variant", family, path) for family, path in variants]
    todo += [(f"lookalike/{kind}/{name}", path, kind, NEGATIVE_EDITS) for kind, name, path in lookalikes]
    root = os.path.join(cache_dir, ("audit_corpus" if audit else "accuracy_corpus") + ("-quick" if quick else "")
                        + ("-full" if full_size else ""))
    labels_path = os.path.join(root, "labels.json")
    key = {"version": CORPUS_VERSION, "lookalikes": LOOKALIKES_VERSION, "seed": seed,
           "sources": [t[0] for t in todo], **({"max_side": None} if full_size else {})}
    if os.path.exists(labels_path):
        with open(labels_path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("key") == key:
            return [_file(root, r) for r in doc["files"]]
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for fi, (family, src, negative, edits) in enumerate(todo):
        split = "audit" if audit else split_of(family)
        with Image.open(src) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im.convert("RGBA"))
            im = im.convert("RGB")
        if not full_size:
            im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        stem = f"f{fi:03d}"
        orig = f"{stem}_original.png"
        im.save(os.path.join(root, orig))
        rows.append({"path": orig, "family": family, "kind": "original", "level": "", "split": split,
                     "negative": negative})
        for (kind, level) in edits:
            out, save = apply_edit(im, kind, level, rng)
            ext = ".png" if save["format"] == "PNG" else ".jpg"
            name = f"{stem}_{kind}_{level}{ext}"
            out.save(os.path.join(root, name), **save)
            rows.append({"path": name, "family": family, "kind": kind, "level": level, "split": split,
                         "negative": negative})
    with replacing(labels_path) as f:
        json.dump({"key": key, "edits": {f"{k}/{l}": v for (k, l), v in EDITS.items()}, "files": rows}, f,
                  indent=1)
    return [_file(root, r) for r in rows]


def _file(root: str, row: dict) -> CorpusFile:
    return CorpusFile(os.path.join(root, row["path"]), row["family"], row["kind"], row["level"], row["split"],
                      row["negative"])


if __name__ == "__main__":  # python -m imgsim_fast.bench.corpus [--quick]: build it and print a summary
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    files = build_corpus(os.path.join(repo, ".cache", "photos"), os.path.join(repo, ".cache"),
                         quick="--quick" in sys.argv)
    fams = {f.family for f in files}
    print(f"{len(files)} files, {len(fams)} families "
          f"({sum(1 for f in fams if split_of(f) == 'tune')} tune, "
          f"{sum(1 for f in fams if split_of(f) == 'test')} test)")
    for k in LOOKALIKE_KINDS:
        fk = {f.family: f.split for f in files if f.negative == k}
        print(f"  look-alike {k:10}: {len(fk)} families ({sum(1 for s in fk.values() if s == 'tune')} tune, "
              f"{sum(1 for s in fk.values() if s == 'test')} test)")
