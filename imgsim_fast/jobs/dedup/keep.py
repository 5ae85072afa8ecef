"""Keep-best: which file of a duplicate group is kept. The aim is the original, not the biggest copy.

Files are ranked against the other files they were found with (keep_ranks), criteria in `order`:
- content: undistorted first (a squashed or stretched copy, whose content aspect is off the group's median,
  ranks after the rest; so does one turned a quarter against the orientation most members share), then
  the most content pixels: pixels inside the trimmed box, so letterbox bars and
  mats add nothing. Counts within CONTENT_TIE of the group's largest tie: a trim moves by a few lines
  between a picture and its recompressed copy (and by a band where the picture has a flat margin).
- quality: a copy noisier by NOISE_RATIO than the group's cleanest file of its size and of its own or an
  earlier generation is a noisy copy and ranks last; then the earliest generation: a clean lossless file
  first, JPEGs by estimated quality (from the quantisation table, QUALITY_STEP levels per class); then a
  greyscale copy of a colour group. A
  lossless re-save of a JPEG is told by its pixels (inspect, below), not by a block grid in them: pictures
  drawn on an 8-pixel grid (screenshots, slides, icons) show one as strongly (FileFacts.blocky).
- camera: a file whose EXIF names a camera first (edited exports often drop it).
- oldest / newest: modification time. size: larger file first. shortest-path: nearest the top.
Files under a reference folder always rank first, are always kept and never touched. The path breaks the
last tie, so the choice is the same every run.
With inspect (dedup), full-size pixels decide where the facts leave the best file in doubt (derived_from):
a would-be keeper found to be an upscale, a re-save (framed or not), a noisy copy or a re-encode of
another member ranks after the rest, and the others are ranked again without it. Measured: `python -m
imgsim_fast.bench keep` (README, bench/README).
"""
from __future__ import annotations

import bisect
import math
import os

import numpy as np

from imgsim_fast.features.extract import FEATURE_SIDE, FileFacts
from imgsim_fast.jobs.dedup.pictures import PictureCache, read_bytes, read_picture

__all__ = ["CRITERIA", "DEFAULT_ORDER", "parse_order", "keep_ranks", "FactTable", "is_under", "all_under",
           "verdict_key_prefix"]

CRITERIA = {
    "content": "undistorted, then the most pixels inside the trimmed borders",
    "quality": "earliest generation: clean lossless, then higher JPEG quality; noisy and greyscale copies last",
    "camera": "files with camera EXIF first",
    "size": "larger file first",
    "oldest": "older modification time first",
    "newest": "newer modification time first",
    "shortest-path": "shorter path first (the copy nearest the top of the tree)",
}
DEFAULT_ORDER = ("content", "quality", "camera", "oldest")
# Renamed in 0.2: the old names still parse, to what they now mean.
_ALIASES = {"pixels": "content", "lossless": "quality"}

CONTENT_TIE = 0.95      # content pixels >= 95% of the group's largest count as "as large"
TRIM_SIDE = 0.01  # two trims end at one place on a side within this share of the picture
ASPECT_TOLERANCE = 0.07  # |log(aspect ratio)| off the group's shape by more: squashed or stretched (trims jitter ~3%)
QUALITY_STEP = 4        # JPEG quality estimates this close are one class (encoders round tables)
NOISE_RATIO = 1.5       # noise sigma above 1.5 x the cleanest of its size and generation or earlier (+ NOISE_FLOOR)
NOISE_FLOOR = 0.5
# A file is measured against the files of its size of its own or an earlier generation only (_generation):
# compression removes noise and fine texture alike, so a later encode measures cleaner than its source without
# being so. Against all of them, PNG originals of the accuracy corpus counted noisy next to their own JPEG
# copies (quality 90 dimmed to 0.6, quality 70, quality 20), and 15 of the tune half's 34 groups kept a
# letterboxed copy, a size of its own, instead (1 with the rule). A noisy lossless copy of a JPEG is then told
# by its pixels (derived_from's noise test) unless a clean lossless file of its size is in the group. A copy
# dimmed but not re-encoded at a lower quality still measures cleaner than its original: the estimate follows
# the picture's contrast. And a noisy copy saved at a higher JPEG quality than its original is an earlier
# generation, so it is not measured against it, and no look at pixels asks (review of this rule, 10 photos
# at q75 with noise sigma 20 re-saved at q95: original kept 6 of 10 before it, 0 with it). Asking derived_from's
# noise test wherever a would-be keeper measured noisier than a member of its size was tried and taken out:
# noise added cannot be told from grain an edit took away, and a grainy JPEG original (noise sigma 4 or 8,
# q92) then lost to its own denoised, blurred, darkened or flattened q75 copies in 21 of 168 pairs (none
# before); grain is common in originals, added noise in copies is not.
# A dark wallpaper's copies trim where their JPEG noise stops the trim, so up to 7 of 20 outrank its
# original on content and are each found derived (accuracy corpus, tune half, once the whole-picture
# retry joined a captioned copy to that group: 6 left a quality-20 re-save kept).
INSPECT_ROUNDS = 8  # at most this many would-be keepers are found derived per group ...
INSPECT_PEERS = 6   # ... each checked against this many next-best members whose facts leave a doubt
# An enlarged copy differs from the peer's bicubic enlargement by less than from its own down-up round trip:
# e_up / e_rt < UPSCALE_RATIO, both measured on the most detailed UPSCALE_MASK of the pixels. Keep corpus,
# tune half: 1.5x bicubic upscales (JPEG q92) 0.27-0.70 where e_rt >= UPSCALE_DETAIL, originals against
# their half-size copies 0.88 at least.
UPSCALE_RATIO = 0.8
UPSCALE_MASK = 0.1
UPSCALE_WINDOW = 768
# Below this round-trip loss (grey levels, on those pixels) the larger file holds no detail to judge by:
# JPEG noise and the resampling kernel differ by as much (tune half: smooth wallpapers 0.02-0.9).
UPSCALE_DETAIL = 1.0
UPSCALE_MIN = 1.1     # content pixels over the peer's: larger than a trim's jitter, smaller than a 1.2x stretch
# Content sides this close may hold the same pixels, so the pixels are looked at: a trim moves by a few lines
# between a picture and its copy, and by more where a margin fades (a sky's gradient), which the nested trim
# now takes inside a frame too: keep corpus, tune half, a framed PNG of the cameraman kept over its original at
# 0.02 (sides 3% apart), none at 0.05; the accuracy corpus's tune recall unchanged.
RESAVE_JITTER = 0.05
RESAVE_SHIFT = 2      # ... found within this many trim pixels of where the trimmed boxes put them
PICTURE_BYTES = 256 << 20  # decoded pixels kept for one group's inspection (grey float32: 4 bytes a pixel)
# Verdicts are cached by this version (the catalog's keep_verdicts): a change to what a verdict means bumps it,
# so a verdict of the old tests is never trusted (verdict_key_prefix). 2: framed re-saves, upscales judged on
# detail, stretched copies; 3: the trims they compare inside are extract.PREP_VERSION 2's (nested borders); 4: no
# file is a re-encode of its own noisy copy (and 5: nor a noisy copy of its own re-encode, told by the file's
# own quantisation table); 6: the generations they compare are read from JPEG quality estimates made in the
# tables' own order (extract.estimate_jpeg_quality); 7: the trims are PREP_VERSION 3's (large pictures reduced on
# a grid that turns with them).
VERDICT_VERSION = 7

