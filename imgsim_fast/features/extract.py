"""What dedup knows about each file: content digest, header facts, border-trimmed dihedral pHash, embeddings.

One decode per file (JPEGs draft-decoded to about FEATURE_SIDE px), in worker processes. Uniform borders
(letterbox bars, mats, frames) are trimmed from the decoded small image before hashing and embedding, so a
letterboxed copy hashes like its original. With embeddings, two views are embedded: the trimmed picture and
its centre EMBED_CROP (a cropped copy is close to its original's centre; detect.py compares them
crosswise). hashing.py is unchanged: its compat mode still gives imagehash's codes; the trim is dedup's own preparation step (`trim_uniform_borders`).
"""
from __future__ import annotations

import io
import math
import os
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from imgsim_fast.io.digest import bytes_digest, file_digest
from imgsim_fast.features.hashing import (PHASH_HIGHFREQ_FACTOR, draft_size, hash_images, phash_dihedral,
                                         prepare_fast)
from imgsim_fast.io.loading import (DEFAULT_MAX_PIXELS, DEFAULT_MEMORY_BUDGET, RAW_EXTENSIONS, ImageLoadError,
                                     LoadFailure, iter_image_files, load_image, read_file)

__all__ = ["ExtractSpec", "Extracted", "FileFacts", "Features", "embed_inputs", "extract_chunk", "extract_file",
           "extract_many", "blockiness", "compute_features", "estimate_jpeg_quality", "file_digest",
           "noise_sigma", "reduce_to_feature_side", "trim_box", "trim_tolerance", "trim_uniform_borders",
           "PREP_VERSION", "PREP_TAG"]

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
# Borders inside borders: letterbox bars or a mat around a picture that has a flat margin of its own. One
# pass took only the outer border, so the letterboxed copy kept the margin its original had trimmed: the two
# hashed apart, and the copy outranked the original on content (tune half of the accuracy corpus: letterbox
# recall 0.85 -> 1.0 with three passes, crops 0.94 -> 1.0, no new false pair). The passes share the first
# one's tolerance and TRIM_MAX of each side in all.
TRIM_PASSES = 3
# The version of dedup's preparation of a picture (the trim, and so the hashes, thumbnails, embeddings and
# facts made from it): dedup's catalog arrays and the pixel checks stored by content are named by it, so
# what an earlier preparation made is made again rather than mixed with this one's. 2: nested borders.
# 3: large pictures reduced on a grid that flips and turns with them (reduce_to_feature_side).
PREP_VERSION = 3
PREP_TAG = f"p{PREP_VERSION}"  # how names and keys carry it (catalog arrays dedup-*-p3, pixel check keys)
_HASH_SIDE = 8 * PHASH_HIGHFREQ_FACTOR
# The thumbnail kept for the pixel check of the pair test (jobs/dedup/verify.py). At 128 px the words on
# slides of one template and a subject a step further in a burst still differ where 64 px blurs them into
# the same grey bars (tune half of the accuracy corpus: the closest look-alike pair changes 1.7% at 128 px,
# 1.0% at 64 px, where copies reach 1.1%); 16 KiB a file.
THUMB_SIDE = 128


@dataclass
class FileFacts:
    """What keep-best and the reports need about one file, without its pixels (keep.py ranks on these)."""

    path: str
    size: int
    mtime: float
    width: int          # upright pixels of the file
    height: int
    format: str         # Pillow's format name: JPEG, PNG, WEBP, ...
    content_pixels: int  # pixels inside the trimmed box (bars and frames do not count), at full size
    digest: str
    trim: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # kept box, fractions (left, top, right, bottom)
    jpeg_quality: int | None = None  # libjpeg quality estimated from the luminance quantisation table
    blocky: bool = False     # a lossless file whose pixels carry an 8-periodic edge grid (not ranked on: keep._generation)
    noise: float = 0.0       # grey noise sigma (Immerkaer) of the small decoded picture
    colour: bool = True      # False for a greyscale picture (or a colour file holding a grey one)
    camera: bool = False     # EXIF names a camera make or model

    @property
    def content_aspect(self) -> float:
        """Long side / short side of the trimmed content, at full size: a squashed copy differs here."""
        left, top, right, bottom = self.trim
        w, h = max(1e-9, (right - left) * self.width), max(1e-9, (bottom - top) * self.height)
        return max(w, h) / min(w, h)


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
    # (n, THUMB_SIDE, THUMB_SIDE) uint8: the trimmed grey picture the hashes were computed from, kept for the
    # pair test's pixel check (jobs/dedup/verify.py); 16 KiB a file.
    thumbs: np.ndarray | None = None
    passed_over: list[str] = field(default_factory=list)  # files in walked folders not named like images
    # (n,) float32: each file's score as a designed page (embedding/pages.py), from the raw embeddings, set
    # where they are projected into the learned space (siamese.learned_features; the service's live index
    # keeps its own, service/live.py); None elsewhere.
    page_scores: np.ndarray | None = None

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.facts]

    def __len__(self) -> int:
        return len(self.facts)


