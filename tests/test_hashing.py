"""Tests of imgsim_fast.features.hashing: bit identity with imagehash 4.3.2, golden codes, dihedral pHash, properties."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgsim_fast.features import hashing as H
from imgsim_fast.features.codes import hamming_reference, to_hex

PHOTO_DIR = Path(__file__).resolve().parent.parent / ".cache" / "photos"
PHOTOS = sorted(p for p in PHOTO_DIR.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
needs_photos = pytest.mark.skipif(
    not PHOTOS, reason=f"no photos in {PHOTO_DIR} (scripts/fetch_photos.sh downloads them)"
)
GRID_KINDS = ("phash", "ahash", "dhash", "whash")


def _imagehash():
    return pytest.importorskip("imagehash", reason="imagehash (test-only) is not installed")


def reference_hex(img: Image.Image, kind: str, hash_size: int = 8) -> str:
    """imagehash's own string for the same image."""
    ih = _imagehash()
    if kind == "colorhash":
        return str(ih.colorhash(img))
    fn = {"phash": ih.phash, "ahash": ih.average_hash, "dhash": ih.dhash, "whash": ih.whash}[kind]
    return str(fn(img, hash_size))


def our_hex(img: Image.Image, kinds, mode: str = "compat", hash_size: int = 8) -> dict[str, str]:
    codes = H.hash_images([img], kinds, mode, hash_size)
    return {k: to_hex(codes[k], H.code_bits(k, hash_size))[0] for k in kinds}


def normalise(img: Image.Image) -> Image.Image:
    """What the loader hands over: RGB or L, alpha composited on white."""
    if img.mode in ("RGB", "L"):
        return img
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def load_photo(path: Path, draft: tuple[int, int] | None = None) -> Image.Image:
    with Image.open(path) as img:
        if draft is not None:
            img.draft("RGB", draft)
        img.load()
        return normalise(img)