# A same-size copy whose difference from a member is independent of the picture's detail (correlation of
# |difference| with the member's Laplacian below NOISE_DEPENDENCE) had noise added: keep corpus noisy PNGs
# 0.07 at most, a PNG original against its own JPEG copies (q20-q70) 0.17 at least.
NOISE_DEPENDENCE = 0.12
_LOSSY = frozenset({"JPEG", "MPO", "WEBP", "HEIF", "AVIF"})
# ... and is white: neighbouring differences uncorrelated (noisy PNGs 0.06 at most), which a brightness or
# contrast edit, whose difference follows the picture's tones smoothly, is not.
NOISE_WHITE = 0.3
# ... and the member is not the file's own re-encode: a camera's grain, which a re-encode smooths away, passes
# both tests above, so a grainy PNG original looked like a noisy copy of its own JPEG re-encodes (review: 6
# photos with grain of sigma 4 or 8, 19 of 168 such pairs lost; none now, none lost the other way). The file
# encoded again (grey) with the member's own luminance table lands within REENCODE_RATIO of the distance
# between them from the member when it is its re-encode (libjpeg: 0.10 at most for grey and q50-q90 colour
# re-encodes, 0.16-0.27 for colour ones at q95, review), not when the member is the source (noise of sigma 4
# to 20 added and saved at q95: 0.57 and more). Noise light enough for a coarse encode to erase (sigma 2-4
# over a q30-q40 source) is told apart by neither: the noisy lossless copy is then kept.
REENCODE_RATIO = 0.3
# Mean |difference| in grey levels below which two same-size files hold the same pixels: a lossless re-save
# of a decoded JPEG is exact (the same decoder), while a quality-90 JPEG of a smooth PNG can already be
# within half a level of it on average.
RESAVE_DIFF = 0.05
# Mean |difference| below which a lossy file holds a member's picture at its scale, re-encoded (keep corpus,
# tune half: JPEG q92/q75 copies of q95 originals 0.02-4.6; bars painted over a tenth of a picture ~10).
# Used only to demote a file that outranks an earlier encode of its picture by a trim alone.
RECODE_DIFF = 6.0
# Long/short side ratios of cameras, phones and screens (1:1, 5:4, 4:3, 3:2, 16:10, 16:9, 2:1), as logs.
_STANDARD = tuple(math.log(r) for r in (1.0, 1.25, 4 / 3, 1.5, 1.6, 16 / 9, 2.0))


def parse_order(text) -> tuple[str, ...]:
    """'content,quality,camera,oldest' (or a sequence) -> a validated tuple; None or '' -> DEFAULT_ORDER."""
    if not text:
        return DEFAULT_ORDER
    items = text.split(",") if isinstance(text, str) else list(text)
    order = tuple(_ALIASES.get(s.strip(), s.strip()) for s in items if s.strip())
    bad = [c for c in order if c not in CRITERIA]
    if bad:
        raise ValueError(f"unknown keep criteria {', '.join(bad)}; choose from {', '.join(CRITERIA)}")
    if "oldest" in order and "newest" in order:
        raise ValueError("keep order cannot have both 'oldest' and 'newest'")
    return tuple(dict.fromkeys(order))


def is_under(path: str, folders: list[str]) -> bool:
    """True when `path` is inside one of `folders` (real paths compared, so symlinks do not fool it)."""
    return all_under([path], folders)[0]


def all_under(paths: list[str], folders: list[str]) -> list[bool]:
    """is_under for each of `paths`, resolving the folders once and each directory once: a path that is not
    itself a link lies where its directory's real path says (a second dedup run of 10,200 files spent 0.4 s
    resolving every file)."""
    real = [os.path.realpath(f).rstrip(os.sep) for f in folders]
    dirs: dict[str, str] = {}
    out = []
    for p in paths:
        head, tail = os.path.split(p)
        if tail in ("", os.curdir, os.pardir) or os.path.islink(p):  # "root/.." is not inside root
            rp = os.path.realpath(p)
        else:
            d = dirs.get(head)
            if d is None:
                d = dirs[head] = os.path.realpath(head or os.curdir)
            rp = os.path.join(d, tail)
        out.append(any(rp == rf or rp.startswith(rf + os.sep) for rf in real))
    return out


def _generation(f: FileFacts) -> int:
    """Smaller is an earlier generation: 0 lossless, 1.. JPEG by falling quality, then other lossy files.

    A block grid in a lossless file's pixels (FileFacts.blocky) does not count: measured on the accuracy
    corpus, it shows in 182 of 194 lossless screenshots, slides, charts and icons (drawn on an 8-pixel
    grid), which it put after every JPEG copy of them, and in 14 of 59 PNG re-saves of the keep bench's
    quality-95 JPEGs; the keep bench's groups keep the same files without it (a re-save is found by its
    pixels, derived_from)."""
    if f.format.upper() in ("JPEG", "MPO") and f.jpeg_quality is not None:
        return 1 + (100 - f.jpeg_quality) // QUALITY_STEP
    if f.format.upper() in ("WEBP", "JPEG", "MPO", "HEIF", "AVIF"):
        return 500  # lossy without a readable table: after known-quality JPEGs
    return 0


