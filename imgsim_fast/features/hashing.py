"""Perceptual hashes (pHash, aHash, dHash, wHash, colour hash) of image batches as packed uint64 codes.

Each algorithm is a batch core over prepared pixel arrays (`*_from_pixels`), plus two ways to prepare
pixels from a PIL image: `prepare_compat` (exactly as imagehash 4.3.2, so codes are bit-identical to it)
and `prepare_fast` (from a draft-decoded small image; what the pipeline uses by default).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numba
import numpy as np
from PIL import Image

from imgsim_fast.features.codes import pack_bits

__all__ = [
    "HASH_KINDS",
    "DIHEDRAL",
    "code_bits",
    "draft_size",
    "hash_images",
    "prepare_compat",
    "prepare_fast",
    "phash_from_pixels",
    "phash_dihedral",
    "ahash_from_pixels",
    "dhash_from_pixels",
    "whash_from_pixels",
    "colorhash_from_pixels",
]

HASH_KINDS = ("phash", "ahash", "dhash", "whash", "colorhash")
MODES = ("fast", "compat")

# imagehash.phash's default highfreq_factor: the DCT input is (4*hash_size)^2 pixels.
PHASH_HIGHFREQ_FACTOR = 4
# imagehash.colorhash's default binbits: 14 bins of 3 bits = 42 bits, whatever hash_size says.
COLORHASH_BINBITS = 3
COLORHASH_BINS = 14

# Fast-mode preparation constants, chosen by measuring fast vs compat bit differences on the photos in
# .cache/photos (README, "Fast mode"): JPEGs drafted to >= 16*hash_size pixels per side differ from
# compat mode by at most 1 bit per kind, at 8*hash_size by up to 2.
FAST_DRAFT_PER_HASH_SIDE = 16    # decode to at least 16*hash_size per side (128 px for 8x8 hashes)
FAST_COLORHASH_DRAFT = 128       # colorhash is a histogram: 128 px per side keeps it within 1 bit
FAST_COLORHASH_SIDE = 256        # colorhash counts pixels of an image box-reduced to about 256 px per side
FAST_WHASH_SCALE_FACTOR = 8      # whash image_scale = 8*hash_size (imagehash: largest power of 2 <= min side)

_LANCZOS = Image.Resampling.LANCZOS


# ---------------------------------------------------------------------------------------------------------
# Argument checks


def _check_kind(kind: str) -> str:
    if kind not in HASH_KINDS:
        raise ValueError(f"unknown hash kind {kind!r}; expected one of {HASH_KINDS}")
    return kind


def _check_kinds(kinds) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds must name at least one hash kind")
    for k in kinds:
        _check_kind(k)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds has duplicates: {kinds}")
    return kinds


def _check_hash_size(hash_size) -> int:
    if isinstance(hash_size, bool) or not isinstance(hash_size, (int, np.integer)):
        raise ValueError(f"hash_size must be an int, got {hash_size!r}")
    hash_size = int(hash_size)
    if hash_size < 2 or hash_size & (hash_size - 1):
        raise ValueError(f"hash_size must be a power of two >= 2, got {hash_size}")
    return hash_size


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    return mode


def code_bits(kind: str, hash_size: int = 8) -> int:
    """Bits in one code: hash_size**2 for the grid hashes (64, 256, ...), 42 for the colour hash."""
    _check_kind(kind)
    hash_size = _check_hash_size(hash_size)
    if kind == "colorhash":
        return COLORHASH_BINS * COLORHASH_BINBITS
    return hash_size * hash_size


def _as_batch(pixels, ndim: int = 3) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != ndim:
        raise ValueError(f"pixels must be {ndim}-D (n, ...), got shape {pixels.shape}")
    return pixels


# ---------------------------------------------------------------------------------------------------------
# pHash


def _dct_matrix(size: int, rows: int) -> np.ndarray:
    """First `rows` rows of the unnormalised DCT-II matrix scipy.fftpack.dct uses: 2*cos(pi*k*(2n+1)/2N).

    The factor 2 (a power of two, so exact) puts our coefficients on scipy's scale, which makes the
    tie tolerance below comparable with scipy's own values.
    """
    k = np.arange(rows, dtype=np.float64)[:, None]
    n = np.arange(size, dtype=np.float64)[None, :]
    return 2.0 * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * size))


@numba.njit(cache=True, nogil=True)
def _dct_lowfreq_kernel(pixels, c):  # pragma: no cover - compiled
    """D[i] = C X_i C^T over the batch, only the hs x hs low-frequency block: O(hs * N^2) per image."""
    n, size, _ = pixels.shape
    hs = c.shape[0]
    out = np.empty((n, hs, hs), dtype=np.float64)
    tmp = np.empty((size, hs), dtype=np.float64)
    for i in range(n):
        # tmp = X C^T (transform along axis 1), then out = C tmp (along axis 0).
        for m in range(size):
            for v in range(hs):
                acc = 0.0
                for col in range(size):
                    acc += pixels[i, m, col] * c[v, col]
                tmp[m, v] = acc
        for u in range(hs):
            for v in range(hs):
                acc = 0.0
                for m in range(size):
                    acc += c[u, m] * tmp[m, v]
                out[i, u, v] = acc
    return out


def _phash_size(pixels: np.ndarray) -> int:
    size = pixels.shape[1]
    if pixels.shape[1:] != (size, size) or size % PHASH_HIGHFREQ_FACTOR:
        raise ValueError(f"phash pixels must be (n, 4*hash_size, 4*hash_size), got shape {pixels.shape}")
    return _check_hash_size(size // PHASH_HIGHFREQ_FACTOR)


def _dct_lowfreq(pixels: np.ndarray) -> np.ndarray:
    """(n, N, N) pixels -> (n, N/4, N/4) low-frequency DCT block on scipy.fftpack's (x4) scale."""
    hs = _phash_size(pixels)
    c = _dct_matrix(pixels.shape[1], hs)
    return _dct_lowfreq_kernel(np.ascontiguousarray(pixels, dtype=np.float64), c)


