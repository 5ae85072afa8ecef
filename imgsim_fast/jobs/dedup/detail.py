"""The detail check: the pixel check again at up to DETAIL_SIDE px, for pairs the thumbnails cannot tell apart.

At the 128 px thumbnail the words of a dialog are grey smudges: two dialogs of one kind of one application
(about boxes, progress dialogs: other words, another bar length) differ there by under 1%, as little as a
resized copy. At 384 px the words resolve. So a pair that passes the thumbnail check is compared again on
its pictures decoded from the files, both squashed to s x s with s = DETAIL_SHARE of the smaller picture's
shorter trimmed side, at most DETAIL_SIDE (verify.compare, its own bounds: Thresholds.detail_*). The share
keeps s under the copy's own resolution: compared at its own size, a half-size copy of a slide differs from
the original resampled there by the two resampling filters (0.1% strongly, tune half).

It runs where the thumbnails line up by a shift, and on flat pictures (FLAT_SHARE of the thumbnail without
texture: screenshots, slides, charts) whatever aligned them. A photo that needed the affine warp (a rotated
or cropped copy) is left to the thumbnail check: at 384 px its textured edges are off by the warp's
error (checked on every pair, with the warp fitted at half the side, 30 of the tune half's 68 rotated
copies failed). Where the detail check warps, the warp is refined at the detail side (DETAIL_LK_ITERS).

Measured on the tune half of the accuracy corpus and 70 more dialogs made aside (tune side only): of the
890 copies that pass the thumbnail check 20 fail this one (14 text captions, 6 wallpapers letterboxed,
greyed, brightened or cropped); of the 596 look-alike pairs that pass the thumbnail check (dialogs of one
kind, mostly) 5 pass this one, all two progress dialogs made aside, one of them at half size: compared at
180 px their bars differ by 1.5% and hardly strongly (bounds: 2% changed, 0.03% strongly changed).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from imgsim_fast.features.extract import trim_uniform_borders
from imgsim_fast.features.hashing import DIHEDRAL
from imgsim_fast.jobs.dedup.pictures import PictureCache, read_picture
from imgsim_fast.jobs.dedup.verify import _BOX, _SHIFT, _contrast, changed_fractions, compare

__all__ = ["VERSION", "DETAIL_SIDE", "applies", "Pictures", "detail_fractions"]

# Part of a stored detail verdict's key (detect.PairJudge): raise it whenever a verdict can change.
VERSION = 1
DETAIL_SIDE = 384    # words of a 640 x 480 dialog resolve; a 3-4 px stroke at 1080p still counts
DETAIL_SHARE = 0.75  # of the smaller picture's shorter side: compared below either picture's own resolution
DETAIL_MIN = 160     # under this the detail check sees little the 128 px thumbnail does not
FLAT_SHARE = 0.5     # a picture this much flat (3 x 3 deviation under FLAT_LEVEL grey levels) is a graphic
FLAT_LEVEL = 1.0
DETAIL_LK_ITERS = 10  # the warp refined at the detail side too: tune half, 8 of 11 warped copies failing pass
DECODE_SIDE = 512    # JPEGs decoded at a DCT scale keeping both sides at least this (s reaches its cap)
CACHE_BYTES = 128 << 20  # decoded grey pictures kept across pairs (a file is in many pairs of its group)


def flat_share(thumb: np.ndarray) -> float:
    """Share of a thumbnail's pixels whose 3 x 3 neighbourhood is flat (screenshots 0.5-0.9, most photos less)."""
    return float((_contrast(thumb.astype(np.float64), _BOX) < FLAT_LEVEL).mean())


def applies(a: np.ndarray, b: np.ndarray, limit: float, strong_limit: float) -> bool:
    """Whether a pair of thumbnails (b already flipped as compared) gets the detail check: they line up by a
    shift, or both are flat pictures."""
    if min(flat_share(a), flat_share(b)) >= FLAT_SHARE:
        return True
    changed, strong = changed_fractions(a.astype(np.float64), b.astype(np.float64), shift=_SHIFT,
                                        bounds=(limit, strong_limit))
    return changed <= limit and strong <= strong_limit


class Pictures:
    """Trimmed grey pictures by path and content, and their squares at the sides pairs asked for, decoded and
    resampled once while they fit in CACHE_BYTES (pictures.PictureCache). Thread-safe."""

    def __init__(self, budget: int = CACHE_BYTES):
        self._cache = PictureCache(budget)

    def picture(self, path: str, digest: str) -> Image.Image | None:
        """The trimmed grey picture of `path`, or None when it cannot be read now or no longer holds the
        content `digest` names (pictures.read_picture)."""
        return self._cache.get((path, digest, 0), lambda: _trimmed_grey(path, digest))

    def square(self, path: str, digest: str, picture: Image.Image, side: int) -> np.ndarray:
        """`picture` (picture(path, digest), already read: never read twice) squashed to side x side, uint8."""
        return self._cache.get((path, digest, side), lambda: np.asarray(
            picture.resize((side, side), Image.Resampling.LANCZOS)))


def _trimmed_grey(path: str, digest: str) -> Image.Image | None:
    im = read_picture(path, digest, min_size=(DECODE_SIDE, DECODE_SIDE), grey=True)
    if im is None:
        return None
    im = im if im.mode == "L" else im.convert("L")
    return trim_uniform_borders(im)[0]


def detail_fractions(pictures: Pictures, a: tuple[str, str], b: tuple[str, str], variant: int, limit: float,
                     strong_limit: float) -> tuple[float, float] | None:
    """(changed, strong) of the pixel check of the files a and b, (path, content digest) each (b's `variant`
    flip), both trimmed and squashed to the detail side; (0, 0) where the pictures are too small to show more
    than the thumbnail; None where either cannot be read now or holds other content.

    Pictures that agree unshifted pass as they are: most copies do, and the shift search costs twice that."""
    pa, pb = pictures.picture(*a), pictures.picture(*b)
    if pa is None or pb is None:
        return None
    s = min(DETAIL_SIDE, int(DETAIL_SHARE * min(*pa.size, *pb.size)))
    if s < DETAIL_MIN:
        return 0.0, 0.0
    ta = pictures.square(*a, pa, s)
    tb = np.ascontiguousarray(DIHEDRAL[variant](pictures.square(*b, pb, s)))
    changed, strong = changed_fractions(ta.astype(np.float64), tb.astype(np.float64), bounds=(limit, strong_limit))
    if changed <= limit and strong <= strong_limit:
        return changed, strong
    v = compare(ta, tb, limit, strong_limit, full_iters=DETAIL_LK_ITERS)
    return v.changed, v.strong