# ------------------------------------------------------------------------------------------------
# Border trimming


def _uniform_run(lines: np.ndarray, tolerance: float) -> int:
    """How many leading lines of (k, L) int16 grey levels are uniform in the first line's level. Looked at in
    growing blocks from the edge: a run is most often a few lines long, and each line is judged alone."""
    level = np.median(lines[0])
    start, step = 0, 8
    while start < len(lines):
        block = lines[start:start + step]
        ok = (np.abs(block - level) <= tolerance).mean(axis=1) >= TRIM_FRACTION
        bad = np.flatnonzero(~ok)
        if len(bad):
            return start + int(bad[0])
        start, step = start + len(block), 2 * step
    return len(lines)


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
    colour, plus one line for the resampling and JPEG blur at the edge. Then again inside what is left, in
    whatever colour its own outer lines have (a border inside a border), up to TRIM_PASSES times. At most
    TRIM_MAX of a side goes in all.
    """
    if a.ndim != 2:
        raise ValueError(f"trim_box needs a 2-D grey image, got shape {a.shape}")
    tol = trim_tolerance(a)
    a = a.astype(np.int16)
    H, W = a.shape
    box = (0, 0, W, H)
    for _ in range(TRIM_PASSES):
        left0, top0, right0, bottom0 = box
        c = a[top0:bottom0, left0:right0]
        h, w = c.shape
        top, bottom, left, right = (_uniform_run(x, tol) for x in (c, c[::-1], c.T, c.T[::-1]))
        top, bottom = ((t + 1 if t >= TRIM_MIN * H else 0) for t in (top, bottom))
        left, right = ((t + 1 if t >= TRIM_MIN * W else 0) for t in (left, right))
        if (H - h) + top + bottom > TRIM_MAX * H:
            top = bottom = 0
        if (W - w) + left + right > TRIM_MAX * W:
            left = right = 0
        if not (top or bottom or left or right):
            break
        box = (left0 + left, top0 + top, right0 - right, bottom0 - bottom)
    return box


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


# libjpeg's luminance quantisation table at quality 50 (ITU-T T.81 Annex K, K.1), row by row: the natural
# order in which Pillow (8.3 and later) reports a file's tables. A file's table is this one scaled by libjpeg's
# quality rule, which estimate_jpeg_quality inverts. Held in zigzag order before, it read 31 of the 100
# qualities one or two off (90 as 91, 50 as 51, 20 as 18). Facts stored before (a catalog's, a feature set's)
# keep those estimates until their file changes: not worth PREP_VERSION, which would extract every stored file
# again and leave `imgsim serve` without dedup features until re-added, for an error that moves 8 of the 100
# qualities one generation class (keep.QUALITY_STEP) and none of 75, 80, 85, 90 or 95.
_JPEG_LUMA_Q50 = np.array([16, 11, 10, 16, 24, 40, 51, 61,
                           12, 12, 14, 19, 26, 58, 60, 55,
                           14, 13, 16, 24, 40, 57, 69, 56,
                           14, 17, 22, 29, 51, 87, 80, 62,
                           18, 22, 37, 56, 68, 109, 103, 77,
                           24, 35, 55, 64, 81, 104, 113, 92,
                           49, 64, 78, 87, 103, 121, 120, 101,
                           72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_QUALITIES = np.arange(1, 101)
_SCALES = np.where(_QUALITIES < 50, 5000 / _QUALITIES, 200 - 2 * _QUALITIES)
_TABLES = np.clip(np.floor((_JPEG_LUMA_Q50[None, :] * _SCALES[:, None] + 50) / 100), 1, 255)


def estimate_jpeg_quality(table) -> int | None:
    """The libjpeg quality (1-100) whose luminance table is closest to `table` (64 values), or None.

    Encoders with their own tables (cameras, Photoshop) land on the nearest libjpeg quality, which is what
    keep-best needs: a re-save at a lower quality has larger divisors, so a smaller estimate.
    """
    t = np.asarray(table, dtype=np.float64).ravel()
    if t.size != 64:
        return None
    # Compare in log space: a divisor of 2 against 1 is as far as 100 against 50.
    err = np.abs(np.log(_TABLES) - np.log(np.maximum(t, 1))[None, :]).sum(axis=1)
    return int(_QUALITIES[int(np.argmin(err))])


def _header_facts(path: str, data: bytes) -> tuple[int, int, str, int | None, bool]:
    """(upright width, height, format, JPEG quality estimate, camera EXIF present) from the header of the
    file's bytes `data` (nothing decoded).

    A camera RAW file (decoded by loading.load_image through rawpy, not Pillow) gives (0, 0, its extension,
    None, False): the caller then takes the size of what was decoded, the embedded preview.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in RAW_EXTENSIONS:
        return 0, 0, ext[1:].upper(), None, False
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        fmt = im.format or "?"
        q = None
        tables = getattr(im, "quantization", None)
        if fmt in ("JPEG", "MPO") and tables:
            q = estimate_jpeg_quality(tables.get(0, next(iter(tables.values()))))
        try:
            exif = im.getexif()
        except Exception:  # malformed EXIF: no camera, no orientation
            exif = {}
        camera = bool(str(exif.get(0x010F, "")).strip() or str(exif.get(0x0110, "")).strip())
        if exif.get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    return w, h, fmt, q, camera


