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

A warp between trimmed pictures can be the trims' own doing. Two steps of a slide build (one bullet more,
a byline under a title) share a canvas, and the border trim stops at each one's last line: the earlier step
trims to a part of the later one, and the warp aligns it there as if it were a crop. So where the thumbnails
needed the warp and the two files' trims differ, the whole pictures are looked at before the detail check
(on_one_canvas): where they share a canvas and the content both trims kept agrees in place on it, unwarped,
the warp only undid the trims, and the part only one trim kept decides. It is flat in the other picture; where
little of it differs there, content was added over a flat area (the new line), and that part's change is the
verdict; where most of it does, a frame or mat was painted over the copy's edges, and the warp's verdict
stands. A real crop, rotation or rescale moves the shared content on the canvas and keeps the warp's verdict
too: so does an earlier step against a copy of a later one that was cropped and enlarged (not looked for).
The cost: text written into a margin the trim took (a caption over a dark wallpaper's margin) is content
added over a flat area too, refused here; the overlay route may still pass it, where the CNN calls both
files pictures (detect.Thresholds.overlay_page).

Measured on the tune half of the accuracy corpus and 70 more dialogs made aside (tune side only): of the
890 copies that pass the thumbnail check 20 fail this one (14 text captions, 6 wallpapers letterboxed,
greyed, brightened or cropped); of the 596 look-alike pairs that pass the thumbnail check (dialogs of one
kind, mostly) 5 pass this one, all two progress dialogs made aside, one of them at half size: compared at
180 px their bars differ by 1.5% and hardly strongly (bounds: 2% changed, 0.03% strongly changed).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from imgsim_fast.features.extract import trim_box
from imgsim_fast.features.hashing import DIHEDRAL
from imgsim_fast.jobs.dedup.pictures import PictureCache, read_picture
from imgsim_fast.jobs.dedup.verify import _BOX, _SHIFT, _contrast, changed_fractions, compare

__all__ = ["VERSION", "DETAIL_SIDE", "Pictures", "detail_fractions", "looks", "on_one_canvas", "trims_differ",
           "whole_fractions", "whole_squares"]

# Part of a stored detail verdict's key (detect.PairJudge): raise it whenever a verdict can change.
VERSION = 2  # 2: the part of the canvas only one trim kept, where the warp only undid the trims
WHOLE_VERSION = 1  # whole_fractions' own, in its stored verdicts' key
DETAIL_SIDE = 384    # words of a 640 x 480 dialog resolve; a 3-4 px stroke at 1080p still counts
DETAIL_SHARE = 0.75  # of the smaller picture's shorter side: compared below either picture's own resolution
DETAIL_MIN = 160     # under this the detail check sees little the 128 px thumbnail does not
FLAT_SHARE = 0.5     # a picture this much flat (3 x 3 deviation under FLAT_LEVEL grey levels) is a graphic
FLAT_LEVEL = 1.0
DETAIL_LK_ITERS = 10  # the warp refined at the detail side too: tune half, 8 of 11 warped copies failing pass
DECODE_SIDE = 512    # JPEGs decoded at a DCT scale keeping both sides at least this (s reaches its cap)
CACHE_BYTES = 128 << 20  # decoded grey pictures kept across pairs (a file is in many pairs of its group)
CANVAS_ASPECT = 0.01  # two files share a canvas when their aspect ratios differ by at most this share
CANVAS_MIN = 32       # the smallest square the canvases are compared on
TRIM_DIFF = 0.02      # two trims differ when their content boxes disagree over more than this share of both
FRAME_SHARE = 0.5     # the part only one trim kept was painted over (not added to) when this much of it differs
# DIHEDRAL's variants that swap the axes (the quarter turns and the transposes).
_TRANSPOSING = frozenset(v for v, flip in enumerate(DIHEDRAL) if flip(np.zeros((1, 2))).shape == (2, 1))


def flat_share(thumb: np.ndarray) -> float:
    """Share of a thumbnail's pixels whose 3 x 3 neighbourhood is flat (screenshots 0.5-0.9, most photos less)."""
    return float((_contrast(thumb.astype(np.float64), _BOX) < FLAT_LEVEL).mean())


def looks(a: np.ndarray, b: np.ndarray, trim_a: tuple[float, float, float, float],
          trim_b: tuple[float, float, float, float], variant: int, limit: float,
          strong_limit: float) -> tuple[bool, bool]:
    """Which looks at the files a pair gets whose thumbnails passed the pixel check (b already flipped as
    compared; trims: FileFacts.trim; limit, strong_limit: the check's bounds): (on_one_canvas, the detail
    check). The canvases where the thumbnails needed the warp and the trims differ; the detail check where
    they line up by a shift, or both are flat pictures. The shift is tried only where its answer matters."""
    differ = trims_differ(trim_a, trim_b, variant)
    flat = min(flat_share(a), flat_share(b)) >= FLAT_SHARE
    lined_up = False
    if differ or not flat:
        changed, strong = changed_fractions(a.astype(np.float64), b.astype(np.float64), shift=_SHIFT,
                                            bounds=(limit, strong_limit))
        lined_up = changed <= limit and strong <= strong_limit
    return differ and not lined_up, flat or lined_up


class Pictures:
    """Grey pictures by path and content, whole and trimmed, and their squares at the sides pairs asked for,
    decoded and resampled once while they fit in CACHE_BYTES (pictures.PictureCache). Thread-safe."""

    def __init__(self, budget: int = CACHE_BYTES):
        self._cache = PictureCache(budget)

    def canvas(self, path: str, digest: str) -> tuple[Image.Image, tuple[int, int, int, int]] | None:
        """The whole grey picture of `path` and its content box (extract.trim_box, pixels), or None when it
        cannot be read now or no longer holds the content `digest` names (pictures.read_picture)."""
        return self._cache.get((path, digest, "canvas"), lambda: _grey_canvas(path, digest))

    def trimmed(self, path: str, digest: str, canvas: tuple[Image.Image, tuple[int, int, int, int]]) -> Image.Image:
        """The trimmed picture of `canvas` (canvas(path, digest), already read: never read twice)."""
        im, box = canvas
        if box == (0, 0, *im.size):
            return im  # nothing trimmed: the canvas itself, held once
        return self._cache.get((path, digest, 0), lambda: im.crop(box))

    def square(self, path: str, digest: str, picture: Image.Image, side: int, whole: bool = False) -> np.ndarray:
        """`picture` (trimmed(path, digest, ...), or with whole canvas(path, digest)'s picture: already read,
        never read twice) squashed to side x side, uint8."""
        return self._cache.get((path, digest, side, whole), lambda: np.asarray(
            picture.resize((side, side), Image.Resampling.LANCZOS)))


def _grey_canvas(path: str, digest: str) -> tuple[Image.Image, tuple[int, int, int, int]] | None:
    im = read_picture(path, digest, min_size=(DECODE_SIDE, DECODE_SIDE), grey=True)
    if im is None:
        return None
    im = im if im.mode == "L" else im.convert("L")
    return im, trim_box(np.asarray(im))


def detail_fractions(pictures: Pictures, a: tuple[str, str], b: tuple[str, str], canvases: tuple, variant: int,
                     limit: float, strong_limit: float, whole: bool = False) -> tuple[float, float]:
    """(changed, strong) of the pixel check of the files a and b, (path, content digest) each (b's `variant`
    flip), both trimmed (with `whole`, untrimmed) and squashed to the detail side; (0, 0) where the pictures
    are too small to show more than the thumbnail. canvases: their Pictures.canvas, both read.

    Pictures that agree unshifted pass as they are: most copies do, and the shift search costs twice that."""
    if whole:
        pa, pb = canvases[0][0], canvases[1][0]
    else:
        pa, pb = pictures.trimmed(*a, canvases[0]), pictures.trimmed(*b, canvases[1])
    s = _side(pa, pb)
    if s < DETAIL_MIN:
        return 0.0, 0.0
    ta = pictures.square(*a, pa, s, whole=whole)
    tb = np.ascontiguousarray(DIHEDRAL[variant](pictures.square(*b, pb, s, whole=whole)))
    changed, strong = changed_fractions(ta.astype(np.float64), tb.astype(np.float64), bounds=(limit, strong_limit))
    if changed <= limit and strong <= strong_limit:
        return changed, strong
    v = compare(ta, tb, limit, strong_limit, full_iters=DETAIL_LK_ITERS)
    return v.changed, v.strong


def on_one_canvas(pictures: Pictures, a: tuple[str, str], b: tuple[str, str], canvases: tuple, variant: int,
                  limit: float, strong_limit: float) -> tuple[float, float] | None:
    """For a pair the thumbnail check aligned by the warp, whose trims differ (trims_differ): (changed, strong) of
    the part of the canvas only one trim kept, where the warp only undid the trims and that part is content
    added over a flat area; None where the warp's verdict stands. a, b: (path, content digest); canvases: their
    Pictures.canvas, both read (b's under its `variant` flip).

    The warp only undid the trims where the two files share a canvas (one aspect ratio) and the content both
    trims kept agrees in place on it, unwarped. The part only one kept is then flat in the other picture
    (the other trimmed it as border): where little of it differs there (a new line of text on a slide's
    background: under FRAME_SHARE), it was added; where most does (a frame or a mat painted over a photo's
    edges), the copy lost it, as a crop does, and the warp's verdict stands."""
    (ia, box_a), (ib, box_b) = canvases
    wb, hb = ib.size[::-1] if variant in _TRANSPOSING else ib.size
    if abs(ia.width * hb - wb * ia.height) > CANVAS_ASPECT * ia.width * hb:
        return None
    s = _side(ia, ib)
    if s < CANVAS_MIN:
        return None
    xa = pictures.square(*a, ia, s, whole=True).astype(np.float64)
    xb = np.ascontiguousarray(DIHEDRAL[variant](pictures.square(*b, ib, s, whole=True))).astype(np.float64)
    ma, mb = _box_mask(box_a, ia.size, s), DIHEDRAL[variant](_box_mask(box_b, ib.size, s))
    bounds = (limit, strong_limit)
    changed, strong = changed_fractions(xa, xb, ma & mb, shift=1, bounds=bounds)
    if changed > limit or strong > strong_limit:
        return None  # the shared content moved on the canvas: a crop, a rotation, a rescale
    changed, strong = changed_fractions(xa, xb, shift=1, within=ma ^ mb)
    return None if changed >= FRAME_SHARE else (changed, strong)


def whole_fractions(pictures: Pictures, a: tuple[str, str], b: tuple[str, str], canvases: tuple, variant: int,
                    side: int, bounds: tuple[float, float],
                    detail_bounds: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The pixel check of the files a and b, (path, content digest) each, whole, untrimmed (b's `variant`
    flip): ((changed, strong) squashed to side x side as the thumbnails are to theirs (verify.compare within
    `bounds`), (changed, strong) of the detail check on them where it applies, else (0, 0)). canvases: their
    Pictures.canvas, both read. For two pictures whose trims differ: the trim takes uniform lines for a border,
    and a sky or a fog is uniform enough on one copy and not on another (rotated, its corners filled).

    The detail check applies as it does to trimmed pictures: where the whole thumbnails line up by a shift (a
    photo that needed the warp is left to the thumbnail side), and the pictures show more than it."""
    v = compare(*whole_squares(pictures, (a, b), canvases, variant, side), *bounds)
    if not v.passes(*bounds) or v.aligned:
        return (v.changed, v.strong), (0.0, 0.0)
    return (v.changed, v.strong), detail_fractions(pictures, a, b, canvases, variant, *detail_bounds, whole=True)


def whole_squares(pictures: Pictures, files: tuple, canvases: tuple, variant: int,
                  side: int) -> tuple[np.ndarray, np.ndarray]:
    """The two files' whole pictures (files: (path, content digest) of each; canvases: their Pictures.canvas,
    both read) squashed to side x side as the thumbnails are to theirs, the second under its `variant` flip."""
    (a, b), (ca, cb) = files, canvases
    return (pictures.square(*a, ca[0], side, whole=True),
            np.ascontiguousarray(DIHEDRAL[variant](pictures.square(*b, cb[0], side, whole=True))))


def trims_differ(trim_a: tuple[float, float, float, float], trim_b: tuple[float, float, float, float],
                 variant: int) -> bool:
    """Whether two content boxes (FileFacts.trim, fractions of each picture; b's under its `variant` flip)
    differ by more than TRIM_DIFF of their union (a line added under a narrow column is a large share of it,
    and a small one of the picture)."""
    ma = _box_mask(trim_a, (1, 1), 256)
    mb = DIHEDRAL[variant](_box_mask(trim_b, (1, 1), 256))
    union = int((ma | mb).sum())
    return union > 0 and 1.0 - (ma & mb).sum() / union > TRIM_DIFF


def _side(a: Image.Image, b: Image.Image) -> int:
    """The side both pictures are squashed to: DETAIL_SHARE of the smaller one's shorter side, at most
    DETAIL_SIDE."""
    return min(DETAIL_SIDE, int(DETAIL_SHARE * min(*a.size, *b.size)))


def _box_mask(box: tuple[float, float, float, float], size: tuple[float, float], s: int) -> np.ndarray:
    """The box (left, top, right, bottom) of a picture of `size` (in the box's units) on its s x s square, as
    a mask."""
    (left, top, right, bottom), (w, h) = box, size
    m = np.zeros((s, s), bool)
    m[int(np.ceil(top * s / h)):int(bottom * s / h), int(np.ceil(left * s / w)):int(right * s / w)] = True
    return m
