"""What dedup knows about each file: content digest, header facts, border-trimmed dihedral pHash, embeddings.

One decode per file (JPEGs draft-decoded to about FEATURE_SIDE px), in worker processes. Uniform borders
(letterbox bars, mats, frames) are trimmed from the decoded small image before hashing and embedding, so a
letterboxed copy hashes like its original. With embeddings, two views are embedded: the trimmed picture and
its centre EMBED_CROP (a cropped copy is close to its original's centre; detect.py compares them
crosswise). hashing.py is unchanged: its compat mode still gives imagehash's codes; the trim is dedup's own preparation step (`trim_uniform_borders`).
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..hashing import PHASH_HIGHFREQ_FACTOR, phash_dihedral
from ..loading import ImageLoadError, LoadFailure, iter_image_files, load_image, open_regular

__all__ = ["FileFacts", "Features", "compute_features", "file_digest", "trim_box", "trim_tolerance",
           "trim_uniform_borders"]

# Decoded short side: enough for a 224 px embedding input and for finding a border to within 1/256.
FEATURE_SIDE = 256
# A border line is "uniform" when TRIM_FRACTION of its pixels are within the tolerance of the outermost
# line's median. Measured in grey (L), not per RGB channel, so a greyscale copy trims exactly as its colour
# original does. 98% lets a few noisy pixels through. The tolerance is relative to the picture's contrast
# (TRIM_CONTRAST x the grey standard deviation of its centre half, which a frame or letterbox bar does not
# reach), at least TRIM_TOLERANCE_MIN levels: with a fixed 10 levels, a darker, flatter copy (brightness
# x0.6, contrast x0.6) turned a wallpaper's smooth gradient into "border" its original kept, and the two
# hashed apart (tune half of the accuracy corpus: strong brightness recall 0.76 with a fixed tolerance,
# 1.0 with 0.2 x std). 0.2 x std is about 10 levels at a typical photo's std of 50.
TRIM_CONTRAST = 0.2
TRIM_TOLERANCE_MIN = 2.0
TRIM_FRACTION = 0.98
# Trims under this fraction of a side are ignored: they change a hash by less than the trim's own jitter
# between a picture and its recompressed copy would.
TRIM_MIN = 0.02
# The second embedded view: the centre 80% of each side of the trimmed picture. An 80% crop at any offset
# is then at most 12.5% of its side away from that view, where it is 25% larger than the whole picture.
# Tune half, pair test at the default thresholds: strong-crop (80%) recall 0.85 -> 0.94 with the crosswise
# cosine (detect.PairJudge.cosine, discounted), 1.0 with groups, no new false pair; a 90% or 70% view found
# one crop fewer. Cost: one more 224 px forward pass per file (~17 ms on one CPU core pair).
EMBED_CROP = 0.8
# Never trim more than this fraction of a side in total: a picture that is mostly flat (a logo on white)
# keeps its content box, and a flat image is left whole.
TRIM_MAX = 0.8
_HASH_SIDE = 8 * PHASH_HIGHFREQ_FACTOR


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of a file's bytes: equal digests mean byte-identical files."""
    h = hashlib.blake2b(digest_size=16)
    with open_regular(path) as f:  # a FIFO or /dev/zero is refused, not read forever
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class FileFacts:
    """What keep-best and the reports need about one file, without its pixels."""

    path: str
    size: int
    mtime: float
    width: int          # upright pixels, from the decoded image scaled back to full size
    height: int
    format: str         # Pillow's format name: JPEG, PNG, WEBP, ...
    content_pixels: int  # width * height (keep-best's pixel count)
    digest: str
    trim: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # kept box, fractions (left, top, right, bottom)


@dataclass
class Features:
    """Rows aligned with `facts`: dihedral pHash (n, 8, 1) uint64, embeddings (n, dim) of the trimmed picture
    and centre_embeddings (n, dim) of its centre EMBED_CROP, or None."""

    facts: list[FileFacts]
    phash8: np.ndarray
    embeddings: np.ndarray | None = None
    failures: list[LoadFailure] = field(default_factory=list)
    model: str | None = None
    centre_embeddings: np.ndarray | None = None

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.facts]

    def __len__(self) -> int:
        return len(self.facts)