# A lossless file re-saved from a JPEG keeps the JPEG's 8x8 block edges: the mean jump between pixel
# columns (rows) at one phase of 8 stands out from the other seven. It shows clearly for JPEGs of quality
# 90 and below, hardly at 95 (keep corpus: 1.0-1.45), and it also fires on pictures with a 2- or 4-pixel
# period (downscaled by a whole factor) and on screenshots, slides and icons drawn on an 8-pixel grid, so
# keep-best does not rank on it (keep._generation); a re-save is recognised by its pixels (keep.derived_from).
# Kept in the facts (and the catalog's FACTS rows) as measured.
BLOCK_RATIO = 1.25
_BLOCK_WINDOW = 1024


def blockiness(gray: np.ndarray) -> float:
    """Strongest 8-periodic edge ratio of a full-size grey image: max over phases / median of phases."""
    a = gray[:_BLOCK_WINDOW, :_BLOCK_WINDOW].astype(np.int16)
    ratios = []
    for d in (np.abs(np.diff(a, axis=1)).mean(axis=0), np.abs(np.diff(a, axis=0)).mean(axis=1)):
        if len(d) < 64:
            continue
        phase = np.array([d[p::8].mean() for p in range(8)])
        med = float(np.median(phase))
        if med > 0.5:  # a flat picture has no edges to compare
            ratios.append(float(phase.max()) / med)
    return max(ratios, default=1.0)


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (1996): mean |Laplacian-difference| x sqrt(pi/2) / 6."""
    a = gray.astype(np.float32)
    if min(a.shape) < 3:
        return 0.0
    c = (a[:-2, :-2] - 2 * a[:-2, 1:-1] + a[:-2, 2:] - 2 * a[1:-1, :-2] + 4 * a[1:-1, 1:-1] - 2 * a[1:-1, 2:]
         + a[2:, :-2] - 2 * a[2:, 1:-1] + a[2:, 2:])
    return float(np.abs(c).mean() * math.sqrt(math.pi / 2) / 6)


_LOSSLESS = frozenset({"PNG", "TIFF", "BMP", "GIF", "PPM", "QOI"})


# ------------------------------------------------------------------------------------------------
# The extraction pass: one read, one decode, everything every job needs


@dataclass(frozen=True)
class ExtractSpec:
    """What to extract from each file. Every consumer says what it needs; the file is read once and
    decoded once, at the largest size any consumer asks for (compat hashes: full size).

    kinds / mode / hash_size: the catalog's plain hash codes (hashing.hash_images).
    embed: the catalog's embedding input, prepared as the model was trained (embedding/preprocess.py).
    dedup: dedup's features (trimmed dihedral pHash pixels, thumbnail, keep-best facts); dedup_embed_size:
        also its two embedded views at this side.
    metadata: EXIF/XMP/IPTC from the same bytes, plus the sidecars and mapping entry of each item.
    skip_digests: a file of sorted hex digests (S32 rows): a file whose digest is there is digested (and
        its metadata read) but not decoded, because the catalog already holds what its decode would give.
    dihedral: also the 8 flips/rotations of the first kind's code (pHash only; variant 0 is that code), for
        the service's flip rule between stored files.
    digest: False leaves Extracted.digest None (a BLAKE2b pass over the bytes costs about as much as the
        reduced decode of a JPEG; `imgsim hash` needs none).
    """

    kinds: tuple = ()
    mode: str = "fast"
    hash_size: int = 8
    embed: object = None  # PreprocessSpec (kept untyped: this module must not import torch's side)
    dedup: bool = False
    dedup_embed_size: int | None = None
    metadata: bool = False
    skip_digests: str | None = None
    digest: bool = True
    dihedral: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_bytes: int | None = DEFAULT_MEMORY_BUDGET

    def grey_only(self) -> bool:
        """Every consumer reads grey levels only (fast-mode pHash, aHash, dHash, wHash): a JPEG can then be
        decoded straight to its luma plane. Compat mode decodes as imagehash does (RGB, then convert)."""
        return (bool(self.kinds) and self.mode == "fast" and "colorhash" not in self.kinds
                and self.embed is None and not self.dedup and not self.dihedral)

    def min_size(self) -> tuple[int, int] | None:
        """The decode size for every consumer at once; None: full size."""
        sides = []
        if self.kinds:
            d = draft_size(self.kinds, self.mode, self.hash_size)
            if d is None:
                return None
            sides.append(max(d))
        if self.embed is not None:
            sides.append(self.embed.min_decode_size)
        if self.dedup:
            sides.append(FEATURE_SIDE)
        side = max(sides, default=FEATURE_SIDE)
        return side, side


@dataclass
class Extracted:
    """What one read of one file gave. `failure` is set when the bytes were read (digest known) but the
    picture could not be decoded or hashed; `decoded` is False when the digest was in skip_digests."""

    path: str
    size: int
    digest: str | None
    metadata: object = None         # features.metadata.Metadata
    decoded: bool = False
    failure: LoadFailure | None = None
    codes: dict | None = None       # kind -> (words,) uint64
    embed_input: np.ndarray | None = None  # (s, s, 3) uint8
    codes8: np.ndarray | None = None  # (8, words) uint64: spec.dihedral
    dedup: tuple | None = None      # (FileFacts, (hash pixels, thumbnail), views (2, s, s, 3) or None)


_SKIP_CACHE: dict[str, np.ndarray] = {}


def _skipped(digest: str, table: str | None) -> bool:
    if table is None:
        return False
    known = _SKIP_CACHE.get(table)
    if known is None:
        known = _SKIP_CACHE[table] = np.fromfile(table, dtype="S32")
    key = np.bytes_(digest.encode())
    i = int(np.searchsorted(known, key))
    return i < len(known) and known[i] == key


def extract_file(path: str, spec: ExtractSpec, sidecars: list[str] | None = None,
                 mapping_entry: dict | None = None) -> Extracted:
    """One file, read once (`read_file`): digest, metadata, then one decode feeding every consumer of
    `spec`. Raises ImageLoadError only when the file cannot be read at all."""
    st = os.stat(path)
    try:
        data = read_file(path, spec.max_bytes)
    except ImageLoadError as exc:
        if exc.kind != "too_large":
            raise
        # Too large to hold: digested in chunks (a second read, of such files only), so the catalog records
        # the failure and does not try again until the file changes.
        return Extracted(path, st.st_size, file_digest(path) if spec.digest else None, failure=exc.to_failure())
    out = Extracted(path, len(data), bytes_digest(data) if spec.digest else None)
    if spec.metadata:
        from imgsim_fast.features.metadata import read_metadata

        out.metadata = read_metadata(path, sidecars=sidecars or [], mapping_entry=mapping_entry, data=data)
    if _skipped(out.digest, spec.skip_digests):
        return out
    try:
        img = load_image(path, min_size=spec.min_size(), max_pixels=spec.max_pixels, max_bytes=spec.max_bytes,
                         data=data, grey=spec.grey_only())
        out.decoded = True
        if spec.kinds:
            try:
                codes = hash_images([img], spec.kinds, spec.mode, spec.hash_size)
            except Exception as exc:  # noqa: BLE001 - the picture decoded, the hash did not: say which
                raise ImageLoadError(path, f"hashing failed: {type(exc).__name__}: {exc}", "hash_error") from exc
            out.codes = {k: v[0] for k, v in codes.items()}
            if spec.dihedral:
                out.codes8 = phash_dihedral(prepare_fast(img, "phash", spec.hash_size)[None])[0]
        if spec.embed is not None:
            from imgsim_fast.features.embedding.preprocess import prepare_image

            out.embed_input = prepare_image(img, spec.embed)
        if spec.dedup:
            out.dedup = _dedup_features(img, path, st, out.digest, _header_facts(path, data), spec.dedup_embed_size)
    except ImageLoadError as exc:
        out.failure = exc.to_failure()
    except MemoryError:
        out.failure = LoadFailure(path, "out of memory while decoding or resizing", "too_large")
    except Exception as exc:  # an odd decoder or a bug: this file fails, the run goes on
        out.failure = LoadFailure(path, f"unexpected {type(exc).__name__}: {exc}", "error")
    return out


def extract_chunk(items: list[tuple], spec: ExtractSpec) -> list[tuple[int, object]]:
    """Worker task: (position, Extracted or LoadFailure) for each (position, path[, sidecars, entry])."""
    out = []
    for item in items:
        i, p = item[0], item[1]
        try:
            out.append((i, extract_file(p, spec, *item[2:])))
        except ImageLoadError as exc:
            out.append((i, exc.to_failure()))
        except OSError as exc:
            out.append((i, LoadFailure(p, f"{exc.strerror or exc}", "io_error")))
        except Exception as exc:  # one odd file must not end the run
            out.append((i, LoadFailure(p, f"unexpected {type(exc).__name__}: {exc}", "error")))
    return out


def extract_failed(item: tuple, reason: str, kind: str, cfg) -> list[tuple[int, LoadFailure]]:
    """run_pool's stand-in result for an item whose worker died."""
    return [(item[0], LoadFailure(item[1], reason, kind))]