# Components of at least this many files are ranked over columns (FactTable.columns); smaller ones file by
# file, where numpy's cost per call would exceed the work (10^6 synthetic pairs, ~4 files a component:
# 1.0 s file by file, 6.8 s over columns). Both give the same keys (tests/test_keep.py).
COLUMNS_FROM = 48


class FactTable:
    """The facts keep-best ranks on, made once for a collection (group_features): big components are ranked
    over columns of them, array arithmetic over the component's rows instead of attribute reads per file.
    A big component is ranked again at each drawing a failed pixel check forces (10,200-file look-alike
    folder: a 7,300-file component about 40 times, 78 ms a time file by file, 4 ms over columns). The
    columns are made at the first big component."""

    def __init__(self, facts: list[FileFacts]):
        self.facts = facts
        self._cols: _Columns | None = None

    def columns(self) -> _Columns:
        if self._cols is None:
            self._cols = _Columns(self.facts)
        return self._cols


class _Columns:
    def __init__(self, facts: list[FileFacts]):
        sizes = [_content_size(f) for f in facts]
        self.cw = np.array([w for w, _ in sizes], np.float64)
        self.ch = np.array([h for _, h in sizes], np.float64)
        # math.log, once per file: numpy's vector log may differ in the last bit, and the shape vote compares
        # these against ASPECT_TOLERANCE.
        self.aspect = np.array([_log_aspect(w, h) for w, h in sizes], np.float64)
        self.wide = self.cw >= self.ch
        self.width = np.array([f.width for f in facts], np.int64)
        self.height = np.array([f.height for f in facts], np.int64)
        self.content = np.array([f.content_pixels for f in facts], np.int64)
        self.trim = np.array([f.trim for f in facts], np.float64).reshape(len(facts), 4)
        self.noise = np.array([f.noise for f in facts], np.float64)
        self.mtime = np.array([f.mtime for f in facts], np.float64)
        self.size = np.array([f.size for f in facts], np.int64)
        shapes: dict[tuple[int, int], int] = {}
        self.shape = np.array([shapes.setdefault((f.width, f.height), len(shapes)) for f in facts], np.int64)
        digests: dict[str, int] = {}
        self.digest = np.array([digests.setdefault(f.digest, len(digests)) for f in facts], np.int64)
        self.generation = np.array([_generation(f) for f in facts], np.int64)
        self.lossy = np.array([f.format.upper() in _LOSSY for f in facts], bool)
        self.colour = np.array([f.colour for f in facts], bool)
        self.camera = np.array([f.camera for f in facts], bool)
        self.path = [f.path for f in facts]