# ------------------------------------------------------------------------------------------------
# Border trimming


def _uniform_run(lines: np.ndarray, tolerance: float) -> int:
    """How many leading lines of (k, L) int16 grey levels are uniform in the first line's level."""
    dev = np.abs(lines - np.median(lines[0]))
    ok = (dev <= tolerance).mean(axis=1) >= TRIM_FRACTION
    if not ok[0]:
        return 0
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else len(ok)


def trim_tolerance(a: np.ndarray) -> float:
    """Grey levels a border line may deviate by: TRIM_CONTRAST x std of the centre half of a (h, w) image.

    Scales with the picture's contrast, so a brightness/contrast-edited copy trims as its original does.
    """
    h, w = a.shape
    centre = a[h // 4:h - h // 4, w // 4:w - w // 4] if h >= 4 and w >= 4 else a
    return max(TRIM_TOLERANCE_MIN, TRIM_CONTRAST * float(centre.std()))


def trim_box(a: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the content of an (h, w) grey uint8 image with uniform borders removed.

    Each side independently: its outermost line must be uniform (TRIM_FRACTION of pixels within
    trim_tolerance(a) of the line's median colour), and the trim goes on while lines stay uniform in that
    colour, plus one line for the resampling and JPEG blur at the edge. At most TRIM_MAX of a side goes.
    """
    if a.ndim != 2:
        raise ValueError(f"trim_box needs a 2-D grey image, got shape {a.shape}")
    tol = trim_tolerance(a)
    a = a.astype(np.int16)
    h, w = a.shape
    top, bottom, left, right = (_uniform_run(x, tol) for x in (a, a[::-1], a.T, a.T[::-1]))
    top, bottom = ((t + 1 if t >= TRIM_MIN * h else 0) for t in (top, bottom))
    left, right = ((t + 1 if t >= TRIM_MIN * w else 0) for t in (left, right))
    if top + bottom > TRIM_MAX * h:
        top = bottom = 0
    if left + right > TRIM_MAX * w:
        left = right = 0
    return left, top, w - right, h - bottom


def trim_uniform_borders(img: Image.Image) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """(img cropped to its content box, the box as fractions of the size)."""
    left, top, right, bottom = trim_box(np.asarray(img if img.mode == "L" else img.convert("L")))
    w, h = img.size
    box = (left / w, top / h, right / w, bottom / h)
    if (left, top, right, bottom) == (0, 0, w, h):
        return img, box
    return img.crop((left, top, right, bottom)), box


# ------------------------------------------------------------------------------------------------
# Per file (worker side)


def _header(path: str) -> tuple[int, int, str]:
    """Upright (width, height) and format from the header only (metadata.read_metadata parses it)."""
    from ..metadata import read_metadata

    md = read_metadata(path, sidecars=[])
    return int(md.width or 0), int(md.height or 0), md.format or "?"


def prepare_file(path: str, embed_size: int | None) -> tuple:
    """(FileFacts, 32x32 uint8 hash pixels, embedding inputs (2, s, s, 3) uint8 or None) for one file.

    The first embedding input is the trimmed picture squashed to s x s: the whole content, not a centre
    crop, because a crop of a wide picture would miss what an off-centre crop of it kept. The second is its
    centre EMBED_CROP, squashed likewise: what a cropped copy of the picture looks like.
    """
    st = os.stat(path)
    digest = file_digest(path)
    img = load_image(path, min_size=(FEATURE_SIDE, FEATURE_SIDE))
    width, height, fmt = _header(path)
    if not width or not height:
        width, height = img.size
    factor = min(img.size) // FEATURE_SIDE
    if factor > 1:
        img = img.reduce(factor)
    trimmed, box = trim_uniform_borders(img)
    gray = trimmed.convert("L") if trimmed.mode != "L" else trimmed
    hp = np.asarray(gray.resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS))
    ep = None
    if embed_size:
        rgb = trimmed.convert("RGB") if trimmed.mode != "RGB" else trimmed
        w, h = rgb.size
        mx, my = (1 - EMBED_CROP) / 2 * w, (1 - EMBED_CROP) / 2 * h
        centre = rgb.crop((round(mx), round(my), round(w - mx), round(h - my)))
        ep = np.stack([np.asarray(v.resize((embed_size, embed_size), Image.Resampling.BICUBIC), dtype=np.uint8)
                       for v in (rgb, centre)])
    # Keep-best counts the file's pixels, not the trimmed box: a trim depends on how flat the border stays
    # after compression, so a JPEG copy could out-rank its own PNG original by a few lines.
    content = width * height
    facts = FileFacts(path, st.st_size, st.st_mtime, width, height, fmt, content, digest, box)
    return facts, hp, ep


def _prepare_chunk(items: list[tuple[int, str]], embed_size: int | None) -> list[tuple[int, object]]:
    """(input position, features or LoadFailure) for each (position, path)."""
    out = []
    for i, p in items:
        try:
            out.append((i, prepare_file(p, embed_size)))
        except ImageLoadError as exc:
            out.append((i, exc.to_failure()))
        except OSError as exc:
            out.append((i, LoadFailure(p, f"{exc.strerror or exc}", "io_error")))
        except Exception as exc:  # one odd file must not end the run
            out.append((i, LoadFailure(p, f"unexpected {type(exc).__name__}: {exc}", "error")))
    return out


def _failed_item(item: tuple[int, str], reason: str, kind: str, cfg) -> list[tuple[int, LoadFailure]]:
    i, path = item
    return [(i, LoadFailure(path, reason, kind))]


# ------------------------------------------------------------------------------------------------
# Batch (parent side)


def compute_features(paths_or_roots, *, embed: bool | str = False, workers: int | None = None,
                     progress: bool | None = None, device=None) -> Features:
    """Features of image files and folders (walked like `imgsim hash`); bad files become failures.

    embed: False, True (the default model, efficientnet-lite0, shipped weights) or a model name.
    workers: decode processes (None: all cores; 1: in this process).
    """
    from ..pipeline import _progress_bar, default_workers, run_pool

    failures: list[LoadFailure] = []
    paths = list(iter_image_files(paths_or_roots, on_error=failures.append))
    model = None
    embed_size = None
    if embed:
        from ..embedding import get_model

        model = get_model("efficientnet-lite0" if embed is True else embed, device)
        embed_size = model.spec.size
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    chunk = max(1, min(16, math.ceil(len(paths) / (4 * workers)))) if paths else 1
    items = list(enumerate(paths))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    facts, hpix, epix = [], [], []
    bar = _progress_bar(len(paths), progress)
    try:
        if workers == 1 or len(chunks) <= 1:
            results = [_prepare_chunk(c, embed_size) for c in chunks]
            bar.update(len(paths))
        else:
            # The hashing pipeline's pool: a decoder that kills its worker costs only its own file.
            results = run_pool(_prepare_chunk, chunks, embed_size, workers, bar.update, _failed_item)
    finally:
        bar.close()
    for _, r in sorted((x for res in results for x in res), key=lambda x: x[0]):
        if isinstance(r, LoadFailure):
            failures.append(r)
        else:
            facts.append(r[0])
            hpix.append(r[1])
            epix.append(r[2])
    phash8 = phash_dihedral(np.stack(hpix)) if hpix else np.zeros((0, 8, 1), np.uint64)
    emb = centre = None
    if model is not None:
        both = _embed(model, [v for e in epix for v in e], progress)
        emb, centre = both[0::2].copy(), both[1::2].copy()
    return Features(facts, phash8, emb, failures, model.name if model is not None else None, centre)


def _embed(model, arrays: list, progress, batch: int = 32) -> np.ndarray:
    import torch

    out = np.empty((len(arrays), model.dim), np.float32)
    for s in range(0, len(arrays), batch):
        x = torch.from_numpy(np.stack(arrays[s:s + batch]))
        out[s:s + batch] = model.embed_pixels(x).cpu().numpy()
    return out


if __name__ == "__main__":  # pragma: no cover - debugging aid: print the trim box of files
    for p in sys.argv[1:]:
        print(p, trim_uniform_borders(load_image(p, min_size=(FEATURE_SIDE, FEATURE_SIDE)))[1])