def extract_many(items: list[tuple], spec: ExtractSpec, workers: int, on_progress=None,
                 chunk_size: int | None = None, in_process: bool | None = None) -> list[tuple[int, object]]:
    """extract_chunk over `items` [(position, path[, sidecars, mapping entry])]: (position, Extracted or
    LoadFailure) for each, in position order. On the one pool (runtime/pool.run_pool: a decoder that kills
    its worker costs only its own file), or in this process when `in_process` says so (default: one worker
    or a single chunk). chunk_size: items per task (default: up to 16, about 4 tasks per worker)."""
    from imgsim_fast.runtime.pool import run_pool

    if not items:
        return []
    progress = on_progress or (lambda n: None)
    if chunk_size is None:
        chunk_size = max(1, min(16, math.ceil(len(items) / (4 * workers))))
    chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
    if in_process is None:
        in_process = workers == 1 or len(chunks) == 1
    if in_process:
        out = []
        for c in chunks:
            out += extract_chunk(c, spec)
            progress(len(c))
    else:
        out = [x for part in run_pool(extract_chunk, chunks, spec, min(workers, len(chunks)), progress,
                                      extract_failed) for x in part]
    return sorted(out, key=lambda x: x[0])


def reduce_to_feature_side(img: Image.Image) -> Image.Image:
    """`img` shrunk by the largest whole factor that keeps its shorter side at least FEATURE_SIDE (itself when
    that factor is 1; to the nearest whole size where the sides are not multiples of it), about the same way
    whichever way round the picture is: a flipped copy reduces to the flipped reduction, a quarter-turned one
    to within a grey level, but for a column or row where the box's edge falls on a pixel's centre (Pillow's
    box takes the pixel on its left edge and not the one on its right; a side of 1,801 halved: 1 column of 900).

    Image.reduce alone averages blocks from the top left corner and leaves a part block at the bottom and
    right, so a flipped or turned copy whose sides are not multiples of the factor was averaged on blocks
    shifted against its original's (up to 65 grey levels apart at edges): its trim was found elsewhere and its
    hash 12 bits off (a 3840 x 2400 wallpaper's top-bottom mirror, factor 9). Such pictures get a box filter
    onto a grid spanning the whole picture instead. 42 wallpapers, two flips and two turns each, at 5 such
    sizes (840 copies): trims off 40 -> 4, pHash more than 2 bits off 95 -> 17. A triangle filter flips
    exactly at every size (the same 840: 4 and 20) but agrees less with a JPEG decoded at a DCT scale, which
    averages blocks as a box does: a JPEG against its PNG copy, 126 pairs, trims off 8 (box), 8 (reduce), 15."""
    factor = min(img.size) // FEATURE_SIDE
    if factor <= 1:
        return img
    w, h = img.size
    if w % factor == 0 and h % factor == 0:
        return img.reduce(factor)  # whole blocks: exact sums, the same under every flip and turn
    return img.resize((round(w / factor), round(h / factor)), Image.Resampling.BOX)  # both sides >= 512 here


