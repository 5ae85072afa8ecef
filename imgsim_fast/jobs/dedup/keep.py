"""Keep-best: which file of a duplicate group is kept. The aim is the original, not the biggest copy.

Files are ranked against the other files they were found with (keep_ranks), criteria in `order`:
- content: undistorted first (a squashed or stretched copy, whose content aspect is off the group's median,
  ranks after the rest), then the most content pixels: pixels inside the trimmed box, so letterbox bars and
  mats add nothing. Counts within CONTENT_TIE of the group's largest tie: a trim moves by a few lines
  between a picture and its recompressed copy.
- quality: a copy noisier than the group's cleanest by NOISE_RATIO is a noisy copy and ranks last (added
  noise is also what hides the block grid below); then the earliest generation: a clean lossless file
  first, JPEGs by estimated quality (from the quantisation table, QUALITY_STEP levels per class), a
  lossless re-save of a JPEG (an 8x8 block grid in its pixels) after every JPEG; then a greyscale copy of
  a colour group.
- camera: a file whose EXIF names a camera first (edited exports often drop it).
- oldest / newest: modification time. size: larger file first. shortest-path: nearest the top.
Files under a reference folder always rank first, are always kept and never touched. The path breaks the
last tie, so the choice is the same every run. Measured: `python -m imgsim_fast.bench keep` (README).
"""
from __future__ import annotations

import bisect
import math
import os

from imgsim_fast.features.extract import FileFacts

__all__ = ["CRITERIA", "DEFAULT_ORDER", "parse_order", "keep_ranks", "is_under"]

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

CONTENT_TIE = 0.97      # content pixels >= 97% of the group's largest count as "as large"
ASPECT_TOLERANCE = 0.07  # |log(aspect ratio)| off the group's shape by more: squashed or stretched (trims jitter ~3%)
QUALITY_STEP = 4        # JPEG quality estimates this close are one class (encoders round tables)
NOISE_RATIO = 1.5       # noise sigma above 1.5 x the group's cleanest (+ NOISE_FLOOR) is a noisy copy
NOISE_FLOOR = 0.5
INSPECT_ROUNDS = 4  # at most this many would-be keepers are found derived per group ...
INSPECT_PEERS = 6   # ... each checked against this many next-best members
# A copy upscaled from a smaller member differs from that member's bicubic upscale by less than its own
# down-up round trip loses: e_up / e_rt < UPSCALE_RATIO. Keep corpus (keep_bench, both halves): files
# upscaled 1.5x (bicubic, JPEG q92) 0.31-1.40, 38 of 59 under 0.97; native files against their half-size
# copies 0.99 at least. The margin is thin, so an upscale that also adds noise or sharpening is missed.
UPSCALE_RATIO = 0.97
# A same-size copy whose difference from a member is independent of the picture's detail (correlation of
# |difference| with the member's Laplacian below NOISE_DEPENDENCE) had noise added: keep corpus noisy PNGs
# 0.07 at most, a PNG original against its own JPEG copies (q20-q70) 0.17 at least.
NOISE_DEPENDENCE = 0.12
_LOSSY = frozenset({"JPEG", "MPO", "WEBP", "HEIF", "AVIF"})
# ... and is white: neighbouring differences uncorrelated (noisy PNGs 0.06 at most), which a brightness or
# contrast edit, whose difference follows the picture's tones smoothly, is not.
NOISE_WHITE = 0.3
# Mean |difference| in grey levels below which two same-size files hold the same pixels: a lossless re-save
# of a decoded JPEG is exact (the same decoder), while a quality-90 JPEG of a smooth PNG can already be
# within half a level of it on average.
RESAVE_DIFF = 0.05
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
    rp = os.path.realpath(path)
    for f in folders:
        rf = os.path.realpath(f)
        if rp == rf or rp.startswith(rf.rstrip(os.sep) + os.sep):
            return True
    return False


