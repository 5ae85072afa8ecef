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

import math
import os

from .features import FileFacts

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
               reference: list[bool] | None = None) -> dict[int, tuple]:
    """A sort key (smaller is better) for each of `members` (indices into facts), relative to the others."""
    fs = [facts[m] for m in members]
    aspects = [math.log(f.content_aspect) for f in fs]
    # The group's true shape: the aspect most members share; between equally shared ones (an original and
    # its one squashed copy), the one nearer a shape cameras and screens produce.
    support = [sum(abs(a - b) <= ASPECT_TOLERANCE for b in aspects) for a in aspects]
    true_aspect = max(aspects, key=lambda a: (support[aspects.index(a)], -min(abs(a - s) for s in _STANDARD)))
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