def _dedup_features(img: Image.Image, path: str, st: os.stat_result, digest: str, header: tuple,
                    embed_size: int | None) -> tuple:
    """(FileFacts, (32x32 hash pixels, THUMB_SIDE thumbnail) uint8, embedding inputs (2, s, s, 3) uint8 or None)
    from the decoded picture.

    The first embedding input is the trimmed picture squashed to s x s: the whole content, not a centre
    crop, because a crop of a wide picture would miss what an off-centre crop of it kept. The second is its
    centre EMBED_CROP, squashed likewise: what a cropped copy of the picture looks like.
    """
    width, height, fmt, quality, camera = header
    if not width or not height:
        width, height = img.size
    blocky = False
    if fmt in _LOSSLESS:  # decoded at full size anyway: look for a JPEG block grid before reducing
        blocky = blockiness(np.asarray(img.convert("L") if img.mode != "L" else img)) >= BLOCK_RATIO
    img = reduce_to_feature_side(img)
    colour = img.mode == "RGB" and _is_colour(np.asarray(img))
    trimmed, box = trim_uniform_borders(img)
    gray = trimmed.convert("L") if trimmed.mode != "L" else trimmed
    noise = noise_sigma(np.asarray(gray))
    hp = (np.asarray(gray.resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS)),
          np.asarray(gray.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)))
    ep = None
    if embed_size:
        rgb = trimmed.convert("RGB") if trimmed.mode != "RGB" else trimmed
        w, h = rgb.size
        mx, my = (1 - EMBED_CROP) / 2 * w, (1 - EMBED_CROP) / 2 * h
        centre = rgb.crop((round(mx), round(my), round(w - mx), round(h - my)))
        ep = np.stack([np.asarray(v.resize((embed_size, embed_size), Image.Resampling.BICUBIC), dtype=np.uint8)
                       for v in (rgb, centre)])
    # Keep-best counts the content inside the trimmed box, so letterbox bars and mats add nothing.
    content = round(width * height * (box[2] - box[0]) * (box[3] - box[1]))
    facts = FileFacts(path, st.st_size, st.st_mtime, width, height, fmt, content, digest, box,
                      quality, blocky, noise, colour, camera)
    return facts, hp, ep