def _generation(f: FileFacts) -> int:
    """Smaller is an earlier generation: 0 clean lossless, 1.. JPEG by falling quality, then re-saves."""
    if f.format.upper() in ("JPEG", "MPO") and f.jpeg_quality is not None:
        return 1 + (100 - f.jpeg_quality) // QUALITY_STEP
    if f.blocky:
        return 1000
    if f.format.upper() in ("WEBP", "JPEG", "MPO", "HEIF", "AVIF"):
        return 500  # lossy without a readable table: after known-quality JPEGs
    return 0


def keep_ranks(facts: list[FileFacts], members: list[int], order: tuple[str, ...] = DEFAULT_ORDER,
               reference: list[bool] | None = None, inspect: bool = False,
               verdicts: dict | None = None) -> dict[int, tuple]:
    """A sort key (smaller is better) for each of `members` (indices into facts), relative to the others.

    inspect: when the facts leave the best file in doubt, look at full-size pixels (derived_from): a
    file found to be an upscale, a lossless re-save or a noisy copy of another member ranks after the rest.
    verdicts: derived_from's answers by pair of content digests, read and extended (a catalog keeps them,
    so a second dedup of an unchanged collection decodes nothing).
    """
    keys = _fact_ranks(facts, members, order, reference)
    if not inspect or len(members) < 2 or "content" not in order:
        return keys
    derived: set[int] = set()
    pixels: dict[int, object] = {}
    for _ in range(INSPECT_ROUNDS):
        best = sorted(members, key=lambda m: (m in derived, keys[m]))
        top = best[0]
        if reference and reference[top]:
            break
        source = derived_from(facts, top, [m for m in best[1:INSPECT_PEERS + 1] if m not in derived], pixels,
                              verdicts)
        if source is None:
            break
        derived.add(top)
    return {m: (keys[m][0], int(m in derived)) + keys[m][1:] for m in members}


def _fact_ranks(facts: list[FileFacts], members: list[int], order: tuple[str, ...],
                reference: list[bool] | None) -> dict[int, tuple]:
    fs = [facts[m] for m in members]
    aspects = [math.log(f.content_aspect) for f in fs]
    # The group's true shape: the aspect most members share; between equally shared ones (an original and
    # its one squashed copy), the one nearer a shape cameras and screens produce. Counted on sorted values,
    # so a group of 10^5 byte-identical files stays cheap.
    ordered = sorted(aspects)

    def support(a: float) -> int:
        return bisect.bisect_right(ordered, a + ASPECT_TOLERANCE) - bisect.bisect_left(ordered, a - ASPECT_TOLERANCE)

    true_aspect = max(set(aspects), key=lambda a: (support(a), -min(abs(a - s) for s in _STANDARD), -a))
    distorted = [abs(a - true_aspect) > ASPECT_TOLERANCE for a in aspects]
    undistorted = [f.content_pixels for f, d in zip(fs, distorted) if not d] or [f.content_pixels for f in fs]
    largest = max(undistorted)
    cleanest = min(f.noise for f in fs)
    any_colour = any(f.colour for f in fs)
    out = {}
    for m, f, dist in zip(members, fs, distorted):
        key: list = [0 if reference and reference[m] else 1]
        for c in order:
            if c == "content":
                key += [int(dist), -largest if f.content_pixels >= CONTENT_TIE * largest else -f.content_pixels]
            elif c == "quality":
                noisy = f.noise > NOISE_RATIO * cleanest + NOISE_FLOOR
                key += [int(noisy), _generation(f), int(any_colour and not f.colour)]
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


# ------------------------------------------------------------------------------------------------
# Looking at pixels (only for a group's would-be keeper, against the members that could be its source)