def golden_image() -> Image.Image:
    """A fixed 80x48 RGB image from closed-form arithmetic (no RNG, so it is the same everywhere)."""
    y, x = np.mgrid[0:48, 0:80].astype(np.float64)
    r = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    g = (x * 3 + y * 2) % 256
    b = 255 * ((x // 10 + y // 12) % 2)
    return Image.fromarray(np.stack([r, g, b], axis=2).round().astype(np.uint8), "RGB")


def smooth_image(seed: int, size=(256, 192)) -> Image.Image:
    """An asymmetric, photo-like image: a seeded low-resolution random field upsampled smoothly."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


def dist(a: np.ndarray, b: np.ndarray) -> int:
    return int(hamming_reference(a, b)[0, 0])


# ---------------------------------------------------------------------------------------------------------
# Golden values: catch a regression even where imagehash is not installed. They equal imagehash 4.3.2's
# strings for golden_image() (checked in test_golden_matches_imagehash).

GOLDEN_8 = {
    "phash": "97b06a0275575557",
    "ahash": "070f0f3e1e3c3c38",
    "dhash": "9dbd5e7ef4f57179",
    "whash": "0f0f2e3e1e3c3c38",
    "colorhash": "0000100a048",
}
GOLDEN_16 = {
    "phash": "9659b0546a4902f6552b5712551557596db60aeba8aaaafb68a65f8b75345719",
    "ahash": "007f007f007f007f00fe04fe05fe07fc07fc07f807f807f00ff00fe00fe00fe0",
    "dhash": "e7e3e6e3e6e3e6e699d8999cb99cb99c6e696e6b7e737e733d973985398d398d",
    "whash": "007f007f007f017f00fe0cfe0dfe0ffc07fc07f807f807f00ff00ff00fe00fe0",
}


def test_golden_values():
    img = golden_image()
    assert our_hex(img, H.HASH_KINDS, "compat", 8) == GOLDEN_8
    assert our_hex(img, GRID_KINDS, "compat", 16) == GOLDEN_16
    # Fast mode on an image this small differs only in whash's fixed image_scale (128 vs 32 at hs=16).
    fast = our_hex(img, H.HASH_KINDS, "fast", 8)
    assert fast == GOLDEN_8
    fast16 = our_hex(img, GRID_KINDS, "fast", 16)
    assert {k: v for k, v in fast16.items() if k != "whash"} == {k: v for k, v in GOLDEN_16.items() if k != "whash"}


def test_golden_matches_imagehash():
    img = golden_image()
    assert {k: reference_hex(img, k, 8) for k in H.HASH_KINDS} == GOLDEN_8
    assert {k: reference_hex(img, k, 16) for k in GRID_KINDS} == GOLDEN_16


# ---------------------------------------------------------------------------------------------------------
# Bit identity with imagehash


@needs_photos
@pytest.mark.slow
@pytest.mark.parametrize("path", PHOTOS, ids=[p.name[-40:] for p in PHOTOS])
def test_photos_compat_bit_identical_and_fast_close(path):
    img = load_photo(path)
    compat = H.hash_images([img], H.HASH_KINDS, "compat")
    assert {k: to_hex(c, H.code_bits(k))[0] for k, c in compat.items()} == {
        k: reference_hex(img, k, 8) for k in H.HASH_KINDS
    }
    # hash_size 16 on the photos up to 1 MP only, to keep this file well under a minute.
    if img.size[0] * img.size[1] <= 1_000_000:
        assert our_hex(img, GRID_KINDS, "compat", 16) == {k: reference_hex(img, k, 16) for k in GRID_KINDS}

    # Fast mode: JPEGs decoded at draft_size as the loader does. Measured 0-1 bits per kind on these
    # photos (README); allow 3 (a random code is ~32 away, a wrong draft size or resampler ~10+).
    with Image.open(path) as probe:
        is_jpeg = probe.format == "JPEG"
    fast = H.hash_images([load_photo(path, H.draft_size(H.HASH_KINDS)) if is_jpeg else img], H.HASH_KINDS)
    for k in H.HASH_KINDS:
        d = dist(compat[k], fast[k])
        if is_jpeg:
            assert d <= 3, (k, d)
        elif k in ("phash", "ahash", "dhash"):
            assert d == 0, (k, d)  # undrafted image: the same preparation as compat mode
        elif k == "colorhash":
            assert d <= 2, (k, d)
        # whash on an undrafted flat graphic: imagehash's bits there are float noise on tied blocks
        # (whole 256x256 blocks of one colour), so no bound holds; the JPEG photos bound it.


SYNTH_SIZES = [(1, 1), (7, 3), (3, 7), (64, 65), (65, 64), (33, 32), (300, 17)]


@pytest.mark.parametrize("size", SYNTH_SIZES, ids=[f"{w}x{h}" for w, h in SYNTH_SIZES])
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("content", ["noise", "smooth", "flat", "stripes"])
def test_compat_synthetic_bit_identical(size, mode, content):
    w, h = size
    rng = np.random.default_rng(hash((w, h, mode, content)) % 2**32)
    if content == "noise":
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    elif content == "smooth":
        arr = np.asarray(smooth_image(w * 1000 + h, (w, h)))
    elif content == "flat":  # every AC coefficient is a tie: exercises the exact fallbacks
        arr = np.full((h, w, 3), (90, 160, 30), dtype=np.uint8)
    else:  # mirror-symmetric stripes: many equal coefficients
        arr = np.repeat(((np.arange(w) // 2) % 2 * 200)[None, :, None], h, axis=0).repeat(3, axis=2).astype(np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    assert our_hex(img, H.HASH_KINDS, "compat", 8) == {k: reference_hex(img, k, 8) for k in H.HASH_KINDS}
    assert our_hex(img, GRID_KINDS, "compat", 16) == {k: reference_hex(img, k, 16) for k in GRID_KINDS}


def test_uniform_grey():
    img = Image.new("RGB", (50, 40), (128, 128, 128))
    # Only the DC term is above the median (scipy's AC terms are exactly 0); grey pixels fill the grey
    # bin (value 7 -> bits 111) of the colour hash.
    expected = {"phash": "8000000000000000", "ahash": "0" * 16, "dhash": "0" * 16, "whash": "0" * 16,
                "colorhash": "07000000000"}
    for mode in ("compat", "fast"):
        assert our_hex(img, H.HASH_KINDS, mode) == expected
    assert {k: reference_hex(img, k) for k in H.HASH_KINDS} == expected


# ---------------------------------------------------------------------------------------------------------
# Batch cores against imagehash's own arithmetic


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([2, 3, 256]),
    hash_size=st.sampled_from([2, 4, 8]),
)
def test_phash_core_matches_scipy_reference(seed, levels, hash_size):
    # Few grey levels make coefficient ties common; the tie fallback must keep bits equal to scipy's.
    rng = np.random.default_rng(seed)
    side = 4 * hash_size
    px = rng.integers(0, levels, size=(5, side, side)).astype(np.uint8)
    px[1] = px[1, :, ::-1]  # a few symmetric images in every batch
    px[2] = (px[2] + px[2][::-1]) // 2
    px[3] = px[3, 0, 0]
    expected = np.stack([H._phash_reference_bits(x, hash_size) for x in px])
    from imgsim_fast.features.codes import pack_bits

    np.testing.assert_array_equal(H.phash_from_pixels(px), pack_bits(expected))


def test_haar_matches_pywt():
    pywt = pytest.importorskip("pywt")
    assert pywt.Wavelet("haar").dec_lo == [H._S, H._S]
    assert pywt.Wavelet("haar").rec_hi == [H._S, -H._S]
    rng = np.random.default_rng(7)
    for x in (rng.random((16, 16)), np.full((16, 16), 0.7), rng.integers(0, 3, (32, 32)) / 255.0):
        coeffs = pywt.wavedec2(x, "haar", level=int(np.log2(len(x))))
        coeffs[0] *= 0
        np.testing.assert_array_equal(H._haar_remove_dc(x[None])[0], pywt.waverec2(coeffs, "haar"))
        ll, (da, ad, dd) = H._dwt2(x[None])
        ref_ll, (ref_1, ref_2, ref_3) = pywt.dwt2(x, "haar")
        for ours, ref in ((ll, ref_ll), (da, ref_1), (ad, ref_2), (dd, ref_3)):
            np.testing.assert_array_equal(ours[0], ref)


# ---------------------------------------------------------------------------------------------------------
# Dihedral pHash


def _dihedral_inputs(side: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    noise = rng.integers(0, 256, size=(6, side, side))
    few = rng.integers(0, 2, size=(4, side, side))  # ties everywhere
    sym = noise[:3] + noise[:3, :, ::-1]  # left-right symmetric: half the variants are equal
    flat = np.full((1, side, side), 77)
    grad = np.add.outer(np.arange(side), 2 * np.arange(side))[None] % 256
    return np.concatenate([noise, few, sym // 2, flat, grad]).astype(np.uint8)


@pytest.mark.parametrize("hash_size", [8, 16])
def test_phash_dihedral_bit_identical(hash_size):
    px = _dihedral_inputs(4 * hash_size)
    got = H.phash_dihedral(px)
    assert got.shape == (len(px), 8, (hash_size**2 + 63) // 64)
    for k, f in enumerate(H.DIHEDRAL):
        flipped = np.stack([np.ascontiguousarray(f(x)) for x in px])
        np.testing.assert_array_equal(got[:, k], H.phash_from_pixels(flipped), err_msg=f"variant {k}")
    np.testing.assert_array_equal(got[:, 0], H.phash_from_pixels(px))
    # The 8 variants of an asymmetric image are distinct codes (a sign/transposition slip would merge some).
    assert len({tuple(c) for c in got[0]}) == 8


@needs_photos
def test_phash_dihedral_photos():
    px = np.stack([H.prepare_compat(load_photo(p, (128, 128)), "phash") for p in PHOTOS[:12]])
    got = H.phash_dihedral(px)
    for k, f in enumerate(H.DIHEDRAL):
        flipped = np.stack([np.ascontiguousarray(f(x)) for x in px])
        np.testing.assert_array_equal(got[:, k], H.phash_from_pixels(flipped))


def test_dihedral_matches_transformed_image():
    # The variants describe the image itself: hashing a mirrored PIL image gives the mirrored code.
    img = smooth_image(3, (96, 96)).convert("L")
    base = H.phash_dihedral(H.prepare_compat(img, "phash")[None])[0]
    mirrored = H.hash_images([img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], mode="compat")["phash"]
    assert dist(base[4:5], mirrored) <= 2  # resampling of the mirror is not exactly mirrored, but close
    assert dist(base[0:1], mirrored) > 10


# ---------------------------------------------------------------------------------------------------------
# Robustness properties (imagehash's test style). Thresholds: a do-nothing hash (constant code) would pass
# the "close" tests but fail the "far" ones; a random hash fails the "close" ones (expected distance 32).


@pytest.mark.parametrize("kind", ["phash", "ahash", "dhash", "whash"])
def test_small_changes_stay_close_rotation_does_not(kind):
    img = smooth_image(2024, (320, 240))
    base = H.hash_images([img], (kind,))[kind]
    rot1 = H.hash_images([img.rotate(1, resample=Image.Resampling.BILINEAR)], (kind,))[kind]
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    buf.seek(0)
    jpeg = H.hash_images([Image.open(buf).convert("RGB")], (kind,))[kind]
    rot90 = H.hash_images([img.rotate(90, expand=True)], (kind,))[kind]
    assert dist(base, rot1) <= 6
    assert dist(base, jpeg) <= 4
    assert dist(base, rot90) >= 16


@needs_photos
def test_photo_rotation_far_recompression_close():
    photo = next((p for p in PHOTOS if p.name.endswith("the-mouse.jpg")), PHOTOS[0])
    img = load_photo(photo, (512, 512))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=50)
    buf.seek(0)
    variants = [img, img.rotate(1, resample=Image.Resampling.BILINEAR), Image.open(buf).convert("RGB"),
                img.rotate(90, expand=True)]
    # Measured on the-mouse.jpg: phash 8 / 0 / 28, dhash 1 / 2 / 12 (1 degree / JPEG q50 / 90 degrees).
    limits = {"phash": (10, 4, 20), "dhash": (4, 4, 9)}
    codes = H.hash_images(variants, tuple(limits))
    for kind, (rot1, jpeg, rot90) in limits.items():
        d = hamming_reference(codes[kind][:1], codes[kind])[0]
        assert d[1] <= rot1 and d[2] <= jpeg and d[3] >= rot90, (kind, d)


def test_colorhash_tracks_colour():
    red = Image.new("RGB", (40, 40), (220, 20, 20))
    blue = Image.new("RGB", (40, 40), (20, 20, 220))
    black = Image.new("RGB", (40, 40), (5, 5, 5))
    codes = H.hash_images([red, blue, black], ("colorhash",))["colorhash"]
    d = hamming_reference(codes, codes)
    assert d[0, 1] >= 2 and d[0, 2] >= 2 and d[1, 2] >= 2
    assert to_hex(codes[2:], 42) == ["38000000000"]  # all black: value 7 in the first bin


# ---------------------------------------------------------------------------------------------------------
# Fast mode


def test_fast_whash_is_imagehash_at_fixed_scale():
    img = golden_image()
    ih = _imagehash()
    for hs in (8, 16):
        got = our_hex(img, ("whash",), "fast", hs)["whash"]
        assert got == str(ih.whash(img, hs, image_scale=H.FAST_WHASH_SCALE_FACTOR * hs))


def test_draft_size():
    assert H.draft_size(("phash",)) == (128, 128)
    assert H.draft_size(H.HASH_KINDS, hash_size=16) == (256, 256)
    assert H.draft_size(("colorhash",)) == (128, 128)
    assert H.draft_size(H.HASH_KINDS, mode="compat") is None


# ---------------------------------------------------------------------------------------------------------
# API


def test_code_bits_and_shapes():
    assert [H.code_bits(k) for k in H.HASH_KINDS] == [64, 64, 64, 64, 42]
    assert H.code_bits("phash", 16) == 256 and H.code_bits("colorhash", 16) == 42
    assert H.code_bits("ahash", 2) == 4
    imgs = [smooth_image(i, (40 + i, 30)) for i in range(3)] + [Image.new("L", (5, 9), 40)]
    for hs in (2, 8, 16):
        out = H.hash_images(imgs, H.HASH_KINDS, hash_size=hs)
        assert set(out) == set(H.HASH_KINDS)
        for k, c in out.items():
            assert c.dtype == np.uint64 and c.shape == (4, (H.code_bits(k, hs) + 63) // 64)
            # batching does not change a code
            for i, img in enumerate(imgs):
                np.testing.assert_array_equal(c[i:i + 1], H.hash_images([img], (k,), hash_size=hs)[k])
    empty = H.hash_images([], H.HASH_KINDS)
    assert all(c.shape == (0, 1) for c in empty.values())
    assert H.phash_dihedral(np.zeros((0, 32, 32), np.uint8)).shape == (0, 8, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kinds": ("nope",)},
        {"kinds": ()},
        {"kinds": ("phash", "phash")},
        {"hash_size": 0},
        {"hash_size": 1},
        {"hash_size": 6},
        {"hash_size": 8.0},
        {"hash_size": True},
        {"mode": "slow"},
    ],
)
def test_invalid_arguments(kwargs):
    img = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError):
        H.hash_images([img], **kwargs)
    dkw = {k: v for k, v in kwargs.items() if k != "images"}
    with pytest.raises(ValueError):
        H.draft_size(**dkw)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        H.hash_images([Image.new("RGBA", (8, 8))])
    with pytest.raises(TypeError):
        H.hash_images([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError):
        H.code_bits("phash", 3)
    with pytest.raises(ValueError):
        H.code_bits("bhash")
    with pytest.raises(ValueError):
        H.phash_from_pixels(np.zeros((2, 32, 31)))
    with pytest.raises(ValueError):
        H.phash_from_pixels(np.zeros((32, 32)))
    with pytest.raises(ValueError):
        H.dhash_from_pixels(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError):
        H.whash_from_pixels(np.zeros((1, 48, 48)))
    with pytest.raises(ValueError):
        H.colorhash_from_pixels(np.zeros((1, 2, 10), np.uint8))
    with pytest.raises(ValueError):
        H.prepare_fast(Image.new("L", (8, 8)), "xhash")


def test_grey_jpeg_decode_hashes_as_the_colour_decode_does(photos, tmp_path):
    """Fast mode decodes a JPEG straight to its luma plane when every hash asked for is grey (issue 12: the
    reduced decode is then the whole cost). The codes stay within the draft's own jitter of the colour
    decode's, and a colour hash or compat mode still decodes in colour."""
    from PIL import Image

    from imgsim_fast.features.extract import ExtractSpec
    from imgsim_fast.features.hashing import draft_size, hash_images
    from imgsim_fast.io.loading import load_image

    worst = 0
    for i, p in enumerate(photos[:8]):
        jpg = tmp_path / f"{i}.jpg"
        with Image.open(p) as im:
            im.convert("RGB").save(jpg, quality=90)
        side = draft_size(("phash", "dhash"))
        grey = load_image(jpg, min_size=side, grey=True)
        colour = load_image(jpg, min_size=side)
        assert grey.mode == "L" and colour.mode == "RGB" and grey.size == colour.size
        a, b = hash_images([grey], ("phash", "dhash")), hash_images([colour], ("phash", "dhash"))
        for k in ("phash", "dhash"):
            worst = max(worst, int(np.bitwise_count(a[k] ^ b[k]).sum()))
    assert worst <= 2, worst
    assert ExtractSpec(kinds=("phash", "dhash")).grey_only()
    assert not ExtractSpec(kinds=("phash", "colorhash")).grey_only()
    assert not ExtractSpec(kinds=("phash",), mode="compat").grey_only()
    assert not ExtractSpec(kinds=("phash",), dedup=True).grey_only()