def _cleanest_earlier(shape: np.ndarray, generation: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """For each file, the least noise among the files of its shape whose generation is its own or earlier
    (_ranks_file_by_file's `cleanest`, over columns): blocks of one shape and generation, their minima, then a
    running minimum over the blocks of each shape."""
    order = np.lexsort((generation, shape))
    s, g, r = shape[order], generation[order], noise[order]
    first = np.r_[True, (s[1:] != s[:-1]) | (g[1:] != g[:-1])]
    starts = np.flatnonzero(first)
    block_min = np.minimum.reduceat(r, starts)
    segment = np.cumsum(np.r_[True, s[starts][1:] != s[starts][:-1]])
    # Over the minima's ranks (integers, so exact): an offset falling from one shape to the next keeps each
    # running minimum within its own shape.
    by_value = np.argsort(block_min, kind="stable")
    rank = np.empty(len(block_min), np.int64)
    rank[by_value] = np.arange(len(block_min))
    offset = (segment[-1] - segment) * len(block_min)
    running = np.minimum.accumulate(rank + offset) - offset
    out = np.empty(len(r))
    out[order] = block_min[by_value[running]][np.cumsum(first) - 1]
    return out


def _log_aspect(w: float, h: float) -> float:
    """log(long side / short side) of a content size (FileFacts.content_aspect's arithmetic)."""
    w, h = max(1e-9, w), max(1e-9, h)
    return math.log(max(w, h) / min(w, h))


def keep_ranks(facts: list[FileFacts] | FactTable, members: list[int], order: tuple[str, ...] = DEFAULT_ORDER,
               reference: list[bool] | None = None, inspect: bool = False,
               verdicts: dict | None = None) -> dict[int, tuple]:
    """A sort key (smaller is better) for each of `members` (indices into facts), relative to the others.

    facts: a list, or a FactTable of it (made once by a caller that ranks many components of one collection).
    inspect: when the facts leave the best file in doubt, look at full-size pixels (derived_from): a
    file found to be an upscale, a re-save, a noisy copy or a re-encode of another member ranks after the
    rest (at most INSPECT_ROUNDS such files; decoded pixels are shared across the rounds, up to
    PICTURE_BYTES).
    verdicts: derived_from's answers by pair of content digests, read and extended (a catalog keeps them,
    so a second dedup of an unchanged collection decodes nothing).
    """
    if not isinstance(facts, FactTable):
        if len(members) >= COLUMNS_FROM:  # columns of these members only, numbered from 0
            local = keep_ranks(FactTable([facts[m] for m in members]), list(range(len(members))), order,
                               reference and [reference[m] for m in members], inspect, verdicts)
            return {members[k]: key for k, key in local.items()}
        facts = FactTable(facts)  # ranked file by file: no columns made
    table = facts
    keys = _fact_ranks(table, members, order, reference)
    if not inspect or len(members) < 2 or "content" not in order:
        return keys
    derived: set[int] = set()
    pictures = _pictures()
    live_keys = keys
    for _ in range(INSPECT_ROUNDS):
        live = [m for m in members if m not in derived]
        if len(live) < 2:
            break
        # Ranked again among the files not found derived: a demoted upscale no longer sets the group's
        # "largest" content, so the rest tie on content again (CONTENT_TIE) and quality decides between them.
        live_keys = keys if not derived else _fact_ranks(table, live, order, reference)
        top = min(live, key=live_keys.__getitem__)
        if reference and reference[top]:
            break
        # Its likely source first: the best of the others, ranked without it (so an upscale does not set
        # their "largest" content), which is usually the one file looked at.
        rest = [m for m in live if m != top]
        rest_keys = _fact_ranks(table, rest, order, reference)
        if derived_from(table, top, sorted(rest, key=rest_keys.__getitem__), verdicts, pictures) is None:
            break
        derived.add(top)
    else:
        live_keys = _fact_ranks(table, [m for m in members if m not in derived], order, reference)
    return {m: (keys[m][0], 1) + keys[m][1:] if m in derived else (live_keys[m][0], 0) + live_keys[m][1:]
            for m in members}


def _fact_ranks(t: FactTable, members: list[int], order: tuple[str, ...],
                reference: list[bool] | None) -> dict[int, tuple]:
    """The keys of keep_ranks before any look at pixels."""
    if len(members) < COLUMNS_FROM:
        return _ranks_file_by_file(t.facts, members, order, reference)
    return _ranks_over_columns(t.columns(), members, order, reference)


def _shared_trims(width, height, content, aspect, trims) -> tuple[np.ndarray, np.ndarray]:
    """For each member (sequences of their pixel sizes, content pixels, content aspects as _log_aspect gives
    them, and trims, FileFacts.trim): (the position of the member whose trim it is judged on, the content
    pixels that gives it). Its own, or, where their trimmed shapes differ by more than ASPECT_TOLERANCE and
    the two trims end at one place on some side (within TRIM_SIDE), that of the member of its picture's shape
    whose trim kept the largest share of its picture (the first of ties), at its own size.
    One picture's shape: pictures whose width-to-height ratios, in order, lie within ASPECT_TOLERANCE (in
    log) of the next (one pixel size; a resized, cropped or rotated copy cut to the same ratio).

    A trim follows the picture: it takes a dark vignette, a smooth sky or a fog as border, and a caption or
    a watermark written there, grain or a rotated copy's filled corners stop it, so the copy had more content
    and another shape than its original, and was kept over it (a user trial: a dark wallpaper, 6.1 M content
    pixels for the captioned copy of its size against 4.2 M; a foggy pier whose trim took half its height,
    against its 2-degree rotation's 40%). Such trims end at other places on some sides only, and so give
    another shape. A picture shrunk onto a canvas of its own shape, inside bars or a frame, keeps its shape
    at a smaller scale, and its trim ends elsewhere on every side: it keeps its own trim and its smaller
    content (a review of the first version of this rule, which shared the trim there and kept the framed
    copy)."""
    width = np.maximum(np.asarray(width, np.float64), 1.0)
    height = np.maximum(np.asarray(height, np.float64), 1.0)
    content = np.asarray(content, np.float64)
    aspect = np.asarray(aspect, np.float64)
    n = len(width)
    whole = np.array([math.log(w / h) for w, h in zip(width.tolist(), height.tolist())], np.float64)
    share = content / (width * height)
    by = np.argsort(whole, kind="stable")
    starts = np.ones(n, bool)
    starts[1:] = np.diff(whole[by]) > ASPECT_TOLERANCE
    shape = np.empty(n, np.int64)
    shape[by] = np.cumsum(starts) - 1
    best = np.lexsort((np.arange(n), -share, shape))  # each shape's largest share first, then position
    first = np.ones(n, bool)
    first[1:] = shape[best][1:] != shape[best][:-1]
    donor = best[first][shape]
    trims = np.asarray(trims, np.float64).reshape(n, 4)
    one_side = (np.abs(trims - trims[donor]) <= TRIM_SIDE).any(axis=1)
    trim_of = np.where((np.abs(aspect - aspect[donor]) > ASPECT_TOLERANCE) & one_side, donor, np.arange(n))
    shared = np.rint(share[trim_of] * width * height).astype(np.int64)
    return trim_of, np.where(trim_of == np.arange(n), content.astype(np.int64), shared)


def _ranks_file_by_file(facts: list[FileFacts], members: list[int], order: tuple[str, ...],
                        reference: list[bool] | None) -> dict[int, tuple]:
    fs = [facts[m] for m in members]
    # The trimmed content's size once per file (FileFacts.content_aspect's arithmetic): ranking a big
    # component again after a failed pixel check made these properties most of keep-best's time.
    own = [_content_size(f) for f in fs]
    own_aspects = [_log_aspect(w, h) for w, h in own]
    trim_of, shared = _shared_trims([f.width for f in fs], [f.height for f in fs], [f.content_pixels for f in fs],
                                    own_aspects, [f.trim for f in fs])
    trim_of, content = trim_of.tolist(), shared.tolist()
    sizes = [own[j] for j in trim_of]
    aspects = [own_aspects[j] for j in trim_of]
    # The group's true shape: the aspect most members share; between equally shared ones (an original and
    # its one squashed copy), the one nearer a shape cameras and screens produce. Counted on sorted values,
    # so a group of 10^5 byte-identical files stays cheap.
    ordered = sorted(aspects)

    def support(a: float) -> int:
        return bisect.bisect_right(ordered, a + ASPECT_TOLERANCE) - bisect.bisect_left(ordered, a - ASPECT_TOLERANCE)

    true_aspect = max(set(aspects), key=lambda a: (support(a), -min(abs(a - s) for s in _STANDARD), -a))
    distorted = [abs(a - true_aspect) > ASPECT_TOLERANCE for a in aspects]
    # A copy turned a quarter is an edit too: where most non-square members are landscape (or portrait),
    # one of the other orientation ranks after them. A turned keeper would also lose the crops and small
    # rotations of the upright picture, which match it only upright (detect: flips go by hash alone).
    # Landscape or not; None where square within ASPECT_TOLERANCE.
    wide = [None if a <= ASPECT_TOLERANCE else w >= h for a, (w, h) in zip(aspects, sizes)]
    votes = [w for w in wide if w is not None]
    upright = None if 2 * sum(votes) == len(votes) else 2 * sum(votes) > len(votes)
    # A file whose EXIF names a camera is not counted turned: its orientation is the camera's (copies that
    # dropped the EXIF orientation tag can outnumber it).
    turned = [upright is not None and w is not None and w != upright and not f.camera for w, f in zip(wide, fs)]
    undistorted = [c for c, d in zip(content, distorted) if not d] or content
    largest = max(undistorted)
    # Noise is estimated on the picture as decoded and reduced for the features: only files of one size are
    # measured alike (a frame, bars or another reduction factor move the estimate by 2x on the keep corpus).
    generation = [_generation(f) for f in fs]
    cleanest = [min(o.noise for g, o in zip(generation, fs) if (o.width, o.height) == (f.width, f.height)
                    and g <= gen) for f, gen in zip(fs, generation)]
    any_colour = any(f.colour for f in fs)
    out = {}
    for m, f, pixels, dist, turn, gen, clean in zip(members, fs, content, distorted, turned, generation, cleanest):
        key: list = [0 if reference and reference[m] else 1]
        for c in order:
            if c == "content":
                key += [int(dist), int(turn), -largest if pixels >= CONTENT_TIE * largest else -pixels]
            elif c == "quality":
                noisy = f.noise > NOISE_RATIO * clean + NOISE_FLOOR
                key += [int(noisy), gen, int(any_colour and not f.colour)]
            elif c == "camera":
                key.append(0 if f.camera else 1)
            elif c == "size":
                key.append(-f.size)
            elif c == "oldest":
                key.append(f.mtime)
            elif c == "newest":
                key.append(-f.mtime)
            elif c == "shortest-path":
                key.append(len(f.path))
        key.append(f.path)
        out[m] = tuple(key)
    return out


def _ranks_over_columns(t: _Columns, members: list[int], order: tuple[str, ...],
                        reference: list[bool] | None) -> dict[int, tuple]:
    """_ranks_file_by_file's keys, one column per criterion over the members' rows."""
    m = np.asarray(members, np.int64)
    local, content = _shared_trims(t.width[m], t.height[m], t.content[m], t.aspect[m], t.trim[m])
    trim_of = m[local]
    aspects = t.aspect[trim_of]
    # The group's true shape: the aspect most members share; between equally shared ones (an original and
    # its one squashed copy), the one nearer a shape cameras and screens produce, then the squarer.
    ordered = np.sort(aspects)
    shapes = np.unique(aspects)
    support = (np.searchsorted(ordered, shapes + ASPECT_TOLERANCE, "right")
               - np.searchsorted(ordered, shapes - ASPECT_TOLERANCE, "left"))
    off_standard = np.abs(shapes[:, None] - np.array(_STANDARD)[None, :]).min(axis=1)
    true_aspect = shapes[np.lexsort((-shapes, -off_standard, support))[-1]]
    distorted = np.abs(aspects - true_aspect) > ASPECT_TOLERANCE
    # A copy turned a quarter is an edit too: where most non-square members are landscape (or portrait),
    # one of the other orientation ranks after them. A turned keeper would also lose the crops and small
    # rotations of the upright picture, which match it only upright (detect: flips go by hash alone).
    # Square within ASPECT_TOLERANCE votes neither way.
    oriented = aspects > ASPECT_TOLERANCE
    wide = t.wide[trim_of]
    landscape, votes = int(wide[oriented].sum()), int(oriented.sum())
    # A file whose EXIF names a camera is not counted turned: its orientation is the camera's (copies that
    # dropped the EXIF orientation tag can outnumber it).
    camera = t.camera[m]
    if 2 * landscape == votes:
        turned = np.zeros(len(m), bool)
    else:
        turned = oriented & (wide != (2 * landscape > votes)) & ~camera
    largest = int(content[~distorted].max() if (~distorted).any() else content.max())
    # Noise is estimated on the picture as decoded and reduced for the features: only files of one size are
    # measured alike (a frame, bars or another reduction factor move the estimate by 2x on the keep corpus).
    noise = t.noise[m]
    cleanest = _cleanest_earlier(t.shape[m], t.generation[m], noise)
    colour = t.colour[m]
    any_colour = bool(colour.any())
    cols: list = [[0 if reference and reference[x] else 1 for x in members]]
    for c in order:
        if c == "content":
            cols += [distorted.astype(np.int64).tolist(), turned.astype(np.int64).tolist(),
                     np.where(content >= CONTENT_TIE * largest, -largest, -content).tolist()]
        elif c == "quality":
            noisy = noise > NOISE_RATIO * cleanest + NOISE_FLOOR
            cols += [noisy.astype(np.int64).tolist(), t.generation[m].tolist(),
                     (any_colour & ~colour).astype(np.int64).tolist()]
        elif c == "camera":
            cols.append((~camera).astype(np.int64).tolist())
        elif c == "size":
            cols.append((-t.size[m]).tolist())
        elif c == "oldest":
            cols.append(t.mtime[m].tolist())
        elif c == "newest":
            cols.append((-t.mtime[m]).tolist())
        elif c == "shortest-path":
            cols.append([len(t.path[x]) for x in members])
    cols.append([t.path[x] for x in members])
    return dict(zip(members, zip(*cols)))


# ------------------------------------------------------------------------------------------------
# Looking at pixels (only for a group's would-be keeper, against the members that could be its source)


def verdict_key_prefix() -> str:
    """What the key of every verdict this version makes starts with (derived_from): a caller loading stored
    verdicts reads only these, and an older one's can be dropped."""
    return f"{VERDICT_VERSION}:"


def derived_from(facts: list[FileFacts] | FactTable, top: int, peers: list[int], verdicts: dict | None = None,
                 pictures: PictureCache | None = None) -> int | None:
    """The member of `peers` (best first) that `top` was made from, judging by full-size pixels, or None.
    Only the first INSPECT_PEERS peers whose facts allow it are looked at.

    - top lossless, the peer lossy, the peer's pixels found unchanged inside top (at the same place, or
      inside a frame or bars): top is a lossless re-save of the peer;
    - top lossless, the peer lossy and of its size, their difference noise independent of the picture, top
      the noisier, and the peer not top's plain re-encode (grain a re-encode smoothed away looks the same):
      top is a noisy copy;
    - top a later encode than the peer, the peer's picture found inside top at its scale up to a tone map
      (RECODE_DIFF), and the peer not top with noise added (unless top is the peer's plain re-encode): top
      is a re-encode that outranked it only by a trim;
    - top larger (on either axis or both), and no more detail than the peer enlarged: top is an upscaled
      copy; where neither file has detail enough to tell, top counts as one when the peer is an earlier
      generation (an enlargement is a new encode, made after its source).
    A file that cannot be read now is never judged derived.
    """
    table = facts if isinstance(facts, FactTable) else FactTable(facts)
    t = table.facts[top]
    pictures = _pictures() if pictures is None else pictures
    a = None  # top's pixels: decoded at the first pair that needs them, then held for the others
    for p, kind in _looked_at(table, top, peers):
        f = table.facts[p]
        key = f"{verdict_key_prefix()}{t.digest}:{f.digest}"  # the verdict depends on the two files' bytes only
        if verdicts is not None and key in verdicts:
            if verdicts[key]:
                return p
            continue
        if a is None:
            a = _picture(pictures, t)
        b = _picture(pictures, f)
        if a is None or b is None:
            continue  # not remembered: the file may be readable next time
        found = _derived(a, b, t, f, kind)
        if verdicts is not None:
            verdicts[key] = found
        if found:
            return p
    return None


def _looked_at(t: FactTable, top: int, peers: list[int]) -> list[tuple[int, str]]:
    """(peer, kind of test) for the first INSPECT_PEERS of `peers` whose facts leave a doubt (derived_from)."""
    if len(peers) < COLUMNS_FROM:
        return list(_looked_at_file_by_file(t.facts, top, peers))
    return _looked_at_over_columns(t.columns(), top, peers)


def _looked_at_file_by_file(facts: list[FileFacts], top: int, peers: list[int]):
    """_looked_at, a generator over the peers until INSPECT_PEERS are found."""
    t = facts[top]
    tw, th = _content_size(t)
    looked = 0
    for p in peers:
        f = facts[p]
        fw, fh = _content_size(f)
        # Pixels are read only where the facts cannot tell: a lossless file over a lossy one of its size, whole
        # or trimmed (a re-save, framed or not, or a noisy copy ranks first on generation; trims of the two
        # may disagree by a band), or a file larger on both axes (an upscale, or a copy stretched on one
        # axis, ranks first on content).
        same_scale = t.width >= f.width and t.height >= f.height and \
            any(abs(a - w) <= RESAVE_JITTER * w and abs(b - h) <= RESAVE_JITTER * h
                for a, b in ((tw, th), (t.width, t.height)) for w, h in ((fw, fh), (f.width, f.height)))
        if same_scale and t.format.upper() not in _LOSSY and f.format.upper() in _LOSSY:
            kind = "resave"
        elif same_scale and _generation(f) < _generation(t) and (f.format.upper() in _LOSSY or (
                (f.width, f.height) == (t.width, t.height) and f.noise <= NOISE_RATIO * t.noise + NOISE_FLOOR)):
            # top outranks an earlier encode of its size (not a noisy lossless one) only by a trim that took
            # a band more or less: if it holds the same picture, the earlier encode is its source
            kind = "recode"
        elif t.content_pixels > UPSCALE_MIN * f.content_pixels and tw >= (1 - RESAVE_JITTER) * fw and \
                th >= (1 - RESAVE_JITTER) * fh:
            kind = "upscale"
        else:
            continue
        if f.digest == t.digest or (t.colour and not f.colour):
            continue  # the same bytes; or a greyscale peer, which a colour file cannot have been made from
        looked += 1
        if looked > INSPECT_PEERS:
            return
        yield p, kind


def _looked_at_over_columns(t: _Columns, top: int, peers: list[int]) -> list[tuple[int, str]]:
    """_looked_at over arrays: in a big component of look-alikes few peers qualify, and every one is tested
    file by file."""
    p = np.asarray(peers, np.int64)
    tw, th, tW, tH = t.cw[top], t.ch[top], t.width[top], t.height[top]
    fw, fh, fW, fH = t.cw[p], t.ch[p], t.width[p], t.height[p]
    # Pixels are read only where the facts cannot tell: a lossless file over a lossy one of its size, whole
    # or trimmed (a re-save, framed or not, or a noisy copy ranks first on generation; trims of the two
    # may disagree by a band), or a file larger on both axes (an upscale, or a copy stretched on one
    # axis, ranks first on content).
    near = np.zeros(len(p), bool)
    for a, b in ((tw, th), (tW, tH)):
        for w, h in ((fw, fh), (fW, fH)):
            near |= (np.abs(a - w) <= RESAVE_JITTER * w) & (np.abs(b - h) <= RESAVE_JITTER * h)
    same_scale = (tW >= fW) & (tH >= fH) & near
    lossy = t.lossy[p]
    resave = same_scale & (not t.lossy[top]) & lossy
    # top outranks an earlier encode of its size (not a noisy lossless one) only by a trim that took a band
    # more or less: if it holds the same picture, the earlier encode is its source
    recode = same_scale & (t.generation[p] < t.generation[top]) & (
        lossy | ((fW == tW) & (fH == tH) & (t.noise[p] <= NOISE_RATIO * t.noise[top] + NOISE_FLOOR)))
    upscale = (t.content[top] > UPSCALE_MIN * t.content[p]) & (tw >= (1 - RESAVE_JITTER) * fw) & \
        (th >= (1 - RESAVE_JITTER) * fh)
    # A colour file is never made from a greyscale one: on a smooth picture a grey JPEG's pixels are the
    # colour original's grey levels to within its encoding noise, and looked like a source re-saved.
    doubt = (resave | recode | upscale) & (t.digest[p] != t.digest[top]) & ~(t.colour[top] & ~t.colour[p])
    return [(int(p[k]), "resave" if resave[k] else "recode" if recode[k] else "upscale")
            for k in np.flatnonzero(doubt)[:INSPECT_PEERS]]


def _content_size(f: FileFacts) -> tuple[float, float]:
    left, top, right, bottom = f.trim
    return (right - left) * f.width, (bottom - top) * f.height


def _derived(a, b, t: FileFacts, f: FileFacts, kind: str) -> bool:
    """derived_from's test of one pair of full-size grey pictures (a: the candidate copy, b: its source)."""
    if kind == "recode":
        # ... unless the earlier encode is top with noise added: a noisy copy saved at a higher quality than
        # its source holds the source's picture within RECODE_DIFF too (a noisy PNG's pixels saved at q98).
        return _resaved_inside(a, b, t, f, RECODE_DIFF, tones=True) and not _noisy_copy(b, a, t)
    if kind == "resave":
        return _resaved_inside(a, b, t, f, RESAVE_DIFF) or _noisy_copy(a, b, f)
    verdict = _upscale_verdict(a, t, b, f)
    if verdict is None:  # too little detail to tell which came first: the earlier encode is the source
        return _generation(f) < _generation(t)
    return verdict


def _noisy_copy(a, b, f: FileFacts) -> bool:
    """Is `a` (grey, full size) `b` with noise added, `b` being file f's pixels? Grain that a re-encode smoothed
    away looks the same as noise added to the re-encode, so b must also not be a's plain re-encode with f's
    own luminance table (_reencode_of)."""
    return _noise_added(a, b) and not _reencode_of(b, a, _luma_table(f))


def _luma_table(f: FileFacts) -> list[int] | None:
    """The luminance quantisation table of f's JPEG file, as Pillow reads and writes it; None for another
    format, or a file that cannot be read now or no longer holds f's content (pictures.read_bytes)."""
    import io

    from PIL import Image

    data = read_bytes(f.path, f.digest)
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            tables = getattr(im, "quantization", None) or {}
            table = tables.get(0)
    except (OSError, ValueError, Image.DecompressionBombError):  # the header alone; the bomb guard reads it too
        return None
    return None if table is None or len(table) != 64 else list(table)


def _reencode_of(b, a, table: list[int] | None) -> bool:
    """Is b a's re-encode with the luminance quantisation `table`: a encoded again with it (grey) differs from
    b by at most REENCODE_RATIO of what a and b differ by. The file's own table, not a quality estimated from
    it: another encoder's tables (a camera's, mozjpeg's) are no libjpeg quality, and an estimate one off
    lands too far."""
    import io

    from PIL import Image

    if table is None:
        return False
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").save(buf, "JPEG", qtables=[table])
    buf.seek(0)
    with Image.open(buf) as im:
        again = np.asarray(im, np.float32)
    apart = float(np.abs(a - b).mean())
    return apart > 0 and float(np.abs(again - b).mean()) <= REENCODE_RATIO * apart


def _noise_added(a, b) -> bool:
    """Is `a` (grey, full size) `b` with noise added: a difference that is white, independent of b's detail,
    and more detail in a than in b."""
    if a.shape != b.shape:
        return False
    r = a - b
    std, whiteness = _spread(r)
    if std <= 1.5 or whiteness >= NOISE_WHITE:  # the Laplacians only where these pass (a fifth)
        return False
    lap_b = _laplacian(b)
    if _laplacian(a).mean() > lap_b.mean():
        dep = np.corrcoef(np.abs(r[1:-1, 1:-1]).ravel(), lap_b.ravel())[0, 1]
        return bool(np.isfinite(dep) and dep < NOISE_DEPENDENCE)
    return False


def _pictures() -> PictureCache:
    """Full-size grey pictures for one keep_ranks call, shared across its rounds (a round's keeper is often a
    peer of the round before), the most recently used kept up to PICTURE_BYTES: a group of large photos does
    not hold every member at full size. Pictures decoded for other groups are not kept: a file is ranked
    again in another group only after many others (stars redrawn), so a cache bounded in size would have
    dropped it by then (held-out folder: 467 decodes with this, 459 with a 256 MiB cache kept across calls)."""
    return PictureCache(PICTURE_BYTES)


def _picture(pictures: PictureCache, f: FileFacts):
    """f's full-size grey pixels (_full_grey), decoded once while the cache holds them."""
    return pictures.get((f.path, f.digest), lambda: _full_grey(f.path, f.digest))


def _full_grey(path: str, digest: str):
    """Full-size grey float32 pixels, or None when the file cannot be read now or no longer holds the
    content `digest` names (the verdict is stored by content: pictures.read_picture)."""
    im = read_picture(path, digest)
    if im is None:
        return None
    return np.asarray(im.convert("L") if im.mode != "L" else im, dtype=np.float32)


def _spread(r) -> tuple[float, float]:
    """(standard deviation, whiteness) of a difference image. Whiteness: |lag-1 autocorrelation|, both axes:
    0 for white noise, near 1 for smooth. The deviation is r.std() from the centred values computed once
    for both (numpy's std is the square root of this mean, in the same float32 sums)."""
    r = r - r.mean()
    v = (r * r).mean()
    lag = float((r[:, 1:] * r[:, :-1]).mean() + (r[1:] * r[:-1]).mean())
    return float(np.sqrt(v)), abs(lag / (2 * (float(v) or 1.0)))


def _laplacian(a):
    # |4c - n - s - w - e|, subtracted in that order into one buffer (the same sums as the plain expression)
    out = 4 * a[1:-1, 1:-1]
    for nb in (a[:-2, 1:-1], a[2:, 1:-1], a[1:-1, :-2], a[1:-1, 2:]):
        out -= nb
    return np.abs(out, out=out)


def _content(a, trim):
    h, w = a.shape
    left, top, right, bottom = trim
    return a[round(top * h):max(round(top * h) + 1, round(bottom * h)),
             round(left * w):max(round(left * w) + 1, round(right * w))]


def _resaved_inside(a, b, t: FileFacts, f: FileFacts, tolerance: float, tones: bool = False) -> bool:
    """Are b's pixels (its content, or the whole picture where a's trim kept a band b's cut) found unchanged
    in a? Looked for where a's trimmed box puts them, aligned by first sides, last sides or centres (a trim
    may cut a few lines into a frame's picture), each +-RESAVE_SHIFT pixels of the reduced picture the trims
    were found on."""
    boxes = [f.trim] if tuple(f.trim) == (0.0, 0.0, 1.0, 1.0) else [f.trim, (0.0, 0.0, 1.0, 1.0)]
    return any(_found_inside(a, _content(b, box), t.trim, tolerance, tones) for box in boxes)


def _found_inside(a, B, trim, tolerance: float, tones: bool) -> bool:
    (h, w), (bh, bw) = a.shape, B.shape
    if h < bh or w < bw:
        return False

    def anchors(lo, hi, n, size):  # the window's first index when its box is aligned to a's box [lo, hi)
        lo, hi = round(lo * n), round(hi * n)
        return {lo, hi - size, (lo + hi - size) // 2}

    # A trim is found on the picture reduced to about FEATURE_SIDE px: one of its pixels is this many of ours.
    r = RESAVE_SHIFT * -(-min(h, w) // FEATURE_SIDE)
    ys = {y + d for y in anchors(trim[1], trim[3], h, bh) for d in range(-r, r + 1)}
    xs = {x + d for x in anchors(trim[0], trim[2], w, bw) for d in range(-r, r + 1)}
    step = max(1, min(bh, bw) // 64)  # a sparse look at every offset, the full picture at the best three
    sparse = B[::step, ::step].ravel()
    xs = np.array(sorted(x for x in xs if 0 <= x <= w - bw), np.int64)
    scored = []
    for y in sorted(y for y in ys if 0 <= y <= h - bh):
        if len(xs):  # every x offset of this row at once: (offsets, sparse pixels)
            views = np.lib.stride_tricks.sliding_window_view(a[y:y + bh:step], bw, axis=1)[:, xs, ::step]
            d = _difference(np.moveaxis(views, 1, 0).reshape(len(xs), -1), sparse, tones)
            scored += zip(d.tolist(), [y] * len(xs), xs.tolist())
    scored.sort()
    return any(d < 2 * tolerance and
               float(_difference(a[y:y + bh, x:x + bw].reshape(1, -1), B.reshape(-1), tones)[0]) < tolerance
               for d, y, x in scored[:3])


def _difference(x, y, tones: bool):
    """Mean |x - y| in grey levels, per row of x (candidates, pixels) against y (pixels); with tones, after
    the gain and offset that fit y to each row best (least squares), over the pixels that row does not clip:
    a brightness or contrast edit is a tone map of its source."""
    if not tones:
        return np.abs(x - y).mean(axis=1)
    keep = ((x > 2) & (x < 253)).astype(np.float32)
    n = keep.sum(axis=1)
    ok = n >= 0.5 * x.shape[1]
    n = np.maximum(n, 1)
    my, mx = (keep * y).sum(axis=1) / n, (keep * x).sum(axis=1) / n
    dy, dx = y - my[:, None], x - mx[:, None]
    vy = (keep * dy * dy).sum(axis=1) / n
    g = np.where(vy > 1e-6, (keep * dy * dx).sum(axis=1) / n / np.maximum(vy, 1e-6), 1.0)
    d = (keep * np.abs(dx - g[:, None] * dy)).sum(axis=1) / n
    return np.where(ok, d, np.inf)


def _upscale_verdict(big, t: FileFacts, small, f: FileFacts) -> bool | None:
    """Is `big` an enlargement of `small`? True: no more detail than `small` enlarged holds; False: detail
    of its own; None: too little detail in either to tell (UPSCALE_RATIO, UPSCALE_DETAIL).

    Both pictures are compared whole where their boxes or their shapes agree (a trim jitters by a few
    lines between a picture and its enlargement), else by their trimmed contents."""
    from PIL import Image

    same_box = max(abs(x - y) for x, y in zip(t.trim, f.trim)) <= 0.01
    same_shape = abs(math.log((t.width * f.height) / (t.height * f.width))) <= 0.01
    B, S = (big, small) if same_box or same_shape else (_content(big, t.trim), _content(small, f.trim))
    if min(S.shape) < 16:
        return False
    # A centred window of at most UPSCALE_WINDOW px a side, and the part of `small` it shows (a float box:
    # no rounding of the scale), keep the cost of a verdict flat in the picture's size.
    (bh, bw), (sh, sw) = B.shape, S.shape
    h, w = min(bh, UPSCALE_WINDOW), min(bw, UPSCALE_WINDOW)
    y0, x0 = (bh - h) // 2, (bw - w) // 2
    ky, kx = sh / bh, sw / bw
    lw, lh = max(1, round(w * kx)), max(1, round(h * ky))
    # Each picture reaches PIL cut after the last row and column its resize reads (_reach): PIL copies
    # less, and the sums are the same (the cut keeps the origin and lies past the filter's reach).
    Bi = _pil(B, _reach(y0 + h, h / lh, 0.5, bh), _reach(x0 + w, w / lw, 0.5, bw))
    win = B[y0:y0 + h, x0:x0 + w]
    sy1, sx1 = (y0 + h) * ky, (x0 + w) * kx
    up = np.asarray(_pil(S, _reach(sy1, ky, 2, sh), _reach(sx1, kx, 2, sw)).resize(
        (w, h), Image.Resampling.BICUBIC, box=(x0 * kx, y0 * ky, sx1, sy1)))
    low = Bi.resize((lw, lh), Image.Resampling.BOX, box=(x0, y0, x0 + w, y0 + h))
    rt = np.asarray(low.resize((w, h), Image.Resampling.BICUBIC))
    # Judged where the picture has detail (the top decile of the enlargement's Laplacian, off the window's
    # edges, where the round trip lacks neighbours): a wallpaper's flat areas agree under either story.
    lap = np.zeros((h, w), np.float32)
    lap[4:-4, 4:-4] = _laplacian(up[3:-3, 3:-3])
    mask = np.flatnonzero(lap >= max(np.quantile(lap[4:-4:2, 4:-4:2], 1 - UPSCALE_MASK), 1e-6))
    if not len(mask):
        return None
    # Differences at the masked pixels only (a tenth of the window), taken in a boolean mask's order.
    at = win.ravel().take(mask)
    e_rt = float(np.abs(at - rt.ravel().take(mask)).mean())
    if e_rt < UPSCALE_DETAIL:
        return None
    return float(np.abs(at - up.ravel().take(mask)).mean()) / e_rt < UPSCALE_RATIO


def _pil(a, rows: int, cols: int):
    """a[:rows, :cols] as a PIL "F" image; whole rows of a contiguous `a` (PIL copies a contiguous block
    once, any other array twice)."""
    from PIL import Image

    return Image.fromarray(a[:rows] if a.flags.c_contiguous else a[:rows, :cols], mode="F")


def _reach(end: float, scale: float, support: float, n: int) -> int:
    """The rows (or columns) of n that a PIL resize reads when its box ends at `end`: its filter (support
    BOX 0.5, BICUBIC 2) reaches support x max(scale, 1) past the last output's centre, which lies before
    `end`; PIL clamps the filter to the picture's edge only beyond that, so cutting there changes no sum.
    Two more for rounding (PIL holds the box in single precision)."""
    return min(n, math.ceil(end + support * max(scale, 1.0)) + 2)