def derived_from(facts: list[FileFacts], top: int, peers: list[int], cache: dict | None = None,
                 verdicts: dict | None = None) -> int | None:
    """The member of `peers` that `top` was made from, judging by full-size pixels, or None.

    - same size, top lossless, the peer lossy, same pixels: top is a lossless re-save of the peer;
    - same size, their difference is noise independent of the picture, top the noisier: top is a noisy copy;
    - top larger, same shape, and no more detail than the peer's upscale: top is an upscaled copy.
    A file that cannot be read now is never judged derived.
    """
    t = facts[top]
    cache = {} if cache is None else cache  # decoded pixels by member, shared across keep_ranks' rounds

    def grey(i):
        if i not in cache:
            cache[i] = _full_grey(facts[i].path)
        return cache[i]

    for p in peers:
        f = facts[p]
        # Pixels are read only where the facts cannot tell: a lossless file over a lossy one of its size
        # (a re-save or a noisy copy ranks first on generation), or a larger file (an upscale would).
        same_size = (f.width, f.height) == (t.width, t.height) and t.format.upper() not in _LOSSY \
            and f.format.upper() in _LOSSY
        bigger = t.content_pixels > 1.2 * f.content_pixels and \
            abs(math.log(t.content_aspect / f.content_aspect)) <= ASPECT_TOLERANCE
        if not (same_size or bigger):
            continue
        key = f"{t.digest}:{f.digest}"  # the verdict depends on the two files' bytes only
        if verdicts is not None and key in verdicts:
            if verdicts[key]:
                return p
            continue
        a, b = grey(top), grey(p)
        if a is None or b is None:
            continue  # not remembered: the file may be readable next time
        found = _derived(a, b, t, f, same_size)
        if verdicts is not None:
            verdicts[key] = found
        if found:
            return p
    return None


def _derived(a, b, t: FileFacts, f: FileFacts, same_size: bool) -> bool:
    """derived_from's test of one pair of full-size grey pictures (a: the candidate copy, b: its source)."""
    import numpy as np

    if same_size:
        if a.shape != b.shape:
            return False
        r = a - b
        if float(np.abs(r).mean()) < RESAVE_DIFF:
            return True
        lap_b = _laplacian(b)
        if float(r.std()) > 1.5 and _whiteness(r) < NOISE_WHITE and _laplacian(a).mean() > lap_b.mean():
            dep = np.corrcoef(np.abs(r[1:-1, 1:-1]).ravel(), lap_b.ravel())[0, 1]
            return bool(np.isfinite(dep) and dep < NOISE_DEPENDENCE)
        return False
    return bool(_is_upscale(a, t.trim, b, f.trim))


def _full_grey(path: str):
    """Full-size grey float32 pixels, or None when the file cannot be read now."""
    import numpy as np

    from imgsim_fast.io.loading import ImageLoadError, load_image

    try:
        im = load_image(path)
    except (ImageLoadError, OSError):
        return None
    return np.asarray(im.convert("L") if im.mode != "L" else im, dtype=np.float32)


def _whiteness(r) -> float:
    """|lag-1 autocorrelation| of a difference image, both axes: 0 for white noise, near 1 for smooth."""
    r = r - r.mean()
    v = float((r * r).mean()) or 1.0
    return abs(float((r[:, 1:] * r[:, :-1]).mean() + (r[1:] * r[:-1]).mean()) / (2 * v))


def _laplacian(a):
    return abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:])


def _content(a, trim):
    h, w = a.shape
    left, top, right, bottom = trim
    return a[round(top * h):max(round(top * h) + 1, round(bottom * h)),
             round(left * w):max(round(left * w) + 1, round(right * w))]


def _is_upscale(big, big_trim, small, small_trim) -> bool:
    """Does `big` hold no more detail than `small` enlarged? (UPSCALE_RATIO, measured on the contents)"""
    import numpy as np
    from PIL import Image

    B, S = _content(big, big_trim), _content(small, small_trim)
    if min(S.shape) < 16:
        return False
    Bi = Image.fromarray(B.astype(np.float32), mode="F")  # float resampling: no rounding to 8 bits
    size, small_size = (B.shape[1], B.shape[0]), (S.shape[1], S.shape[0])
    up = np.asarray(Image.fromarray(S.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC))
    rt = np.asarray(Bi.resize(small_size, Image.Resampling.BOX).resize(size, Image.Resampling.BICUBIC))
    e_rt = float(np.abs(B - rt).mean())
    return e_rt > 0.1 and float(np.abs(B - up).mean()) / e_rt < UPSCALE_RATIO  # a flat picture has no detail to judge