def _is_colour(rgb: np.ndarray) -> bool:
    """More than a tint: the mean channel spread exceeds 4 levels (a sepia or grey JPEG stays under it)."""
    a = rgb.astype(np.int16)
    spread = np.abs(a[..., 0] - a[..., 1]) + np.abs(a[..., 1] - a[..., 2])
    return float(spread.mean()) > 4.0


def _prepare_chunk(items: list[tuple[int, str]], embed_size: int | None) -> list[tuple[int, object]]:
    """(input position, dedup features or LoadFailure) for each (position, path): extract_chunk with
    dedup's spec."""
    out = []
    for i, r in extract_chunk(items, ExtractSpec(dedup=True, dedup_embed_size=embed_size)):
        out.append((i, r if isinstance(r, LoadFailure) else (r.failure or r.dedup)))
    return out


# ------------------------------------------------------------------------------------------------
# Batch (parent side)


def compute_features(paths_or_roots, *, embed: bool | str = False, workers: int | None = None,
                     progress: bool | None = None, device=None, extensions=None) -> Features:
    """Features of image files and folders (walked like `imgsim hash`); bad files become failures.

    embed: False, True (the default model, efficientnet-lite0, shipped weights) or a model name.
    extensions: file name extensions taken from folders (None: loading.DEFAULT_EXTENSIONS).
    workers: decode processes (None: all cores; 1: in this process).
    """
    from imgsim_fast.runtime.pool import default_workers
    from imgsim_fast.runtime.progress import progress_bar

    failures: list[LoadFailure] = []
    passed_over: list[str] = []
    walk = {} if extensions is None else {"extensions": extensions}
    paths = list(iter_image_files(paths_or_roots, on_error=failures.append, on_skip=passed_over.append, **walk))
    model = None
    embed_size = None
    if embed:
        from imgsim_fast.features.embedding import get_model
        from imgsim_fast.features.embedding.lazy import BUILTIN_NAME

        model = get_model(BUILTIN_NAME if embed is True else embed, device)
        embed_size = model.spec.size
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    spec = ExtractSpec(dedup=True, dedup_embed_size=embed_size)
    facts, hpix, epix = [], [], []
    bar = progress_bar(len(paths), progress, "decoding")
    try:
        results = extract_many(list(enumerate(paths)), spec, workers, bar.update)
    finally:
        bar.close()
    for _, r in results:
        failure = r if isinstance(r, LoadFailure) else r.failure
        if failure is not None:
            failures.append(failure)
        else:
            facts.append(r.dedup[0])
            hpix.append(r.dedup[1])
            epix.append(r.dedup[2])
    phash8 = phash_dihedral(np.stack([h[0] for h in hpix])) if hpix else np.zeros((0, 8, 1), np.uint64)
    thumbs = np.stack([h[1] for h in hpix]) if hpix else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8)
    emb = centre = None
    if model is not None:
        both = embed_inputs(model, [v for e in epix for v in e], progress)
        emb, centre = both[0::2].copy(), both[1::2].copy()
    return Features(facts, phash8, emb, failures, model.name if model is not None else None, centre, thumbs,
                    passed_over)