def _dct_tolerance(pixels: np.ndarray) -> np.ndarray:
    """Per image, a bound on |our coefficient - scipy's| with a 16x margin.

    Each coefficient sums N^2 products of magnitude <= 4 x (|2cos| <= 2 per axis); recursive summation
    and pocketfft's FFT both stay within ~2N ulps of 4*sum(x) (Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., sec. 4.2 and 24.1).
    """
    size = pixels.shape[1]
    total = pixels.reshape(len(pixels), -1).sum(axis=1, dtype=np.float64)
    return 16.0 * (2 * size) * np.finfo(np.float64).eps * 4.0 * total + 1e-12


def _phash_reference_bits(pixels2d: np.ndarray, hs: int) -> np.ndarray:
    """imagehash.phash's own arithmetic (scipy.fftpack.dct twice, median, '>'): the tie fallback."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(np.asarray(pixels2d), axis=0), axis=1)
    low = dct[:hs, :hs]
    return (low > np.median(low)).ravel()


def _threshold_with_fallback(coeffs: np.ndarray, tol: np.ndarray, exact: Callable[[int], np.ndarray]):
    """Bits `coeffs > median` per row, recomputed by `exact(row)` where a coefficient is within tol of it.

    Our DCT and scipy's round differently, so a coefficient within rounding error of the median could
    get a different bit; those rows (ties, e.g. flat images where every AC term is ~0) take imagehash's
    exact path, which keeps every code bit-identical to imagehash.
    """
    flat = coeffs.reshape(len(coeffs), -1)
    med = np.median(flat, axis=1)
    bits = flat > med[:, None]
    close = np.abs(flat - med[:, None]).min(axis=1) <= tol
    for i in np.flatnonzero(close):
        bits[i] = exact(int(i))
    return bits


def phash_from_pixels(pixels) -> np.ndarray:
    """pHash of (n, N, N) greyscale pixels (N = 4*hash_size) -> (n, words) uint64.

    Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions" (2010), as in
    imagehash.phash (https://www.hackerfactor.com/blog/index.php?/archives/432-Looks-Like-It.html):
    2-D DCT-II, keep the hash_size^2 lowest frequencies, bit = coefficient > their median. Only that
    block is computed (C[:hs] X C[:hs]^T), by a Numba kernel over the batch.
    """
    pixels = _as_batch(pixels)
    hs = _phash_size(pixels)
    if len(pixels) == 0:
        return np.zeros((0, (hs * hs + 63) // 64), dtype=np.uint64)
    d = _dct_lowfreq(pixels)
    bits = _threshold_with_fallback(d, _dct_tolerance(pixels), lambda i: _phash_reference_bits(pixels[i], hs))
    return pack_bits(bits)


# The 8 symmetries of the square, as functions of a 2-D array; phash_dihedral's variant k is the pHash
# of DIHEDRAL[k](x). np.rot90(x)[i, j] = x[j, N-1-i].
DIHEDRAL: tuple[Callable[[np.ndarray], np.ndarray], ...] = (
    lambda x: x,
    lambda x: np.rot90(x, 1),
    lambda x: np.rot90(x, 2),
    lambda x: np.rot90(x, 3),
    lambda x: np.flip(x, axis=1),      # mirror left-right
    lambda x: np.flip(x, axis=0),      # mirror top-bottom
    lambda x: x.T,                     # transpose
    lambda x: np.rot90(x, 2).T,        # anti-transpose
)


def _dihedral_dct(d: np.ndarray) -> np.ndarray:
    """(n, hs, hs) DCT blocks -> (n, 8, hs, hs) blocks of the DIHEDRAL variants, by signs and transposes.

    A DCT-II basis row is symmetric or antisymmetric about the centre, C[u, N-1-m] = (-1)^u C[u, m], so
    reversing an axis multiplies coefficient u along it by (-1)^u, and transposing the image transposes
    its DCT. Sign changes are exact, so only the median threshold is redone.
    """
    hs = d.shape[1]
    su = ((-1.0) ** np.arange(hs))[:, None]   # flip along axis 0 (rows)
    sv = su.T                                 # flip along axis 1 (columns)
    dt = np.swapaxes(d, 1, 2)
    return np.stack(
        [
            d,
            su * dt,            # rot90 = transpose(fliplr):  (-1)^u D[v, u]
            su * sv * d,        # rot180: (-1)^(u+v) D[u, v]
            sv * dt,            # rot270 = transpose(flipud): (-1)^v D[v, u]
            sv * d,             # fliplr
            su * d,             # flipud
            dt,                 # transpose
            su * sv * dt,       # anti-transpose
        ],
        axis=1,
    )


def phash_dihedral(pixels) -> np.ndarray:
    """pHash of the 8 rotations/mirrors (DIHEDRAL) of each image, from one DCT: (n, 8, words) uint64.

    Bit-identical to phash_from_pixels(DIHEDRAL[k](image)) for every k; used to match mirrored or
    rotated copies without decoding or transforming the image again.
    """
    pixels = _as_batch(pixels)
    hs = _phash_size(pixels)
    words = (hs * hs + 63) // 64
    n = len(pixels)
    if n == 0:
        return np.zeros((0, 8, words), dtype=np.uint64)
    d8 = _dihedral_dct(_dct_lowfreq(pixels)).reshape(n * 8, hs, hs)
    tol = np.repeat(_dct_tolerance(pixels), 8)

    def exact(row: int) -> np.ndarray:
        return _phash_reference_bits(DIHEDRAL[row % 8](pixels[row // 8]), hs)

    bits = _threshold_with_fallback(d8, tol, exact)
    return pack_bits(bits).reshape(n, 8, words)


# ---------------------------------------------------------------------------------------------------------
# aHash and dHash


def ahash_from_pixels(pixels) -> np.ndarray:
    """Average hash of (n, hs, hs) uint8 pixels: bit = pixel > mean, as imagehash.average_hash.

    Krawetz, "Looks Like It" (hackerfactor.com, 2011). Compared in integers (p * hs^2 > sum), which equals
    numpy's float mean test because hs^2 is a power of two, so sum / hs^2 is exact.
    """
    pixels = _as_batch(pixels).astype(np.int64)
    n = len(pixels)
    flat = pixels.reshape(n, -1)
    total = flat.sum(axis=1)
    return pack_bits(flat * flat.shape[1] > total[:, None])


def dhash_from_pixels(pixels) -> np.ndarray:
    """Horizontal difference hash of (n, hs, hs+1) pixels: bit = right neighbour brighter, as imagehash.dhash.

    Krawetz, "Kind of Like That" (hackerfactor.com, 2013).
    """
    pixels = _as_batch(pixels).astype(np.int16)
    n, rows, cols = pixels.shape
    if cols != rows + 1:
        raise ValueError(f"dhash pixels must be (n, hs, hs + 1), got shape {pixels.shape}")
    return pack_bits((pixels[:, :, 1:] > pixels[:, :, :-1]).reshape(n, -1))


# ---------------------------------------------------------------------------------------------------------
# wHash: a Haar transform that rounds exactly as PyWavelets' (pywt.wavedec2/waverec2, 'haar', even sizes).
#
# pywt's haar filters are dec_lo = [s, s], dec_hi = [-s, s], rec_lo = [s, s], rec_hi = [s, -s], s = sqrt(1/2)
# rounded; with 2 taps and even lengths, every output is one product or the sum of two, and float
# addition of two terms is commutative, so the only order that matters is the order of the axes:
# dwtn transforms axis -2 then -1, idwtn undoes axis -1 then -2. Getting this right matters on flat images,
# where every coefficient is rounding noise and the median threshold reads the noise.

_S = float(np.sqrt(0.5))  # == pywt.Wavelet('haar').dec_lo[0], checked in the tests


def _dwt_axis(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    ev = np.take(x, np.arange(0, x.shape[axis], 2), axis=axis) * _S
    od = np.take(x, np.arange(1, x.shape[axis], 2), axis=axis) * _S
    return ev + od, ev - od


def _idwt_axis(a: np.ndarray, d: np.ndarray, axis: int) -> np.ndarray:
    axis = axis % a.ndim
    a = a * _S
    d = d * _S
    out = np.empty(a.shape[:axis] + (2 * a.shape[axis],) + a.shape[axis + 1:], dtype=np.float64)
    sl_ev = [slice(None)] * a.ndim
    sl_od = [slice(None)] * a.ndim
    sl_ev[axis] = slice(0, None, 2)
    sl_od[axis] = slice(1, None, 2)
    out[tuple(sl_ev)] = a + d
    out[tuple(sl_od)] = a - d
    return out


def _dwt2(x: np.ndarray):
    """One level on the last two axes: (LL, (LH, HL, HH)) in pywt.dwt2's order ('ad', 'da', 'dd')."""
    a, d = _dwt_axis(x, -2)
    aa, ad = _dwt_axis(a, -1)
    da, dd = _dwt_axis(d, -1)
    return aa, (da, ad, dd)


def _idwt2(ll: np.ndarray, details) -> np.ndarray:
    da, ad, dd = details
    a = _idwt_axis(ll, ad, -1)
    d = _idwt_axis(da, dd, -1)
    return _idwt_axis(a, d, -2)


def _haar_remove_dc(pixels: np.ndarray) -> np.ndarray:
    """pywt.waverec2 of pywt.wavedec2(pixels, 'haar', level=log2(N)) with the top LL zeroed."""
    levels = int(math.log2(pixels.shape[-1]))
    details = []
    ll = pixels
    for _ in range(levels):
        ll, det = _dwt2(ll)
        details.append(det)
    ll = ll * 0.0
    for det in reversed(details):
        ll = _idwt2(ll, det)
    return ll


def whash_from_pixels(pixels, hash_size: int = 8) -> np.ndarray:
    """Haar wavelet hash of (n, S, S) uint8 pixels (S a power of two >= hash_size), as imagehash.whash.

    imagehash.whash (after the Avito duplicate-ads Kaggle solution): pixels / 255, remove the lowest
    Haar LL frequency (remove_max_haar_ll=True), take LL at level log2(S / hash_size), bit = LL > median.
    Rounds exactly as pywt does, so ties on flat images resolve the same way.
    """
    pixels = _as_batch(pixels)
    hash_size = _check_hash_size(hash_size)
    n, s, s2 = pixels.shape
    if s != s2 or s & (s - 1) or s < hash_size:
        raise ValueError(f"whash pixels must be (n, S, S), S a power of two >= {hash_size}; got {pixels.shape}")
    x = _haar_remove_dc(pixels / 255.0)
    for _ in range(int(math.log2(s // hash_size))):
        x, _det = _dwt2(x)
    flat = x.reshape(n, -1)
    return pack_bits(flat > np.median(flat, axis=1)[:, None])


# ---------------------------------------------------------------------------------------------------------
# Colour hash

# imagehash bins hue with numpy.histogram(h, bins=numpy.linspace(0, 255, 7)); for uint8 hues that is a
# fixed table (the last bin closed at 255).
_HUE_BIN = np.clip(np.searchsorted(np.linspace(0, 255, 7), np.arange(256), side="right") - 1, 0, 5)


def _colorhash_table() -> np.ndarray:
    """Bin of a non-black pixel by (saturation, hue): 1 grey, 2-7 faint hue bins, 8-13 bright, 14 none.

    imagehash's thresholds: grey s < 85; faint 85 <= s < 170; bright s > 170 (s == 170 is in no bin but
    still counts as coloured).
    """
    s = np.arange(256)[:, None]
    h = _HUE_BIN[None, :]
    table = np.where(s < 256 // 3, 1, np.where(s < 256 * 2 // 3, 2 + h, np.where(s > 256 * 2 // 3, 8 + h, 14)))
    return table.astype(np.uint8).ravel()


_COLOR_BIN = _colorhash_table()


def colorhash_from_pixels(pixels) -> np.ndarray:
    """Colour hash of (n, 3, P) uint8 planes (intensity L, hue, saturation) -> (n, 1) uint64, 42 bits.

    imagehash.colorhash (binbits=3): fractions of black pixels, of grey (low-saturation) pixels, and of
    faint / bright coloured pixels in 6 hue bins, each quantised to 3 bits with imagehash's encoding.
    The float operations (count / size, then * 8, floor) are imagehash's, so quantisation edges agree.
    """
    pixels = _as_batch(pixels)
    n, planes, npix = pixels.shape
    if planes != 3 or npix == 0:
        raise ValueError(f"colorhash pixels must be (n, 3, P>0) planes L, H, S; got shape {pixels.shape}")
    counts = np.empty((n, 15), dtype=np.int64)
    for i in range(n):
        key = _COLOR_BIN[pixels[i, 2].astype(np.intp) * 256 + pixels[i, 1]]
        key[pixels[i, 0] < 256 // 8] = 0  # black wins over every other bin
        counts[i] = np.bincount(key, minlength=15)
    maxvalue = 2 ** COLORHASH_BINBITS
    values = np.empty((n, COLORHASH_BINS), dtype=np.int64)
    # frac = mask.mean() (count / size, correctly rounded), then int(frac * 8): the same two roundings.
    values[:, 0] = np.floor(counts[:, 0] / npix * maxvalue)
    values[:, 1] = np.floor(counts[:, 1] / npix * maxvalue)
    colored = npix - counts[:, 0] - counts[:, 1]
    c = np.maximum(1, colored).astype(np.float64)
    values[:, 2:] = np.floor((counts[:, 2:14] * maxvalue).astype(np.float64) / c[:, None])
    values = np.minimum(values, maxvalue - 1)
    # imagehash's bit i of a value v is `v // 2**(binbits-i-1) % 2**(binbits-i) > 0` (not plain binary).
    bits = np.stack(
        [(values // 2 ** (COLORHASH_BINBITS - i - 1)) % 2 ** (COLORHASH_BINBITS - i) > 0
         for i in range(COLORHASH_BINBITS)],
        axis=2,
    )
    return pack_bits(bits.reshape(n, -1))


# ---------------------------------------------------------------------------------------------------------
# Preparation: PIL image -> pixels for the batch cores


def _gray(img: Image.Image) -> Image.Image:
    return img if img.mode == "L" else img.convert("L")


def _colorhash_planes(img: Image.Image, gray: Image.Image) -> np.ndarray:
    h, s, _v = (np.asarray(p).ravel() for p in img.convert("HSV").split())
    return np.stack([np.asarray(gray).ravel(), h, s])


def whash_compat_scale(size: tuple[int, int], hash_size: int = 8) -> int:
    """imagehash.whash's default image_scale: the largest power of two <= the shorter side, >= hash_size."""
    return max(2 ** int(np.log2(min(size))), hash_size)


def _resize_target(kind: str, hash_size: int, img_size: tuple[int, int], mode: str) -> tuple[int, int]:
    if kind == "phash":
        side = hash_size * PHASH_HIGHFREQ_FACTOR
        return (side, side)
    if kind == "ahash":
        return (hash_size, hash_size)
    if kind == "dhash":
        return (hash_size + 1, hash_size)
    if mode == "compat":
        scale = whash_compat_scale(img_size, hash_size)
    else:
        scale = hash_size * FAST_WHASH_SCALE_FACTOR
    return (scale, scale)


def _prepare(img: Image.Image, kind: str, hash_size: int, mode: str, gray: Image.Image | None = None):
    gray = _gray(img) if gray is None else gray
    if kind == "colorhash":
        if mode == "fast":
            img = _shrink(img, FAST_COLORHASH_SIDE)
            gray = _gray(img)
        return _colorhash_planes(img, gray)
    return np.asarray(gray.resize(_resize_target(kind, hash_size, img.size, mode), _LANCZOS))


def prepare_compat(img: Image.Image, kind: str, hash_size: int = 8) -> np.ndarray:
    """Pixels for the `kind` batch core, prepared exactly as imagehash 4.3.2 prepares them.

    convert('L') then a LANCZOS resize to (4hs)^2 (phash), hs^2 (ahash), (hs+1) x hs (dhash), or S^2 with
    whash's size-dependent S (up to 2048 for a 12 MP photo); colorhash takes the full image's L, H and S
    planes as (3, w*h).
    """
    return _prepare(img, _check_kind(kind), _check_hash_size(hash_size), "compat")


def prepare_fast(img: Image.Image, kind: str, hash_size: int = 8) -> np.ndarray:
    """Pixels for the `kind` batch core from a (possibly draft-decoded, reduced) image; the default mode.

    The same resampling as compat mode, but from the small image the loader decoded at draft_size, with a
    fixed whash image_scale (FAST_WHASH_SCALE_FACTOR * hash_size) and colorhash counted on an image
    box-reduced to at most about FAST_COLORHASH_SIDE pixels per side.
    """
    return _prepare(img, _check_kind(kind), _check_hash_size(hash_size), "fast")


def _shrink(img: Image.Image, side: int) -> Image.Image:
    """Reduce so that the longer side is at most `side` (box filter by an integer factor: cheap)."""
    factor = max(img.size) // side
    return img.reduce(factor) if factor > 1 else img


def draft_size(kinds=("phash",), mode: str = "fast", hash_size: int = 8) -> tuple[int, int] | None:
    """Smallest decoded (w, h) at which fast mode stays faithful; None in compat mode (decode fully).

    The loader passes it to Image.draft, which keeps the decoded image at least this large.
    """
    kinds = _check_kinds(kinds)
    mode = _check_mode(mode)
    hash_size = _check_hash_size(hash_size)
    if mode == "compat":
        return None
    side = max(FAST_COLORHASH_DRAFT if k == "colorhash" else FAST_DRAFT_PER_HASH_SIDE * hash_size for k in kinds)
    return (side, side)


_CORES = {
    "phash": lambda px, hs: phash_from_pixels(px),
    "ahash": lambda px, hs: ahash_from_pixels(px),
    "dhash": lambda px, hs: dhash_from_pixels(px),
    "whash": lambda px, hs: whash_from_pixels(px, hs),
    "colorhash": lambda px, hs: colorhash_from_pixels(px),
}


def hash_images(
    images: Sequence[Image.Image], kinds=("phash",), mode: str = "fast", hash_size: int = 8
) -> dict[str, np.ndarray]:
    """Hash a batch of PIL images (mode 'RGB' or 'L'): {kind: (n, words) uint64 codes}.

    mode 'compat' gives imagehash 4.3.2's codes bit for bit; 'fast' (default) prepares pixels from the
    reduced images the loader decodes at draft_size(kinds, 'fast', hash_size).
    """
    kinds = _check_kinds(kinds)
    mode = _check_mode(mode)
    hash_size = _check_hash_size(hash_size)
    images = list(images)
    for img in images:
        if not isinstance(img, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(img).__name__}")
        if img.mode not in ("RGB", "L"):
            raise ValueError(f"images must be mode 'RGB' or 'L' (the loader normalises them), got {img.mode!r}")
    need_gray = mode == "compat" or kinds != ("colorhash",)  # fast colorhash converts its reduced copy
    grays = [_gray(img) if need_gray else None for img in images]
    out = {}
    for kind in kinds:
        words = (code_bits(kind, hash_size) + 63) // 64
        codes = np.zeros((len(images), words), dtype=np.uint64)
        core = _CORES[kind]
        if kind == "colorhash" or (kind == "whash" and mode == "compat"):
            # Sizes differ per image and the arrays are large (up to 2048^2 or 3 x w*h): one at a time.
            for i, (img, gray) in enumerate(zip(images, grays)):
                codes[i] = core(_prepare(img, kind, hash_size, mode, gray)[None], hash_size)[0]
        else:
            prepared = [_prepare(img, kind, hash_size, mode, gray) for img, gray in zip(images, grays)]
            if prepared:
                codes[:] = core(np.stack(prepared), hash_size)
        out[kind] = codes
    return out