def embed_inputs(model, arrays: list, progress: bool | None = False, batch: int = 32) -> np.ndarray:
    """Embeddings of (s, s, 3) uint8 inputs, in batches, with a bar of its own: on CPU this phase takes
    longer than decoding, so a bar that stopped at the end of decoding would sit at 100% for most of a run.

    Inputs with the same pixels (byte-identical files, a lossless copy in another format) are embedded once
    per call (dedup's whole run; the catalog's batch of files) and their row copied: the network is the
    costliest step per file, and exact copies are the commonest duplicates in real collections."""
    import torch

    from imgsim_fast.runtime.progress import progress_bar

    unique, where = _distinct(arrays)
    out = np.empty((len(unique), model.dim), np.float32)
    bar = progress_bar(len(unique), progress, "embedding views")
    try:
        for s in range(0, len(unique), batch):
            x = torch.from_numpy(np.stack(unique[s:s + batch]))
            out[s:s + batch] = model.embed_pixels(x).cpu().numpy()
            bar.update(len(unique[s:s + batch]))
    finally:
        bar.close()
    return out if len(unique) == len(arrays) else out[where]


def _distinct(arrays: list) -> tuple[list, np.ndarray]:
    """(the distinct arrays, in first-seen order; for each input, the position of its equal among them).
    Equal: same shape, type and values. A CRC-32 of the bytes finds the candidates (a fifth of a cryptographic
    digest's time over 150 KB views) and comparing the arrays decides, so a collision merges nothing."""
    unique: list = []
    seen: dict[int, list[int]] = {}
    where = np.empty(len(arrays), np.int64)
    for x, a in enumerate(arrays):
        a = np.ascontiguousarray(a)
        same = seen.setdefault(zlib.crc32(a.data), [])
        for k in same:
            if unique[k].shape == a.shape and unique[k].dtype == a.dtype and np.array_equal(unique[k], a):
                where[x] = k
                break
        else:
            where[x] = len(unique)
            same.append(len(unique))
            unique.append(a)
    return unique, where


if __name__ == "__main__":  # pragma: no cover - debugging aid: print the trim box of files
    for p in sys.argv[1:]:
        print(p, trim_uniform_borders(load_image(p, min_size=(FEATURE_SIDE, FEATURE_SIDE)))[1])
